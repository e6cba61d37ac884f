"""`inspect_model` (what the engines start from) and `internvl-batch validate`'s model check:
every failure names the config key that fixes it; exit code 2."""

import json
import shutil

import pytest
import yaml

from internvl_batch.cli import main as cli_main
from internvl_batch.config import ModelConfig
from internvl_batch.devtools.tiny_model import FAMILIES
from internvl_batch.engines.checkpoint import inspect_checkpoint
from internvl_batch.model.check import ModelCheckError
from tests.support.families import FAMILY_NAMES

LLMS = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM",
        "llama3": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}  # fmt: skip


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_twin_checks_out_without_remote_code(twin_dirs, family):
    info = inspect_checkpoint(ModelConfig(path=str(twin_dirs[family])))
    fam = FAMILIES[family]
    assert info.template == fam.template
    assert info.config["llm_config"]["architectures"] == [LLMS[family]]
    assert info.stop_token_ids == (info.tokenizer.tokenizer.get_vocab()[fam.template.stop],)
    assert (info.vllm_tokenizer is not None) == (family == "internlm2")


def _copy(twin_dirs, tmp_path, family="qwen2"):
    d = tmp_path / family
    shutil.copytree(twin_dirs[family], d)
    return d


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def test_extra_stop_tokens_follow_the_separator(twin_dirs):
    info = inspect_checkpoint(ModelConfig(path=str(twin_dirs["qwen2"]), extra_stop_tokens=("<|endoftext|>",)))
    vocab = info.tokenizer.tokenizer.get_vocab()
    assert info.stop_token_ids == (vocab["<|im_end|>"], vocab["<|endoftext|>"])


