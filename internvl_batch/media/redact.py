"""Take credentials out of URLs and text before they reach an output row, a log or a report.

A presigned URL carries its signature (often a session token too) in the query, and a URL
may carry `user:password@`. Manifests hold such URLs and error messages embed them, so
every message built for a media error goes through `redact_text`. Names, hosts and paths
stay: an error must still say which item failed.

A leaf module (no package imports) so errors, fetch and config can all use it.
"""

from __future__ import annotations

import re
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


def redact_values(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """`text` with each of the given secret values (at least 4 characters) replaced."""
    for secret in sorted((s for s in secrets if isinstance(s, str) and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
