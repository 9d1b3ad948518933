"""The per-key part of `update` / `update_many`, written once for every storage: decode
the current value, call the updater, check what it returned, validate and encode the new
value. The storages differ only in how they lock, read and commit around it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bantai.codec import ValueCodec
from bantai.steps import Call, Operation
from bantai.storage.inputs import Key, unpack_update_result

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Planned(Generic[T]):
    """What to commit for one key: `data` (compact JSON) or None to write nothing; `ttl_ms`
    or None to keep the key's TTL; `value`, what the caller gets back (the new value, or
    the current one when nothing is written)."""

    data: bytes | None
    ttl_ms: int | None
    value: T | None


def plan_updates(
    codec: ValueCodec[T],
    keys: Sequence[Key],
    raws: Sequence[bytes | str | None],
    updater: Callable[..., Any],
    *,
    keyed: bool,
) -> Operation[list[Planned[T]]]:
    """Run the updater for each key (`updater(key, current)` when `keyed`, else
    `updater(current)`) and plan the writes. Any error (a stored value that does not
    validate, an updater that raises or returns something invalid) propagates before
    anything is written."""
    plans: list[Planned[T]] = []
    for key, raw in zip(keys, raws, strict=True):
        current = codec.decode(raw, key)
        returned = yield Call(updater, (key, current) if keyed else (current,))
        unpacked = unpack_update_result(returned, key)
        if unpacked is None:
            plans.append(Planned(None, None, current))
            continue
        value, ttl = unpacked
        validated, data = codec.encode(value, key)
        plans.append(Planned(data, ttl, validated))
    return plans
