"""Schemas shared by the tests (the seed documentation's examples, in pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UserData(BaseModel):
    userId: str
    name: str
    lastLogin: float


class Counter(BaseModel):
    count: int = Field(ge=0)


def increment(current: Counter | None) -> dict[str, object]:
    return {"value": {"count": (current.count if current else 0) + 1}}
