"""vLLM's InternVL, fed the tiles our CPU workers already made.

Why: vLLM's stock InternVL tiles images in the front-end process of every replica
(~110-140 ms of CPU per 13-tile photo), on the GPU node's few CPUs, and our CPU
workers already produced exact tiles. This variant keeps vLLM's model (weights,
forward, encoder batching) and only swaps the multimodal processor:

- an image item may be `{"pixel_values_flat": uint8 (T, 448, 448, 3) or float (T, 3, 448, 448),
  "image_num_patches": int (N,)}` for all N images of a prompt; it is passed straight
  through, no HF image processor runs;
- the prompt update expands each `<image>` to `<img>` + 256 x tiles `<IMG_CONTEXT>` +
  `</img>` from `image_num_patches`, exactly as the stock processor does;
- uint8 tiles are normalised inside the model, on its device (4x less to ship);
- PIL images still take the stock path (vLLM's memory profiling uses them);
- vLLM's native video path is off: its frame prompt differs from the model card's, so
  videos go in as frames (images) under the card's `Frame1: <image>` prompt.

Registered under PRETILED_ARCHITECTURE by the plugin (internvl_batch.engines.vllm.plugin) and selected per engine with
`hf_overrides={"architectures": [PRETILED_ARCHITECTURE]}`. It leans on underscore methods of
vLLM's InternVL processor; vLLM is pinned and tests prove token identity with the stock
path: rerun them on every vLLM upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from vllm.model_executor.models.internvl import (
    InternVLChatModel,
    InternVLDummyInputsBuilder,
    InternVLMultiModalProcessor,
    InternVLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import DictEmbeddingItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, cached_encode

from internvl_batch.media.normalize import normalize_tiles


def _pretiled_fields(data: Mapping[str, torch.Tensor]) -> Mapping[str, MultiModalFieldConfig]:
    return dict(
        pixel_values_flat=MultiModalFieldConfig.flat_from_sizes("image", data["image_num_patches"]),
        image_num_patches=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
    )


def _check_pretiled(data: Mapping[str, object], image_size: int) -> None:
    pv, num = data.get("pixel_values_flat"), data.get("image_num_patches")
    if not isinstance(pv, torch.Tensor) or not isinstance(num, torch.Tensor):
        raise ValueError("pre-tiled image input needs tensors 'pixel_values_flat' and 'image_num_patches'")
    if num.ndim != 1 or num.numel() == 0 or bool((num < 1).any()):
        raise ValueError(f"image_num_patches must be a 1-D tensor of positive counts, got {num.tolist()}")
    channels_last = (int(num.sum()), image_size, image_size, 3)
    channels_first = (int(num.sum()), 3, image_size, image_size)
    if pv.dtype == torch.uint8 and tuple(pv.shape) == channels_last:
        return
    if pv.is_floating_point() and tuple(pv.shape) == channels_first:
        return
    raise ValueError(
        f"pixel_values_flat must be uint8 {channels_last} or float {channels_first} "
        f"for image_num_patches={num.tolist()}, got {pv.dtype} {tuple(pv.shape)}"
    )


class PretiledDataParser(MultiModalDataParser):
    embedding_fields = {"image": {"pixel_values_flat": "values", "image_num_patches": "metadata"}}

    def __init__(self, image_size: int, *args, **kwargs):
        self._image_size = image_size
        super().__init__(*args, **kwargs)

    def _parse_image_data(self, data):
        if isinstance(data, dict):
            _check_pretiled(data, self._image_size)
            required, optional = self.embedding_field_sets("image")
            return DictEmbeddingItems(
                data,
                modality="image",
                required_fields=required,
                optional_fields=optional,
                fields_factory=_pretiled_fields,
            )
        return super()._parse_image_data(data)


class PretiledProcessingInfo(InternVLProcessingInfo):
    @property
    def ctx_video_token(self):
        return None  # frames go in as images, under the card's prompt

    def get_data_parser(self) -> MultiModalDataParser:
        return PretiledDataParser(
            self.get_hf_config().vision_config.image_size,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )


class PretiledProcessor(InternVLMultiModalProcessor):
    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        num_patches = out_mm_kwargs.get_data().get("image_num_patches")
        counts = [] if num_patches is None else [int(n) for n in num_patches.tolist()]

        # Both paths (pre-tiled and stock) know each image's tile count here.
        return [
            PromptReplacement(
                modality="image",
                target=cached_encode(self.info.get_tokenizer(), "<image>", add_special_tokens=False),
                replacement=lambda i: hf_processor.get_image_repl(counts[i]),
            )
        ]


@MULTIMODAL_REGISTRY.register_processor(
    PretiledProcessor, info=PretiledProcessingInfo, dummy_inputs=InternVLDummyInputsBuilder
)
class InternVLPretiledChatModel(InternVLChatModel):
    def _parse_and_validate_image_input(self, **kwargs: object):
        pv = kwargs.get("pixel_values_flat")
        if isinstance(pv, (list, tuple)):
            pv = torch.cat(list(pv))
        if isinstance(pv, torch.Tensor) and pv.dtype == torch.uint8:
            kwargs["pixel_values_flat"] = normalize_tiles(pv)
        return super()._parse_and_validate_image_input(**kwargs)
