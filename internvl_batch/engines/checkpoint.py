"""A checkpoint's non-weight files, fetched where `model.path` says (local dir, object
storage, hub), and the model check on them: `validate`, `plan` and `verify` check a model
without its weights (the engines load it in full)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from internvl_batch.engines.model_path import ModelPathError, is_hub_name, resolve_model_path
from internvl_batch.model.check import ModelCheckError, ModelInfo, inspect_model

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig

# What is fetched of a hub checkpoint to check it: everything but the weights.
TEXT_FILE_PATTERNS = ["*.json", "*.model", "*.txt", "*.py", "*.tiktoken", "*.jinja"]


def _hub_error_is_permanent(e: Exception) -> bool:
    from huggingface_hub import errors

    permanent = (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError,
                 errors.HFValidationError, errors.DisabledRepoError)  # fmt: skip
    return isinstance(e, permanent)


def checkpoint_files(model: ModelConfig) -> Path:
    """A local directory with the checkpoint's non-weight files (a hub name: only those are fetched)."""
    try:
        local = resolve_model_path(model.path, model.download_dir, model.storage_options, weights=False)
    except ModelPathError as e:
        raise ModelCheckError("model.path", str(e)) from e
    except OSError as e:  # the store or the disk failed on the way
        raise ModelCheckError("model.path", f"{type(e).__name__}: {e}", retryable=True) from e
    if Path(local).is_dir():
        return Path(local)
    if not is_hub_name(local):
        raise ModelCheckError("model.path", f"{model.path!r} is no directory, object-storage prefix or hub name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(local, allow_patterns=TEXT_FILE_PATTERNS))
    except Exception as e:  # the hub client raises many types: offline, 401, 404, 5xx, ...
        retryable = not _hub_error_is_permanent(e)
        raise ModelCheckError("model.path", f"{model.path!r}: {type(e).__name__}: {e}", retryable) from e


def inspect_checkpoint(model: ModelConfig, reference: bool = False) -> ModelInfo:
    """`inspect_model` on the checkpoint's files, fetched first."""
    return inspect_model(model, checkpoint_files(model), reference=reference)
