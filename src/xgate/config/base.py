"""The base of every config model, apart from the schema so that the models of several modules share it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Base of every config model: immutable, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


def exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    chosen = [name for name in fields if getattr(model, name) is not None]
    if len(chosen) != 1:
        options = ", ".join(fields)
        if chosen:
            raise ValueError(f"{what}: set exactly one of {options} (got {', '.join(chosen)})")
        raise ValueError(f"{what}: set one of {options}")
