"""Config dumps without credentials.

`redacted(cfg)` masks the values of credential-like keys (key, secret, token, password,
session, credential, signature, auth, ...) anywhere in the tree: storage_options,
client_kwargs, headers, engine_kwargs. String values that hold URLs lose their userinfo
and signature-like query parameters. Use it for anything printed, logged or written
(run reports, `validate`, error messages that quote a config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from internvl_batch.media.redact import REDACTED, is_secret_name, redact_text, redact_url, redact_values

__all__ = ["REDACTED", "is_secret_name", "redact_text", "redact_url", "redact_values", "redacted", "secret_values"]


def redacted(cfg: BaseModel | Mapping[str, Any] | Any) -> Any:
    """A redacted copy of a config model (dumped to plain data) or of a dict/list tree."""
    if isinstance(cfg, BaseModel):
        cfg = cfg.model_dump()
    return _walk(cfg, secret=False)


def _walk(value: Any, *, secret: bool) -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        # A secret key holding a mapping (gcsfs's token dict) is walked: its own keys decide,
        # so a JSON schema property named "key" keeps its {"type": ...}.
        return {k: _walk(v, secret=is_secret_name(str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, secret=secret) for v in value]
    if secret and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    return value


def secret_values(cfg: BaseModel | Mapping[str, Any] | Any) -> list[str]:
    """Every string under a credential-like key: what `redact_values` should scrub from free text."""
    found: list[str] = []

    def collect(value: Any, secret: bool) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, Mapping):
            for k, v in value.items():
                collect(v, is_secret_name(str(k)))
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)

    collect(cfg, False)
    return found
