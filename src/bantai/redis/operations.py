"""Every adapter operation, written once and without I/O.

An operation is a generator. It yields *steps* and receives their results:

- `RoundTrip(commands)` — send the commands back to back, receive one reply per command
  (error replies arrive as exception instances, not raised, so a batch reads past them);
- `Sleep(seconds)` — wait before retrying a busy lock;
- `CallUpdater(fn, args)` — call the user's updater (the asyncio driver awaits it if it
  returns an awaitable).

If a step fails, the driver throws the exception into the generator at the `yield`, so
the operation itself decides what a failure means (release the lock, report an ambiguous
commit). A driver (sync, asyncio, compiled) only moves bytes; none of the logic below is
repeated in a driver.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import NoScriptError

from bantai.errors import (
    LockLostError,
    StoredValueError,
    UpdateOutcomeUnknownError,
    WrongTypeError,
)
from bantai.redis import scripts
from bantai.redis.keys import KeyLayout
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
Command = tuple[Arg, ...]


@dataclass(frozen=True, slots=True)
class RoundTrip:
    commands: Sequence[Command]
    # True when sending the commands twice is harmless, so a driver may resend them once
    # on a broken connection. False for commits and appends: their lost reply is reported
    # to the operation as `ReplyLost` instead.
    retry_safe: bool = True


Step = RoundTrip | Sleep | CallUpdater
Operation = Generator[Step, Any, R]


class ReplyLost(Exception):
    """Raised by a driver into an operation: a non-retry-safe round trip was (possibly)
    sent, but its replies were lost. `__cause__` is the connection error."""


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
    ctx.done.add("eviction-policy")
    try:
        (reply,) = yield RoundTrip(((b"CONFIG", b"GET", b"maxmemory-policy"),))
    except Exception:
        return
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


def check_reply(reply: Any, keys: Sequence[Key]) -> Any:
    """Raise an error reply, naming the keys; return any other reply unchanged."""
    if isinstance(reply, Exception):
        if "WRONGTYPE" in str(reply):
            shown = keys[0] if len(keys) == 1 else list(keys)
            raise WrongTypeError(
                f"key {shown!r} holds a non-string Redis type, not a bantai value: {reply}",
                key=keys[0],
            ) from reply
        raise reply
    return reply


def noscript_resend(
    commands: Sequence[Command], replies: Sequence[Any]
) -> tuple[list[int], list[Command]] | None:
    """After a round trip: which commands failed with NOSCRIPT (the script cache was
    flushed, or the server restarted / failed over), and the commands to send to recover
    them — one SCRIPT LOAD per missing script, then only the failed commands again.
    NOSCRIPT means the command did not run, so resending it is always safe."""
    failed = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if not failed:
        return None
    shas = dict.fromkeys(bytes(commands[i][1]) for i in failed)  # type: ignore[arg-type]
    loads: list[Command] = [(b"SCRIPT", b"LOAD", scripts.SCRIPTS_BY_SHA[s].source) for s in shas]
    return failed, loads + [commands[i] for i in failed]


def merge_resend(
    replies: list[Any], failed: Sequence[int], resend_replies: Sequence[Any]
) -> list[Any]:
    """Put the replies of a NOSCRIPT resend back in place. A failed SCRIPT LOAD raises."""
    loads = len(resend_replies) - len(failed)
    for reply in resend_replies[:loads]:
        if isinstance(reply, Exception):
            raise reply
    for index, reply in zip(failed, resend_replies[loads:], strict=True):
        replies[index] = reply
    return replies


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
    check_reply(reply, (key,))


def get(ctx: Context[T], key: Key) -> Operation[T | None]:
    (reply,) = yield RoundTrip((get_request(ctx, key),))
    return get_reply(ctx, key, reply)


def set_(ctx: Context[T], key: Key, value: object, ttl_ms: object = None) -> Operation[None]:
    (reply,) = yield RoundTrip((set_request(ctx, key, value, ttl_ms),))
    written_reply(ctx, key, reply)


def delete(ctx: Context[T], key: Key) -> Operation[None]:
    (reply,) = yield RoundTrip((delete_request(ctx, key),))
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
            # MULTI/EXEC: the group is written all or nothing, even if the connection drops.
            commands.append((b"MULTI",))
            commands += [(b"SET", redis_keys[i], datas[i], b"PX", ttl) for i in group]
            commands.append((b"EXEC",))
    if not commands:
        return
    replies = yield RoundTrip(commands)
    for reply in replies:
        check_reply(reply, key_list)
        if isinstance(reply, list):
            for inner in reply:
                check_reply(inner, key_list)


def delete_many(ctx: Context[T], keys: Iterable[Key]) -> Operation[None]:
    key_list = check_keys(keys, unique=False)
    redis_keys = [ctx.layout.value_key(encode_key(k)) for k in key_list]
    groups = ctx.layout.groups(redis_keys)
    if not groups:
        return
    replies = yield RoundTrip([(b"DEL", *(redis_keys[i] for i in g)) for g in groups])
    for reply in replies:
        check_reply(reply, key_list)


# --- locking ------------------------------------------------------------------------------


def _release(ctx: Context[Any], lock_keys: Sequence[bytes], token: bytes) -> Operation[None]:
    """Best effort: a lock we cannot release (server unreachable) expires by its TTL."""
    if not lock_keys:
        return
    commands = [
        evalsha(scripts.RELEASE, [lock_keys[i] for i in group], (token,))
        for group in ctx.layout.groups(lock_keys)
    ]
    with contextlib.suppress(Exception):
        yield RoundTrip(commands)


def _acquire(
    ctx: Context[Any],
    keys: Sequence[Key],
    value_keys: Sequence[bytes],
    lock_keys: Sequence[bytes],
    token: bytes,
) -> Operation[list[bytes | str | None]]:
    """Take every lock (retrying only the busy ones) and return the current raw values."""
    lock_ttl = ctx.options.lock_ttl_ms
    deadline = lock_deadline(ctx.options)
    raw_values: list[bytes | str | None] = [None] * len(keys)
    pending = list(range(len(keys)))
    while True:
        pending_value_keys = [value_keys[i] for i in pending]
        groups = [[pending[i] for i in g] for g in ctx.layout.groups(pending_value_keys)]
        commands = []
        for group in groups:
            pairs: list[bytes] = []
            for i in group:
                pairs += (value_keys[i], lock_keys[i])
            commands.append(evalsha(scripts.ACQUIRE, pairs, (token, lock_ttl)))
        replies = yield RoundTrip(commands)
        busy: list[int] = []
        for group, reply in zip(groups, replies, strict=True):
            entries = check_reply(reply, [keys[i] for i in group])
            for index, entry in zip(group, entries, strict=True):
                if entry[0] == 1:
                    raw_values[index] = entry[1] if len(entry) > 1 else None
                else:
                    busy.append(index)
        if not busy:
            return raw_values
        pending = busy
        pause = retry_pause(ctx.options, deadline)
        if pause <= 0:
            raise lock_timeout_error(ctx.options, [keys[i] for i in pending])
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
    try:
        raw_values = yield from _acquire(ctx, keys, value_keys, lock_keys, token)
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
    except BaseException:
        # Updater raised, returned an invalid value, was cancelled, or a stored value was
        # corrupt: release at once (not after lock_ttl_ms) and let the error propagate.
        yield from _release(ctx, lock_keys, token)
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
        yield from _release(ctx, lock_keys, token)
        raise UpdateOutcomeUnknownError(
            f"commit of {shown_keys(keys)} was sent but its reply was lost "
            f"({lost.__cause__!r}); the write may or may not have happened",
            keys=keys,
        ) from lost.__cause__
    except GeneratorExit:
        raise
    except BaseException:
        yield from _release(ctx, lock_keys, token)
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
