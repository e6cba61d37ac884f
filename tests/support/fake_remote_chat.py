"""A stand-in for a checkpoint's remote code (its modeling_internvl_chat.py), for `verify`'s
tests: written into a twin's copy with an `auto_map`, it is loaded from the classes the
auto_map names, like the real file. Its `chat` does what InternVLChatModel.chat does (the
oracle in tests/support/model_chat.py builds the query; the tokenizer it is handed
tokenizes it; generation stops at the separator; the answer is cut there) over
transformers' InternVL; `generate` returns only the new tokens, as the original's does."""

from pathlib import Path

import torch
from transformers import PretrainedConfig


class FakeChatConfig(PretrainedConfig):
    model_type = "internvl_chat"


class FakeChatModel(torch.nn.Module):
    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):
        return cls(Path(path))

    def __init__(self, path: Path):
        import json

        from internvl_batch.engines.hf import load_hf_model
        from tests.support.families import checkpoint_conversation

        super().__init__()
        self.inner = load_hf_model(path, "float32")
        self.template = json.loads((path / "config.json").read_text())["template"]
        self.conv = lambda: checkpoint_conversation(path, self.template)
        self.system_message = self.conv().system_message

    @property
    def dtype(self):
        return self.inner.dtype

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        return self.inner.generate(**inputs, **kwargs)[:, input_ids.shape[1] :]

    def chat(self, tokenizer, pixel_values, question, generation_config, num_patches_list=None):
        from tests.support import model_chat

        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        conv = self.conv()
        conv.system_message = self.system_message
        query = model_chat.chat_query(conv, question, list(num_patches_list))
        model_inputs = tokenizer(query, return_tensors="pt")
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(conv.sep.strip())
        out = self.generate(pixel_values=pixel_values, input_ids=model_inputs["input_ids"],
                            attention_mask=model_inputs["attention_mask"], **generation_config)  # fmt: skip
        return model_chat.chat_answer(tokenizer.batch_decode(out, skip_special_tokens=True)[0], conv.sep)


def install(model_dir: Path) -> Path:
    """Make a twin's copy a checkpoint with this remote code."""
    import json
    import shutil

    shutil.copyfile(Path(__file__), model_dir / "modeling_fake_chat.py")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_fake_chat.FakeChatConfig",
                          "AutoModel": "modeling_fake_chat.FakeChatModel"}  # fmt: skip
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return model_dir
