"""Schemas shared by the tests (the TypeScript original's documented examples, in
pydantic)."""

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
