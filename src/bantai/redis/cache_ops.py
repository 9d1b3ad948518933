"""The local cache's reads, written once without I/O for the blocking and the asyncio
cached adapters (`cached.py`): look keys up, and the fill — a read with client tracking
on — as an operation the drivers run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from bantai.redis import operations as ops
from bantai.redis.local_cache import LocalCache
from bantai.redis.round_trip import RoundTrip
from bantai.redis.tracking import fill_prefix
from bantai.steps import Operation
from bantai.storage.inputs import Key, check_keys, encode_key
from bantai.storage.protocol import K

T = TypeVar("T")

_CACHING_YES = (b"CLIENT", b"CACHING", b"YES")
MISSING: Any = object()


def cached_value(setup: ops.Setup[T], cache: LocalCache, key: Key, redis_key: bytes) -> Any:
    """The cached value of `key` (a fresh copy unless immutable), or `MISSING`."""
    entry = cache.lookup(redis_key)
    if entry is None:
        return MISSING
    return entry.value if entry.shared else setup.codec.decode(entry.raw, key)


def look_up_many(
    setup: ops.Setup[T], cache: LocalCache, keys: Iterable[K]
) -> tuple[list[K], dict[K, T | None], dict[K, bytes]]:
    """(every key in order, the cached values, the missing keys -> their Redis keys)."""
    key_list = check_keys(keys, unique=False)
    value_key = setup.layout.value_key
    found: dict[K, T | None] = {}
    missing: dict[K, bytes] = {}
    for key in key_list:
        if key in found or key in missing:
            continue
        redis_key = value_key(encode_key(key))
        value = cached_value(setup, cache, key, redis_key)
        if value is MISSING:
            missing[key] = redis_key
        else:
            found[key] = value
    return key_list, found, missing


def fill(
    setup: ops.Setup[T],
    cache: LocalCache,
    wanted: Mapping[K, bytes],
    client_id: int,
    broadcast: bool,
) -> Operation[tuple[dict[K, T | None], bool]]:
    """Read `wanted` (key -> Redis key) with tracking on, one round trip, and cache what
    may be cached. Returns (the values, whether the server still knows the invalidation
    connection — False: the stream must be started over)."""
    commands: list[tuple[Any, ...]] = [] if broadcast else fill_prefix(client_id)
    head = len(commands)
    step = 2 if broadcast else 3
    for redis_key in wanted.values():
        if not broadcast:
            commands.append(_CACHING_YES)  # OPTIN: tracks the very next command only
        commands.append((b"GET", redis_key))
        commands.append((b"PTTL", redis_key))
    fills = [cache.begin_fill(redis_key) for redis_key in wanted.values()]
    try:
        replies = yield RoundTrip(commands)
        tracked = not any(isinstance(reply, Exception) for reply in replies[:head])
        values: dict[K, T | None] = {}
        for index, (key, one) in enumerate(zip(wanted, fills, strict=True)):
            at = head + index * step + step - 2  # the GET's reply
            value = ops.get_reply(setup, key, replies[at])
            values[key] = value
            pttl = replies[at + 1]
            opted_in = broadcast or not isinstance(replies[at - 1], Exception)
            if tracked and opted_in and isinstance(pttl, int):
                cache.end_fill(one, replies[at], value, pttl)
        known = tracked or "redirect" not in str(replies[0])
        return values, known
    finally:
        for one in fills:
            cache.abandon_fill(one)  # a no-op for those that ended


def redis_keys(setup: ops.Setup[T], keys: Iterable[Key]) -> list[bytes]:
    """The Redis keys of the keys a write names; keys that are not valid are skipped (the
    write itself refuses them before sending anything)."""
    value_key = setup.layout.value_key
    out = []
    for key in keys:
        try:
            out.append(value_key(encode_key(key)))
        except Exception:
            continue
    return out


def written_keys(items: Any) -> tuple[Any, list[Any]]:
    """`set_many`'s items made re-iterable, and their keys."""
    if isinstance(items, Mapping):
        return items, list(items)
    pairs = list(items)
    return pairs, [pair[0] for pair in pairs if isinstance(pair, tuple) and pair]


__all__ = ["MISSING", "cached_value", "fill", "look_up_many", "redis_keys", "written_keys"]
