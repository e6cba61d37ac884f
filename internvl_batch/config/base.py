"""The base of every config section: unknown keys are errors that name the field."""

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict, immutable config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def refuse_old_keys(data: Any, section: str, old: dict[str, str]) -> None:
    """Raise naming each key of `old` that `data` (a section's raw mapping) still sets, with
    where it went: `old` maps a key to the rest of the sentence ("moved to runtime.advanced.x")."""
    if isinstance(data, dict):
        found = [f"{section}.{k} {old[k]}" for k in old if k in data]
        if found:
            raise ValueError("; ".join(found))


def given(section: Any, key: str) -> Any:
    """The value a section's raw form (a mapping or a built Section) sets for `key`, else None."""
    if isinstance(section, BaseModel):
        return getattr(section, key) if key in section.model_fields_set else None
    return section.get(key) if isinstance(section, dict) else None


def with_default(section: Any, key: str, value: Any) -> Any:
    """`section` (a mapping, a built Section or None) with `key` set to `value` unless it sets it."""
    if given(section, key) is not None:
        return section
    if isinstance(section, BaseModel):
        return section.model_copy(update={key: value})
    if section is None or isinstance(section, dict):
        return {**(section or {}), key: value}
    return section  # not a section at all: validation says so
