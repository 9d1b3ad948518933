"""The local cache's reads, written once without I/O for the blocking and the asyncio
cached adapters (`cached.py`): look keys up, and the fill — a read with client tracking
on — as a request (one round trip) and the reading of its replies."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from redis.crc import key_slot
from redis.exceptions import AskError

from bantai.redis import operations as ops
from bantai.redis._compat import slot_lookup
from bantai.redis.local_cache import Fill, LocalCache
from bantai.redis.round_trip import RoundTrip
from bantai.redis.tracking import fill_prefix
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
    """A fill in flight: its round trip, and what reading the replies needs."""

    __slots__ = ("fills", "head", "nodes", "step", "stride", "verify", "wanted")

    def __init__(
        self,
        step: RoundTrip,
        wanted: Mapping[K, bytes],
        fills: list[Fill],
        head: int,
        stride: int,
        nodes: Sequence[str] | None,
        verify: bytes | None = None,
    ) -> None:
        self.verify = verify  # the stream's connection name, checked in front (Sentinel)
        self.step = step
        self.wanted = wanted
        self.fills = fills
        self.head = head  # commands in front of all the reads
        self.stride = stride  # commands per key: (TRACKING,) (CACHING YES,) GET, PTTL
        self.nodes = nodes  # cluster: the name of the node each key was read from


def fill_request(
    cache: LocalCache,
    wanted: Mapping[K, bytes],
    tracking: int | Sequence[int] | None,
    nodes: Sequence[str] | None = None,
    verify: bytes | None = None,
) -> Filling[K]:
    """Start reading `wanted` (key -> Redis key) with tracking on, in one round trip:
    the fills are registered (before anything is sent). `tracking` is the invalidation
    stream's client id (one server), one per key (a cluster: each key's node has its own
    stream, given in `nodes`), or None (broadcast: the streams track the prefix). Hand the
    replies to `fill_reply`, and call `fill_abandon` if the round trip fails.

    `verify` (Sentinel): the stream's connection name. The data connection may be on
    another server than the stream after a failover, where the stream's client id names
    someone else; `CLIENT LIST ID` in front says whose it is, and a mismatch means nothing
    is cached and the stream starts over (on the server the pool now reaches)."""
    commands: list[tuple[Any, ...]] = []
    per_key = not isinstance(tracking, int) and tracking is not None
    if isinstance(tracking, int):
        if verify is not None:
            commands.append((b"CLIENT", b"LIST", b"ID", tracking))
        commands.extend(fill_prefix(tracking))
    head = len(commands)
    for index, redis_key in enumerate(wanted.values()):
        if per_key:
            commands.extend(fill_prefix(tracking[index]))  # type: ignore[index]
        if tracking is not None:
            commands.append(_CACHING_YES)  # OPTIN: tracks the very next command only
        commands.append((b"GET", redis_key))
        commands.append((b"PTTL", redis_key))
    stride = 2 + (tracking is not None) + per_key
    fills = [cache.begin_fill(redis_key) for redis_key in wanted.values()]
    # On a cluster a redirected read must not be followed: it would run on another node,
    # without the tracking set up in front of it. It is read again, uncached.
    step = RoundTrip(commands, redirects=nodes is None)
    return Filling(step, wanted, fills, head, stride, nodes, verify)


def fill_reply(
    setup: ops.Setup[T],
    cache: LocalCache,
    filling: Filling[K],
    replies: Sequence[Any],
    node_of: Callable[[bytes], str] | None = None,
) -> tuple[dict[K, T | None], bool, list[K]]:
    """The values read, cached where they may be. Returns (the values, whether the
    servers still know the invalidation connections — False: start the streams over,
    the keys whose read was redirected: read them again, uncached)."""
    head, stride, nodes = filling.head, filling.stride, filling.nodes
    try:
        known = True
        tracked_all = True
        for reply in replies[:head]:
            if isinstance(reply, Exception):
                tracked_all = False
                known = known and "redirect" not in str(reply)
        if filling.verify is not None and not _names(replies[0], filling.verify):
            tracked_all = known = False  # the id is not our stream's on this server
        values: dict[K, T | None] = {}
        redirected: list[K] = []
        for index, (key, one) in enumerate(zip(filling.wanted, filling.fills, strict=True)):
            base = head + index * stride
            raw, pttl = replies[base + stride - 2], replies[base + stride - 1]
            if isinstance(raw, AskError) or isinstance(pttl, AskError):  # MOVED is one too
                redirected.append(key)
                continue
            value = ops.get_reply(setup, key, raw)
            values[key] = value
            tracked = tracked_all
            for reply in replies[base : base + stride - 2]:
                if isinstance(reply, Exception):
                    tracked = False
                    known = known and "redirect" not in str(reply)
            if nodes is not None and node_of is not None and node_of(one.key) != nodes[index]:
                # The slot map changed between naming the key's node (and its stream) and
                # routing the round trip: the tracking set-up may have gone to another
                # node, naming a client id that means someone else there. Nothing it read
                # is cached, and the streams start over (their ids are then new).
                tracked = known = False
            if nodes is not None and raw is None:
                # Cluster: an absent key is not cached. If its slot moves, nothing is
                # deleted on the old master, so nothing would announce its creation on
                # the new one.
                tracked = False
            if tracked and isinstance(pttl, int):
                cache.end_fill(one, raw, value, pttl)
        return values, known, redirected
    finally:
        fill_abandon(cache, filling)


def _names(client_list: Any, name: bytes) -> bool:
    """Whether a `CLIENT LIST ID` reply describes the connection called `name`."""
    if isinstance(client_list, str):
        client_list = client_list.encode()
    return isinstance(client_list, bytes) and b" name=" + name + b" " in client_list


def fill_one_request(
    cache: LocalCache, redis_key: bytes, client_id: int, broadcast: bool
) -> tuple[RoundTrip, Fill]:
    """`fill_request` for one key (the common miss, kept lean)."""
    if broadcast:
        commands: tuple[tuple[Any, ...], ...] = ((b"GET", redis_key), (b"PTTL", redis_key))
    else:
        commands = (
            (b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", client_id, b"OPTIN"),
            _CACHING_YES,
            (b"GET", redis_key),
            (b"PTTL", redis_key),
        )
    return RoundTrip(commands), cache.begin_fill(redis_key)


def fill_one_reply(
    setup: ops.Setup[T], cache: LocalCache, key: Key, fill: Fill, replies: Sequence[Any]
) -> tuple[T | None, bool]:
    """`fill_reply` for one key."""
    try:
        raw, pttl = replies[-2], replies[-1]
        value = ops.get_reply(setup, key, raw)
        if len(replies) == 2:  # broadcast: nothing in front
            tracked = True
        else:
            tracked = not isinstance(replies[0], Exception) and not isinstance(
                replies[1], Exception
            )
        if tracked and isinstance(pttl, int):
            cache.end_fill(fill, raw, value, pttl)
        return value, tracked or "redirect" not in str(replies[0])
    finally:
        cache.abandon_fill(fill)


def fill_abandon(cache: LocalCache, filling: Filling[K]) -> None:
    """Forget the fills that did not end (the round trip failed, or a reply did)."""
    for one in filling.fills:
        cache.abandon_fill(one)  # a no-op for those that ended


def owners(client: Any, wanted: Mapping[K, bytes]) -> list[Any]:
    """The cluster node (master) that owns each wanted Redis key, from the slot map."""
    lookup = slot_lookup(client)
    return [lookup(key_slot(redis_key)) for redis_key in wanted.values()]


def owner_name(client: Any, redis_key: bytes) -> str:
    """The name of the master that owns `redis_key` now."""
    return str(slot_lookup(client)(key_slot(redis_key)).name)


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


__all__ = [
    "MISSING",
    "Filling",
    "cached_value",
    "fill_abandon",
    "fill_one_reply",
    "fill_one_request",
    "fill_reply",
    "fill_request",
    "look_up_many",
    "owner_name",
    "owners",
    "redis_keys",
    "written_keys",
]
