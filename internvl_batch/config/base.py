"""The base of every config section: unknown keys are errors that name the field."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict, immutable config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
