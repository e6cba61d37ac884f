"""OpenAI Batch API input files (what vLLM's `run_batch` also reads): JSONL, one chat
completion request per line, `{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}`. Lines are planned and read like any JSONL manifest; each becomes one row:

  custom_id             the row's id (unique, as the Batch API requires)
  body.messages         an optional `system` message (its text: the row's system message),
                        then one `user` message whose content is a string or a list of
                        `text`, `image_url` (`{"url": URL or data: URI}`) and `video_url`
                        parts: images (in order) and the text parts joined by newlines,
                        asked as the row's question (images first, as InternVL's prompts do)
  body.max_tokens / max_completion_tokens, temperature, top_p, seed, n, stop,
  response_format       {"type": "json_schema", "json_schema": {"schema": ...}} or
                        {"type": "json_object"} or {"type": "text"}: the row's sampling,
                        over the task's (`sampling.*`) for what the line leaves out
  body.model            accepted and ignored: the job's model answers

Anything else in a line (other body fields: `tools`, `logprobs`, `presence_penalty`, ...;
assistant turns; other content parts) makes the row invalid, naming the field: it would
change the answer and the job can't honour it. The job runs these rows as its one task
(`use_row_question`); `output.format: openai_batch` writes the response file.
"""

from __future__ import annotations

import json
from typing import Any

from internvl_batch.job.readers.base import ManifestRow
from internvl_batch.job.readers.rows import parse_row
from internvl_batch.job.readers.text import JsonlReader

_TOP = {"custom_id", "method", "url", "body"}
_SAMPLING = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
             "top_p": "top_p", "seed": "seed", "n": "n", "stop": "stop"}  # fmt: skip
_BODY = {"model", "messages", "response_format", *_SAMPLING}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    raise ValueError(f"{where} must be text")


def _user(content: Any) -> tuple[list[str], str | None, str | None]:
    """(image URLs, video URL, question) of the user message's content."""
    if isinstance(content, str):
        return [], None, content
    if not isinstance(content, list):
        raise ValueError("body.messages[user].content must be a string or a list of parts")
    images, videos, texts = [], [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "video_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise ValueError(f"content[{i}].{kind}.url is missing")
            (images if kind == "image_url" else videos).append(url)
        else:
            raise ValueError(f"content[{i}].type={kind!r} is not supported (text, image_url, video_url)")
    if len(videos) > 1:
        raise ValueError(f"{len(videos)} video_url parts: one video per request")
    return images, (videos[0] if videos else None), ("\n".join(texts) if texts else None)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    out = {_SAMPLING[k]: v for k, v in body.items() if k in _SAMPLING and v is not None}
    if "stop" in out and isinstance(out["stop"], str):
        out["stop"] = [out["stop"]]
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise ValueError("body.response_format.json_schema.schema must be a JSON schema object")
            out["json_schema"] = schema
        elif kind == "json_object":
            out["json_schema"] = {"type": "object"}
        elif kind != "text":
            raise ValueError(f"body.response_format.type={kind!r} is not supported (json_schema, json_object, text)")
    return out


def parse_request(rec: dict[str, Any], cfg: Any, fallback_id: str, columns: tuple[str, ...] = ()) -> ManifestRow:
    cid = rec.get("custom_id")
    cid = str(cid) if cid not in (None, "") else None
    try:
        extra = sorted(set(rec) - _TOP)
        if extra:
            raise ValueError(f"{', '.join(extra)}: not a field of a batch request line")
        if rec.get("method", "POST") != "POST" or rec.get("url", "/v1/chat/completions") != "/v1/chat/completions":
            raise ValueError(f"only POST /v1/chat/completions is supported, got {rec.get('method')} {rec.get('url')}")
        body = rec.get("body")
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unsupported = sorted(set(body) - _BODY)
        if unsupported:
            raise ValueError(f"body.{', body.'.join(unsupported)} not supported")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("body.messages must be a non-empty list of messages")
        system = None
        if messages[0].get("role") in ("system", "developer"):
            system = _text(messages[0].get("content"), "body.messages[0].content (system)")
            messages = messages[1:]
        if len(messages) != 1 or messages[0].get("role") != "user":
            roles = [m.get("role") for m in messages]
            raise ValueError(f"body.messages roles {roles}: one optional system message then one user message")
        images, video, question = _user(messages[0].get("content"))
        sampling = _sampling(body)
    except ValueError as e:
        return ManifestRow(id=cid or fallback_id, error=str(e) if cid else f"missing 'custom_id'; {e}")
    row = parse_row(
        {cfg.id_column: cid, cfg.image_column: images or None, cfg.video_column: video,
         cfg.question_column: question}, cfg, fallback_id, columns,
    )  # fmt: skip
    if cid is None:
        row.error = "missing 'custom_id'"
        return row
    if not images and not video:
        # The pipeline tiles media for every row; a text-only request has none.
        row.error = "no image_url or video_url part: text-only requests are not supported"
    request = {k: v for k, v in (("system_message", system), ("sampling", sampling)) if v}
    row.request = json.dumps(request, sort_keys=True) if request else None
    return row


class OpenAIBatchReader(JsonlReader):
    fmt = "openai_batch"
    extensions = ()  # JSONL by name: `input.format: openai_batch` says which
    to_row = staticmethod(parse_request)
