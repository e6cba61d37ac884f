"""Take credentials out of whatever the job writes or prints: output rows, logs, reports.

Three operations, one module (the bottom layer, so media, config, job and the CLI share it):
- `redact_text(text)` / `redact_url(url)`: URLs lose their userinfo and signature-like query
  parameters (a presigned URL carries its signature, often a session token too); AWS access
  key ids are masked. Names, hosts and paths stay: an error must still say which item failed.
  Every media error message goes through it.
- `redacted(tree)`: a copy of a config (or any dict/list tree) with the values of
  credential-like keys masked, for config dumps (`validate`, the run summary).
- `scrub(text, secrets)`: `redact_text` plus every known secret value replaced: the values a
  config holds under credential-like keys (`secret_values(tree)`) and the environment's
  credential variables. For free text that may quote anything (an SDK's exception, a
  worker's traceback) on its way to a terminal, a log or `_SUCCESS`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

REDACTED = "REDACTED"

# Words that make a key or query parameter name a credential ("aws_secret_access_key",
# "X-Amz-Security-Token", "sig"), matched against the name's words, not substrings, so
# that "max_tokens" or "keyframe" stay readable.
SECRET_WORDS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "session",
        "credential",
        "credentials",
        "signature",
        "sig",
        "auth",
        "authorization",
        "apikey",
        "cookie",
    }
)
# Whole names that are credentials although no word of theirs says so.
SECRET_NAMES = frozenset({"googleaccessid", "policy", "connection_string", "connectionstring", "sas"})
# Whole names whose words read as secret but are not: the shell's working directories, and
# the allow-list of in-cluster hosts (masking it would hide every URL of such a store).
PUBLIC_NAMES = frozenset({"pwd", "oldpwd", "allowed_private_hosts"})

_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#]*)@")
_PARAM = re.compile(r"([^=&;#?]+)=([^&;#]*)")
# AWS access key ids (long-term AKIA, temporary ASIA) appear in signed headers and some server errors.
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def is_secret_name(name: str) -> bool:
    """Whether a key or parameter called `name` holds a credential."""
    plain = name.lower().replace("-", "_")
    if plain in PUBLIC_NAMES:
        return False
    if plain in SECRET_NAMES:
        return True
    words = [w.lower() for w in _WORDS.findall(name)]
    # "private" alone is a word of many settings; a private key is a credential.
    return any(w in SECRET_WORDS for w in words) or any(a == "private" and b == "key" for a, b in zip(words, words[1:]))


def redact_url(url: str) -> str:
    """`url` with its userinfo and credential-like query/fragment parameters replaced by REDACTED.

    String surgery rather than a parse and rebuild, so everything else stays byte for byte
    (an error message must name the item the user wrote)."""
    if not isinstance(url, str):
        return url
    url = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", url, count=1)
    head, sep, rest = url.partition("?")
    if not sep:
        head, sep, rest = url.partition("#")
    if not sep:
        return url
    return head + sep + _PARAM.sub(_redact_param, rest)


def _redact_param(match: re.Match[str]) -> str:
    name = match.group(1)
    if is_secret_name(unquote(name)):
        return f"{name}={REDACTED}"
    return match.group(0)


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`) and AWS access key ids masked."""
    if not isinstance(text, str):
        return text
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _AWS_KEY_ID.sub(REDACTED, text)


def _replace_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of the given secret values (at least 4 characters) replaced."""
    for secret in sorted((s for s in secrets if isinstance(s, str) and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def environment_secrets() -> list[str]:
    """The values of this process's credential variables (AWS_SECRET_ACCESS_KEY, ...).
    Long values only: XDG_SESSION_CLASS=user must not turn every "user" into REDACTED."""
    return [v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= 8]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` fit for a log line, a message or a report: URLs redacted, and every given secret
    value (`secret_values(config)`) and every credential of the environment replaced."""
    return _replace_values(redact_text(text), [*secrets, *environment_secrets()])


# -- config trees -----------------------------------------------------------------------


def redacted(tree: Any) -> Any:
    """A redacted copy of a config model (dumped to plain data) or of a dict/list tree: the
    values of credential-like keys anywhere (storage_options, client_kwargs, headers,
    engine_kwargs) masked, URLs in strings redacted."""
    return _walk(_plain(tree), secret=False)


def _plain(value: Any) -> Any:
    # A pydantic model (a config section) dumps itself; this module imports no pydantic.
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _walk(value: Any, *, secret: bool) -> Any:
    value = _plain(value)
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


def secret_values(tree: Any) -> list[str]:
    """Every string under a credential-like key: what `scrub` must replace in free text."""
    found: list[str] = []

    def collect(value: Any, secret: bool) -> None:
        value = _plain(value)
        if isinstance(value, Mapping):
            for k, v in value.items():
                collect(v, is_secret_name(str(k)))
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)

    collect(tree, False)
    return found
