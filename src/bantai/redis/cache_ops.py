"""The local cache's reads, written once without I/O for the blocking and the asyncio
cached adapters (`cached.py`): look keys up, and the fill — a read with client tracking
on — as a request (one round trip) and the reading of its replies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from redis.crc import key_slot
from redis.exceptions import AskError

from bantai.ratelimit.algorithms import state_key
from bantai.redis import operations as ops
from bantai.redis._compat import slot_lookup
from bantai.redis.local_cache import Fill, LocalCache
from bantai.redis.round_trip import Command, RoundTrip
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


class Filling(Generic[K]):
    """A fill in flight: its commands, and what reading the replies needs."""

    __slots__ = ("commands", "fills", "stride", "wanted")

    def __init__(
        self, commands: list[Command], wanted: Mapping[K, bytes], fills: list[Fill], stride: int
    ) -> None:
        self.commands = commands
        self.wanted = wanted
        self.fills = fills
        self.stride = stride  # commands per key: (CACHING YES,) GET, PTTL

    @property
    def step(self) -> RoundTrip:
        """The commands as a round trip for a driver (broadcast mode). A redirected read is
        not followed: it is read again, uncached."""
        return RoundTrip(self.commands, redirects=False)


def fill_request(cache: LocalCache, wanted: Mapping[K, bytes], per_key: bool) -> Filling[K]:
    """Start reading `wanted` (key -> Redis key): the fills are registered before anything
    is sent. `per_key`: each read opts in to tracking (it goes over the stream's fill
    connection); else (broadcast) the stream tracks the prefix and any connection will do.
    Hand the replies to `fill_reply`; call `fill_abandon` if the round trip fails."""
    commands: list[Command] = []
    for redis_key in wanted.values():
        if per_key:
            commands.append(_CACHING_YES)  # OPTIN: tracks the very next command only
        commands.append((b"GET", redis_key))
        commands.append((b"PTTL", redis_key))
    fills = [cache.begin_fill(redis_key) for redis_key in wanted.values()]
    return Filling(commands, wanted, fills, 3 if per_key else 2)


def fill_reply(
    setup: ops.Setup[T],
    cache: LocalCache,
    filling: Filling[K],
    replies: Sequence[Any],
    cluster: bool = False,
) -> tuple[dict[K, T | None], list[K]]:
    """The values read, cached where they may be. Returns (the values, the keys whose read
    was redirected — a cluster slot on the move: read them again, uncached)."""
    stride = filling.stride
    try:
        values: dict[K, T | None] = {}
        redirected: list[K] = []
        for index, (key, one) in enumerate(zip(filling.wanted, filling.fills, strict=True)):
            base = index * stride
            raw, pttl = replies[base + stride - 2], replies[base + stride - 1]
            if isinstance(raw, AskError) or isinstance(pttl, AskError):  # MOVED is one too
                redirected.append(key)
                continue
            value = ops.get_reply(setup, key, raw)
            values[key] = value
            tracked = stride == 2 or not isinstance(replies[base], Exception)
            if cluster and raw is None:
                # An absent key is not cached on a cluster: if its slot moves, nothing is
                # deleted on the old master, so nothing would announce its creation.
                tracked = False
            if tracked and isinstance(pttl, int):
                cache.end_fill(one, raw, value, pttl)
        return values, redirected
    finally:
        fill_abandon(cache, filling)


def fill_one_request(cache: LocalCache, redis_key: bytes) -> tuple[list[Command], Fill]:
    """`fill_request` for one key over the fill connection (the common miss, kept lean)."""
    commands: list[Command] = [_CACHING_YES, (b"GET", redis_key), (b"PTTL", redis_key)]
    return commands, cache.begin_fill(redis_key)


def fill_one_reply(
    setup: ops.Setup[T], cache: LocalCache, key: Key, fill: Fill, replies: Sequence[Any]
) -> T | None:
    """`fill_reply` for one key."""
    try:
        opted_in, raw, pttl = replies
        value = ops.get_reply(setup, key, raw)
        if not isinstance(opted_in, Exception) and isinstance(pttl, int):
            cache.end_fill(fill, raw, value, pttl)
        return value
    finally:
        cache.abandon_fill(fill)


def fill_abandon(cache: LocalCache, filling: Filling[K]) -> None:
    """Forget the fills that did not end (the round trip failed, or a reply did)."""
    for one in filling.fills:
        cache.abandon_fill(one)  # a no-op for those that ended


def by_owner(client: Any, wanted: Mapping[K, bytes]) -> list[tuple[Any, dict[K, bytes]]]:
    """The wanted keys grouped by the cluster master that owns each (the slot map)."""
    lookup = slot_lookup(client)
    groups: dict[str, tuple[Any, dict[K, bytes]]] = {}
    for key, redis_key in wanted.items():
        node = lookup(key_slot(redis_key))
        groups.setdefault(node.name, (node, {}))[1][key] = redis_key
    return list(groups.values())


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
    """`set_many`'s items made re-iterable, and their keys (a pair may be a tuple or a
    list; anything else is left for the write to refuse)."""
    if isinstance(items, Mapping):
        return items, list(items)
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        return items, []
    pairs = list(items)
    return pairs, [p[0] for p in pairs if isinstance(p, (tuple, list)) and len(p) == 2]


def consumed_keys(setup: ops.Setup[T], config: Any, key: str, now_ms: int) -> list[bytes]:
    """The Redis key a rate-limit decision at `now_ms` writes (its state key: the key, or
    for a fixed window the window's)."""
    try:
        return [setup.layout.value_key(encode_key(state_key(config, key, now_ms)))]
    except Exception:  # the decision itself refuses a bad key before sending
        return []


def decision_keys(
    setup: ops.Setup[T], config: Any, key: str, now_ms: int, result: Any = None
) -> list[bytes]:
    """The keys a rate-limit decision may write: its state key as this clock (`now_ms`)
    names it, and once decided, as the decision (the server's clock) named it."""
    keys = consumed_keys(setup, config, key, now_ms)
    if result is not None:
        keys += consumed_keys(setup, config, key, result.decided_at)
    return keys


__all__ = [
    "MISSING",
    "Filling",
    "cached_value",
    "consumed_keys",
    "decision_keys",
    "fill_abandon",
    "fill_one_reply",
    "fill_one_request",
    "fill_reply",
    "fill_request",
    "look_up_many",
    "by_owner",
    "redis_keys",
    "written_keys",
]