def _broken(kind, twin_dirs, tmp_path):
    """(model config, the key the error must name)"""
    if kind == "missing dir":
        return ModelConfig(path=str(tmp_path / "nope")), "model.path"
    if kind == "not a checkpoint":
        (tmp_path / "empty").mkdir()
        return ModelConfig(path=str(tmp_path / "empty")), "model.path"
    if kind == "not InternVL":
        d = _copy(twin_dirs, tmp_path)
        _edit_json(d / "config.json", model_type="llava")
        return ModelConfig(path=str(d)), "model.path"
    if kind == "unsupported LLM":
        d = _copy(twin_dirs, tmp_path)
        cfg = json.loads((d / "config.json").read_text())
        cfg["llm_config"]["architectures"] = ["MixtralForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
        return ModelConfig(path=str(d)), "model.path"
    if kind == "no template in config":
        d = _copy(twin_dirs, tmp_path)
        _edit_json(d / "config.json", template=None)
        (d / "conversation.py").unlink()
        return ModelConfig(path=str(d)), "model.template"
    if kind == "unknown template":
        return ModelConfig(path=str(twin_dirs["qwen2"]), template="vicuna_v1.1"), "model.template"
    if kind == "another family's template":
        return ModelConfig(path=str(twin_dirs["qwen2"]), template="phi3-chat"), "model.template"
    if kind == "bad extra stop":
        return ModelConfig(path=str(twin_dirs["qwen2"]), extra_stop_tokens=("<|eot_id|>",)), "model.extra_stop_tokens"
    if kind == "tokenizer needs its remote code":
        from internvl_batch.devtools.tiny.tokenizer_files import sentencepiece_model

        d = _copy(twin_dirs, tmp_path, "internlm2")
        (d / "tokenizer.model").write_bytes(sentencepiece_model(0, 600, ["<|not-an-added-token|>"]))
        return ModelConfig(path=str(d)), "model.trust_remote_code"
    raise AssertionError(kind)


KINDS = ["missing dir", "not a checkpoint", "not InternVL", "unsupported LLM", "no template in config",
         "unknown template", "another family's template", "bad extra stop", "tokenizer needs its remote code"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_failures_name_the_config_key(twin_dirs, tmp_path, kind):
    model, key = _broken(kind, twin_dirs, tmp_path)
    with pytest.raises(ModelCheckError) as e:
        inspect_checkpoint(model)
    assert e.value.key == key and str(e.value).startswith(f"{key}: ")


def _job(tmp_path, model: dict, preprocess: dict | None = None) -> str:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "t", "question": "hi"}\n')
    cfg = {"input": {"path": str(manifest)}, "model": model, "output": {"path": str(tmp_path / "out")},
           "task": [{"name": "q", "use_row_question": True}], "preprocess": preprocess or {}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# Mini-InternVL's card: max_num 6; shared by several images too, so every row fits 4096 tokens
PHI3_PREPROCESS = {"max_num": 6, "multi_image_max_num": 6}


@pytest.mark.parametrize("family", ["internlm2", "phi3"])
def test_validate_checks_the_model_as_the_engine_loads_it(twin_dirs, tmp_path, capsys, family):
    pre = PHI3_PREPROCESS if family == "phi3" else None
    assert cli_main(["validate", _job(tmp_path, {"path": str(twin_dirs[family])}, pre)]) == 0
    out = capsys.readouterr().out
    assert f"template {FAMILIES[family].template.name!r}" in out
    assert ("no remote code" in out) == (family == "internlm2")
    assert ("slow class" in out) == (family == "phi3")
    rope = "LongRoPE short factors, as the card within 4096 tokens" if family == "phi3" else "RoPE dynamic"
    assert f"rope: {rope}" in out


def test_validate_refuses_a_longrope_job_the_card_would_run_with_two_factor_sets(twin_dirs, tmp_path, capsys):
    """Default preprocessing: six images of 2+1 tiles and 256 answer tokens pass 4096."""
    assert cli_main(["validate", _job(tmp_path, {"path": str(twin_dirs["phi3"])})]) == 2
    err = capsys.readouterr().err
    assert "error: model.rope_factors: " in err and "6 image(s) of 18 tiles" in err
    long = {"path": str(twin_dirs["phi3"]), "rope_factors": "long"}
    assert cli_main(["validate", _job(tmp_path, long)]) == 0  # set knowingly
    assert "rope: LongRoPE long factors at every length" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["another family's template", "tokenizer needs its remote code", "missing dir"])
def test_validate_fails_with_exit_2_naming_the_key(twin_dirs, tmp_path, capsys, kind):
    model, key = _broken(kind, twin_dirs, tmp_path)
    job = _job(tmp_path, model.model_dump(exclude_defaults=True))
    assert cli_main(["validate", job]) == 2
    assert f"error: {key}: " in capsys.readouterr().err
    assert cli_main(["validate", job, "--config-only"]) == 0  # the fail-fast step can still skip it


def test_a_hub_name_is_checked_from_its_files_only(twin_dirs, tmp_path, monkeypatch):
    """No hub here: the check asks for the non-weight files and gets a snapshot of them."""
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        out = tmp_path / "snapshot"
        shutil.copytree(twin_dirs["internlm2"], out, ignore=shutil.ignore_patterns("*.safetensors"))
        return str(out)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("INTERNVL_BATCH_MODEL_CACHE", raising=False)
    info = inspect_checkpoint(ModelConfig(path="OpenGVLab/InternVL2_5-8B"))
    assert info.template.name == "internvl2_5"
    ((repo, patterns),) = calls
    assert repo == "OpenGVLab/InternVL2_5-8B" and "*.safetensors" not in patterns and "*.model" in patterns


def test_an_unreachable_hub_names_model_path_and_may_pass_on_a_retry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("INTERNVL_BATCH_MODEL_CACHE", raising=False)
    with pytest.raises(ModelCheckError, match="^model.path: ") as e:
        inspect_checkpoint(ModelConfig(path="OpenGVLab/No-Such-Checkpoint-For-Tests"))
    assert e.value.retryable
    # the k8s entrypoint retries validate's exit 1, never its exit 2
    assert cli_main(["validate", _job(tmp_path, {"path": "OpenGVLab/No-Such-Checkpoint-For-Tests"})]) == 1
    assert "error: model.path: " in capsys.readouterr().err


def test_a_missing_hub_repo_is_permanent(tmp_path, monkeypatch):
    import httpx
    from huggingface_hub import errors

    def not_found(repo_id, **kw):
        response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise errors.RepositoryNotFoundError("404 Client Error. Repository Not Found", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", not_found)
    monkeypatch.delenv("INTERNVL_BATCH_MODEL_CACHE", raising=False)
    assert cli_main(["validate", _job(tmp_path, {"path": "OpenGVLab/InternVL2_5-9B"})]) == 2
