"""The base of every settings section: frozen, and an unknown key is an error (a typo never passes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
