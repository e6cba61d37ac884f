"""Load a JobConfig from YAML plus `--set dotted.key=value` overrides, with errors that name fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from internvl_batch.config import JobConfig


class ConfigError(ValueError):
    """A config that can't be used; the message names the field(s)."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    # YAML scalars: 'true' -> True, '3' -> 3, '[a, b]' -> list, 'null' -> None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML (quote it): {e}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {item!r}: cannot set {last!r} here")
    return data


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid job config:\n" + "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if "task" in data and isinstance(data["task"], dict):
        data["task"] = [data["task"]]  # so `--set task.0.x=...` works for a single task too
    data = apply_overrides(data, overrides or [])
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None
