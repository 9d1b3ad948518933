"""Every adapter operation, written once and without I/O.

An operation is a generator. It yields *steps* and receives their results:

- `RoundTrip(commands)` — send the commands back to back, receive one reply per command
  (error replies arrive as exception instances, not raised, so a batch reads past them);
  what happens when a round trip does not simply succeed (NOSCRIPT, redirects, lost
  replies) is the round-trip policy's business (`round_trip`), not the operation's;
- `Sleep(seconds)` — wait before retrying a busy lock;
- `CallUpdater(fn, args)` — call the user's updater (the asyncio driver awaits it if it
  returns an awaitable).

If a step fails, the driver throws the exception into the generator at the `yield`, so
the operation itself decides what a failure means (release the lock, report an ambiguous
write). A driver (sync, asyncio, compiled) only moves bytes; none of the logic below is
repeated in a driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import (
    LockLostError,
    LockTimeoutError,
    StoredValueError,
    UpdateOutcomeUnknownError,
    WriteOutcomeUnknownError,
    WrongTypeError,
)
from bantai.redis import scripts
from bantai.redis.keys import KeyLayout
from bantai.redis.round_trip import Command, ReplyLost, RoundTrip
from bantai.redis.speedups import new_token
from bantai.storage.codec import ValueCodec
from bantai.storage.inputs import (
    Key,
    appending,
    check_keys,
    check_updater,
    encode_key,
    ttl_to_ms,
    unpack_update_result,
)
from bantai.storage.options import StorageOptions
from bantai.storage.steps import (
    CallUpdater,
    Sleep,
    lock_deadline,
    lock_timeout_error,
    retry_pause,
    shown_keys,
)

T = TypeVar("T")
R = TypeVar("R")

Arg = bytes | str | int

Step = RoundTrip | Sleep | CallUpdater
Operation = Generator[Step, Any, R]


@dataclass(frozen=True, slots=True)
class Context(Generic[T]):
    """What an operation needs besides its arguments (one per adapter instance)."""

    layout: KeyLayout
    codec: ValueCodec[T]
    options: StorageOptions
    # One-time checks already done for this adapter (e.g. the eviction policy).
    done: set[str] = field(default_factory=set)


_log = logging.getLogger("bantai")
_SAFE_POLICIES = (b"noeviction",)


def warn_if_locks_evictable(ctx: Context[Any]) -> Operation[None]:
    """Once per adapter, before its first lock: warn when the server's eviction policy may
    evict lock keys (they carry a TTL), which would let two holders in at once. A server
    that refuses CONFIG GET (ACL) is not second-guessed."""
    if "eviction-policy" in ctx.done:
        return
    # The check is made again by the next update when this one cannot reach the server.
    # A connection error is not the update's business (on a cluster the check goes to the
    # default node, which may be down while the key's own node is fine); a timeout is
    # raised, or the update would wait for the same unanswering server twice.
    try:
        (reply,) = yield RoundTrip(((b"CONFIG", b"GET", b"maxmemory-policy"),))
    except RedisConnectionError:
        return
    ctx.done.add("eviction-policy")
    if isinstance(reply, dict):  # RESP3 map
        policy = next(iter(reply.values()), None)
    elif isinstance(reply, list) and len(reply) == 2:
        policy = reply[1]
    else:
        return  # an error reply (e.g. NOPERM) or no answer: cannot tell
    if isinstance(policy, bytes) and policy not in _SAFE_POLICIES:
        _log.warning(
            "Redis maxmemory-policy is %s: under memory pressure it may evict bantai lock "
            "keys (they have a TTL) and let two updates overlap; use noeviction for the "
            "database that holds locks",
            policy.decode(errors="replace"),
        )


def evalsha(script: scripts.Script, keys: Sequence[bytes], args: Sequence[Arg]) -> Command:
    return (b"EVALSHA", script.sha, len(keys), *keys, *args)


# --- replies ----------------------------------------------------------------------------


def lost_write(what: str, keys: Sequence[Key], lost: ReplyLost) -> WriteOutcomeUnknownError:
    """The error for a write whose reply was lost: it may or may not have happened."""
    return WriteOutcomeUnknownError(
        f"{what} of {shown_keys(keys)} was sent but its reply was lost ({lost.__cause__!r}); "
        "it may or may not have been applied, and it was not resent",
        keys=keys,
    )


def check_reply(reply: Any, keys: Sequence[Key]) -> Any:
    """Raise an error reply, naming the keys; return any other reply unchanged. A lost
    reply of a write (the drivers' `call` returns `ReplyLost` in its place) raises
    `WriteOutcomeUnknownError`."""
    if isinstance(reply, Exception):
        if type(reply) is ReplyLost:
            raise lost_write("write", keys, reply) from reply.__cause__
        if "WRONGTYPE" in str(reply):
            shown = keys[0] if len(keys) == 1 else list(keys)
            raise WrongTypeError(
                f"key {shown!r} holds a non-string Redis type, not a bantai value: {reply}",
                key=keys[0],
            ) from reply
        raise reply
    return reply


# --- plain reads and writes ---------------------------------------------------------------
#
# A single-command operation is a request builder and a reply reader. The generator forms
# below compose the two for drivers that only run generators; the sync facade calls the
# halves directly around one exchange, which skips the generator protocol on the hottest
# calls without a second copy of their logic.


def get_request(ctx: Context[T], key: Key) -> Command:
    return (b"GET", ctx.layout.value_key(encode_key(key)))


def get_reply(ctx: Context[T], key: Key, reply: Any) -> T | None:
    return ctx.codec.decode(check_reply(reply, (key,)), key)


def set_request(ctx: Context[T], key: Key, value: object, ttl_ms: object = None) -> Command:
    redis_key = ctx.layout.value_key(encode_key(key))
    ttl = ttl_to_ms(ttl_ms)
    _, data = ctx.codec.encode(value, key)
    return (b"SET", redis_key, data) if ttl is None else (b"SET", redis_key, data, b"PX", ttl)


def delete_request(ctx: Context[T], key: Key) -> Command:
    return (b"DEL", ctx.layout.value_key(encode_key(key)))


def written_reply(ctx: Context[T], key: Key, reply: Any) -> None:
    """The reply of a `set` / `delete` (its request is a write: never resent)."""
    check_reply(reply, (key,))


def _write(commands: Sequence[Command], what: str, keys: Sequence[Key]) -> Operation[list[Any]]:
    """A round trip that writes: never resent once it may have left; a lost reply is
    `WriteOutcomeUnknownError`."""
    try:
        return (yield RoundTrip(commands, retry_safe=False))  # type: ignore[no-any-return]
    except ReplyLost as lost:
        raise lost_write(what, keys, lost) from lost.__cause__


def get(ctx: Context[T], key: Key) -> Operation[T | None]:
    (reply,) = yield RoundTrip((get_request(ctx, key),))
    return get_reply(ctx, key, reply)


def set_(ctx: Context[T], key: Key, value: object, ttl_ms: object = None) -> Operation[None]:
    (reply,) = yield from _write((set_request(ctx, key, value, ttl_ms),), "set", (key,))
    written_reply(ctx, key, reply)


def delete(ctx: Context[T], key: Key) -> Operation[None]:
    (reply,) = yield from _write((delete_request(ctx, key),), "delete", (key,))
    written_reply(ctx, key, reply)


def get_many(ctx: Context[T], keys: Iterable[Key]) -> Operation[dict[Key, T | None]]:
    key_list = check_keys(keys, unique=False)
    if not key_list:
        return {}
    # Pipelined GETs rather than MGET: MGET answers nil for a key holding a hash or list,
    # which would pass for "absent"; a GET each reports WRONGTYPE for exactly that key.
    replies = yield RoundTrip([(b"GET", ctx.layout.value_key(encode_key(k))) for k in key_list])
    decode = ctx.codec.decode
    return {
        key: decode(check_reply(raw, (key,)), key)
        for key, raw in zip(key_list, replies, strict=True)
    }


def set_many(
    ctx: Context[T], items: Mapping[Key, object] | Iterable[tuple[Key, object]], ttl_ms: object
) -> Operation[None]:
    pairs = list(items.items() if isinstance(items, Mapping) else items)
    key_list = check_keys([k for k, _ in pairs], unique=True)
    ttl = ttl_to_ms(ttl_ms)
    # Validate and encode everything before building a single command: one bad value
    # means nothing is written.
    datas = [ctx.codec.encode(v, k)[1] for k, v in pairs]
    redis_keys = [ctx.layout.value_key(encode_key(k)) for k in key_list]
    commands: list[Command] = []
    for group in ctx.layout.groups(redis_keys):
        if ttl is None:
            mset: list[Arg] = [b"MSET"]
            for i in group:
                mset += (redis_keys[i], datas[i])
            commands.append(tuple(mset))
        else:
            # One script per group: written all or nothing, even if the connection drops.
            group_keys = [redis_keys[i] for i in group]
            args: list[Arg] = [ttl, *(datas[i] for i in group)]
            commands.append(evalsha(scripts.SET_MANY, group_keys, args))
    if not commands:
        return
    replies = yield from _write(commands, "set_many", key_list)
    for reply in replies:
        check_reply(reply, key_list)


def delete_many(ctx: Context[T], keys: Iterable[Key]) -> Operation[None]:
    key_list = check_keys(keys, unique=False)
    redis_keys = [ctx.layout.value_key(encode_key(k)) for k in key_list]
    groups = ctx.layout.groups(redis_keys)
    if not groups:
        return
    commands: list[Command] = [(b"DEL", *(redis_keys[i] for i in g)) for g in groups]
    replies = yield from _write(commands, "delete_many", key_list)
    for reply in replies:
        check_reply(reply, key_list)


# --- locking ------------------------------------------------------------------------------


def _unanswered(failure: BaseException | None) -> bool:
    """Whether a failure means the server is not answering (a timeout) or the caller has
    gone (cancelled): then a cleanup must not make anyone wait."""
    if isinstance(failure, ReplyLost):
        failure = failure.__cause__
    return isinstance(failure, (RedisTimeoutError, asyncio.CancelledError))


def _release(
    ctx: Context[Any],
    lock_keys: Sequence[bytes],
    token: bytes,
    after: BaseException | None = None,
) -> Operation[None]:
    """Best effort: a lock we cannot release (server unreachable) expires by its TTL. After
    a timeout or a cancellation (`after`) the release goes out in the background."""
    if not lock_keys:
        return
    commands = [
        evalsha(scripts.RELEASE, [lock_keys[i] for i in group], (token,))
        for group in ctx.layout.groups(lock_keys)
    ]
    with contextlib.suppress(Exception):
        yield RoundTrip(commands, background=_unanswered(after))


def _acquire(
    ctx: Context[Any],
    keys: Sequence[Key],
    value_keys: Sequence[bytes],
    lock_keys: Sequence[bytes],
    token: bytes,
) -> Operation[list[bytes | str | None]]:
    """Take every lock and return the current raw values. All or nothing: each slot group's
    script takes all of its locks or none, and when any group was busy the groups that
    were taken are released before the jittered pause. A caller never waits while holding
    a lock, so overlapping batches cannot deadlock (no hold-and-wait)."""
    lock_ttl = ctx.options.lock_ttl_ms
    deadline = lock_deadline(ctx.options)
    groups = ctx.layout.groups(value_keys)
    commands = []
    for group in groups:
        pairs: list[bytes] = []
        for i in group:
            pairs += (value_keys[i], lock_keys[i])
        commands.append(evalsha(scripts.ACQUIRE, pairs, (token, lock_ttl)))
    raw_values: list[bytes | str | None] = [None] * len(keys)
    while True:
        replies = yield RoundTrip(commands)
        busy: list[int] = []
        taken = False
        for group, reply in zip(groups, replies, strict=True):
            entries = check_reply(reply, [keys[i] for i in group])
            if entries[0][0] != 1:  # the script took all of the group's locks or none
                busy += [i for i, entry in zip(group, entries, strict=True) if entry[0] == 0]
                continue
            taken = True
            for index, entry in zip(group, entries, strict=True):
                raw_values[index] = entry[1] if len(entry) > 1 else None
        if not busy:
            return raw_values
        if taken:
            yield from _release(ctx, lock_keys, token)
        pause = retry_pause(ctx.options, deadline)
        if pause <= 0:
            raise lock_timeout_error(ctx.options, [keys[i] for i in busy])
        yield Sleep(pause)


def locked_update(
    ctx: Context[T], keys: Sequence[Key], updater: Callable[..., Any], *, keyed: bool
) -> Operation[list[T | None]]:
    """Lock every key, read, run the updater in the client, validate, then commit all keys
    of a group atomically in one script that checks the locks still hold our token.

    Returns the new values (the current value where the updater wrote nothing)."""
    check_updater(updater)
    raw_keys = [encode_key(k) for k in keys]
    value_keys = [ctx.layout.value_key(k) for k in raw_keys]
    lock_keys = [ctx.layout.lock_key(k) for k in raw_keys]
    yield from warn_if_locks_evictable(ctx)
    token = new_token()
    plans: list[tuple[bytes, bytes, int | str]] = []
    results: list[T | None] = []
    acquired = False
    try:
        raw_values = yield from _acquire(ctx, keys, value_keys, lock_keys, token)
        acquired = True
        for key, raw in zip(keys, raw_values, strict=True):
            current = ctx.codec.decode(raw, key)
            returned = yield CallUpdater(updater, (key, current) if keyed else (current,))
            unpacked = unpack_update_result(returned, key)
            if unpacked is None:
                plans.append((b"none", b"", ""))
                results.append(current)
                continue
            value, ttl = unpacked
            validated, data = ctx.codec.encode(value, key)
            plans.append((b"keep", data, "") if ttl is None else (b"px", data, ttl))
            results.append(validated)
    except GeneratorExit:
        raise  # the generator is being closed: no more steps may be yielded
    except BaseException as exc:
        # Updater raised, returned an invalid value, was cancelled, or a stored value was
        # corrupt: release at once (not after lock_ttl_ms) and let the error propagate. A
        # lock timeout holds nothing (acquiring is all or nothing): no release to send.
        if acquired or not isinstance(exc, LockTimeoutError):
            yield from _release(ctx, lock_keys, token, after=exc)
        raise

    commands = []
    groups = ctx.layout.groups(value_keys)
    for group in groups:
        pairs: list[bytes] = []
        args: list[Arg] = [token]
        for i in group:
            pairs += (value_keys[i], lock_keys[i])
            args += plans[i]
        commands.append(evalsha(scripts.COMMIT, pairs, args))
    try:
        replies = yield RoundTrip(commands, retry_safe=False)
    except ReplyLost as lost:
        # Releasing is safe whatever happened: if the commit ran, the lock is already gone;
        # if it is still queued somewhere, it will find the lock gone and write nothing.
        # Either way the outcome is settled once the release is through, and the lock does
        # not block others until its TTL.
        yield from _release(ctx, lock_keys, token, after=lost)
        raise UpdateOutcomeUnknownError(
            f"commit of {shown_keys(keys)} was sent but its reply was lost "
            f"({lost.__cause__!r}); the write may or may not have happened",
            keys=keys,
        ) from lost.__cause__
    except GeneratorExit:
        raise
    except BaseException as exc:
        yield from _release(ctx, lock_keys, token, after=exc)
        raise
    lost_keys: list[Key] = []
    error: BaseException | None = None
    for group, reply in zip(groups, replies, strict=True):
        if isinstance(reply, Exception):
            error = error or reply
            continue
        lost_keys += [keys[group[i - 1]] for i in reply]
    if error is not None:
        # e.g. OOM: the script was refused before it ran, so the locks are still ours.
        yield from _release(ctx, lock_keys, token)
        check_reply(error, keys)
    if lost_keys:
        raise LockLostError(
            f"lock on {shown_keys(lost_keys)} expired (lock_ttl_ms={ctx.options.lock_ttl_ms}) "
            "and was taken by another client before the commit; nothing was written"
            + ("" if len(groups) == 1 else " for their slot groups"),
            keys=lost_keys,
        )
    return results


def update(ctx: Context[T], key: Key, updater: Callable[[T | None], Any]) -> Operation[T | None]:
    encode_key(key)
    (result,) = yield from locked_update(ctx, (key,), updater, keyed=False)
    return result


def update_many(
    ctx: Context[T], keys: Iterable[Key], updater: Callable[[Key, T | None], Any]
) -> Operation[dict[Key, T | None]]:
    key_list = check_keys(keys, unique=True)
    if not key_list:
        return {}
    results = yield from locked_update(ctx, key_list, updater, keyed=True)
    return dict(zip(key_list, results, strict=True))


def append(ctx: Context[T], key: Key, item: object) -> Operation[None]:
    """Append one item to a stored list, atomically on the server. For lists with length
    limits (where the whole list must be re-validated) it runs as a locked update."""
    item_codec = ctx.codec.append_item_codec()
    if item_codec is None:
        yield from locked_update(ctx, (key,), appending(item), keyed=False)
        return
    raw_key = encode_key(key)
    _, data = item_codec.encode(item, key)
    keys = (ctx.layout.value_key(raw_key), ctx.layout.lock_key(raw_key))
    deadline = lock_deadline(ctx.options)
    while True:
        try:
            (reply,) = yield RoundTrip((evalsha(scripts.APPEND, keys, (data,)),), retry_safe=False)
        except ReplyLost as lost:
            raise UpdateOutcomeUnknownError(
                f"append to key {key!r} was sent but its reply was lost ({lost.__cause__!r})",
                keys=(key,),
            ) from lost.__cause__
        status = check_reply(reply, (key,))[0]
        if status == 1:
            return
        if status == -1:
            raise StoredValueError(
                f"value stored under key {key!r} is not a JSON array; cannot append", key=key
            )
        pause = retry_pause(ctx.options, deadline)
        if pause <= 0:
            raise lock_timeout_error(ctx.options, (key,))
        yield Sleep(pause)


__all__ = [
    "CallUpdater",
    "Command",
    "Context",
    "Operation",
    "ReplyLost",
    "RoundTrip",
    "Sleep",
    "Step",
]
