"""Every Redis adapter operation, written once and without I/O.

An operation is a step generator (see `bantai.steps`): besides `Sleep` and `Call` it
yields `RoundTrip(commands)` — send the commands back to back, receive one reply per
command (error replies arrive as exception instances, in place, so a batch reads past
them). What happens when a round trip does not simply succeed (NOSCRIPT, redirects, lost
replies) is the round-trip policy's business (`round_trip`), not the operation's.

If a step fails, the driver throws the exception into the generator at the `yield`, so
the operation itself decides what a failure means (release the lock, report an ambiguous
write). A driver (sync, asyncio, compiled) only moves bytes; none of the logic below is
repeated in a driver.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

from bantai.codec import ValueCodec
from bantai.errors import (
    LockTimeoutError,
    StoredValueError,
    UpdateOutcomeUnknownError,
)
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult, explain, state_key
from bantai.redis import scripts
from bantai.redis.keys import KeyLayout
from bantai.redis.replies import (
    Arg,
    check_reply,
    commit_reply_lost,
    evalsha,
    invalid_limiter_state,
    lock_lost,
    lost_write,
    release_command,
    unanswered,
)
from bantai.redis.round_trip import Command, ReplyLost, RoundTrip
from bantai.redis.speedups import new_token
from bantai.steps import Operation
from bantai.storage.inputs import (
    K,
    Key,
    appending,
    check_keys,
    check_updater,
    encode_key,
    ttl_to_ms,
)
from bantai.storage.locking import until_free
from bantai.storage.options import StorageOptions
from bantai.storage.updates import plan_updates

T = TypeVar("T")


@dataclass(slots=True)
class Setup(Generic[T]):
    """An adapter's setup: what every operation needs besides its arguments (one per
    adapter instance)."""

    layout: KeyLayout
    codec: ValueCodec[T]
    options: StorageOptions
    # One-time checks already done for this adapter (e.g. the eviction policy).
    done: set[str] = field(default_factory=set)
    # Server clock minus this client's, learned from the rate-limit script (ms): the
    # client names the fixed window it expects, so the guess is right first time.
    clock_offset_ms: int = 0


_log = logging.getLogger("bantai")
_SAFE_POLICIES = (b"noeviction",)


def warn_if_locks_evictable(setup: Setup[Any]) -> Operation[None]:
    """Once per adapter, before its first lock: warn when the server's eviction policy may
    evict lock keys (they carry a TTL), which would let two holders in at once. A server
    that refuses CONFIG GET (ACL) is not second-guessed."""
    if "eviction-policy" in setup.done:
        return
    # The check is made again by the next update when this one cannot reach the server.
    # A connection error is not the update's business (on a cluster the check goes to the
    # default node, which may be down while the key's own node is fine); a timeout is
    # raised, or the update would wait for the same unanswering server twice.
    try:
        (reply,) = yield RoundTrip(((b"CONFIG", b"GET", b"maxmemory-policy"),))
    except RedisConnectionError:
        return
    setup.done.add("eviction-policy")
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


# --- plain reads and writes ---------------------------------------------------------------
#
# A single-command operation is a request builder and a reply reader. The generator forms
# below compose the two for drivers that only run generators; the sync facade calls the
# halves directly around one exchange, which skips the generator protocol on the hottest
# calls without a second copy of their logic.


def get_request(setup: Setup[T], key: Key) -> Command:
    """The command of `get`."""
    return (b"GET", setup.layout.value_key(encode_key(key)))


def get_reply(setup: Setup[T], key: Key, reply: Any) -> T | None:
    """The value of `get` from its reply."""
    return setup.codec.decode(check_reply(reply, (key,)), key)


def set_request(setup: Setup[T], key: Key, value: object, ttl_ms: object = None) -> Command:
    """The command of `set`: validates and encodes first, so bad input is refused before
    anything is sent."""
    redis_key = setup.layout.value_key(encode_key(key))
    ttl = ttl_to_ms(ttl_ms)
    _, data = setup.codec.encode(value, key)
    return (b"SET", redis_key, data) if ttl is None else (b"SET", redis_key, data, b"PX", ttl)


def delete_request(setup: Setup[T], key: Key) -> Command:
    """The command of `delete`."""
    return (b"DEL", setup.layout.value_key(encode_key(key)))


def written_reply(setup: Setup[T], key: Key, reply: Any) -> None:
    """The reply of a `set` / `delete` (its request is a write: never resent)."""
    check_reply(reply, (key,))


def _write(commands: Sequence[Command], what: str, keys: Sequence[Key]) -> Operation[list[Any]]:
    """A round trip that writes: never resent once it may have left; a lost reply is
    `WriteOutcomeUnknownError`."""
    try:
        return (yield RoundTrip(commands, retry_safe=False))  # type: ignore[no-any-return]
    except ReplyLost as lost:
        raise lost_write(what, keys, lost) from lost.__cause__


def get(setup: Setup[T], key: Key) -> Operation[T | None]:
    """`get` as an operation."""
    (reply,) = yield RoundTrip((get_request(setup, key),))
    return get_reply(setup, key, reply)


def set_(setup: Setup[T], key: Key, value: object, ttl_ms: object = None) -> Operation[None]:
    """`set` as an operation (a write: never resent)."""
    (reply,) = yield from _write((set_request(setup, key, value, ttl_ms),), "set", (key,))
    written_reply(setup, key, reply)


def delete(setup: Setup[T], key: Key) -> Operation[None]:
    """`delete` as an operation (a write: never resent)."""
    (reply,) = yield from _write((delete_request(setup, key),), "delete", (key,))
    written_reply(setup, key, reply)


def get_many(setup: Setup[T], keys: Iterable[K]) -> Operation[dict[K, T | None]]:
    """Pipelined GETs, one per key (not MGET: it would pass a hash or list off as absent)."""
    key_list = check_keys(keys, unique=False)
    if not key_list:
        return {}
    # Pipelined GETs rather than MGET: MGET answers nil for a key holding a hash or list,
    # which would pass for "absent"; a GET each reports WRONGTYPE for exactly that key.
    replies = yield RoundTrip([(b"GET", setup.layout.value_key(encode_key(k))) for k in key_list])
    decode = setup.codec.decode
    return {
        key: decode(check_reply(raw, (key,)), key)
        for key, raw in zip(key_list, replies, strict=True)
    }


def set_many(
    setup: Setup[T], items: Mapping[K, object] | Iterable[tuple[K, object]], ttl_ms: object
) -> Operation[None]:
    """MSET per slot group, or one `SET_MANY` script per group with a TTL: every value
    validated first."""
    pairs = list(items.items() if isinstance(items, Mapping) else items)
    key_list = check_keys([k for k, _ in pairs], unique=True)
    ttl = ttl_to_ms(ttl_ms)
    # Validate and encode everything before building a single command: one bad value
    # means nothing is written.
    datas = [setup.codec.encode(v, k)[1] for k, v in pairs]
    redis_keys = [setup.layout.value_key(encode_key(k)) for k in key_list]
    commands: list[Command] = []
    for group in setup.layout.groups(redis_keys):
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


def delete_many(setup: Setup[T], keys: Iterable[Key]) -> Operation[None]:
    """DEL per slot group (a write: never resent)."""
    key_list = check_keys(keys, unique=False)
    redis_keys = [setup.layout.value_key(encode_key(k)) for k in key_list]
    groups = setup.layout.groups(redis_keys)
    if not groups:
        return
    commands: list[Command] = [(b"DEL", *(redis_keys[i] for i in g)) for g in groups]
    replies = yield from _write(commands, "delete_many", key_list)
    for reply in replies:
        check_reply(reply, key_list)


# --- locking ------------------------------------------------------------------------------


def _release(
    setup: Setup[Any],
    lock_keys: Sequence[bytes],
    token: bytes,
    after: BaseException | None = None,
) -> Operation[None]:
    """Best effort: a lock we cannot release (server unreachable) expires by its TTL. After
    a timeout or a cancellation (`after`) the release goes out in the background."""
    if not lock_keys:
        return
    commands = [
        release_command([lock_keys[i] for i in group], token)
        for group in setup.layout.groups(lock_keys)
    ]
    with contextlib.suppress(Exception):
        yield RoundTrip(commands, background=unanswered(after))


def _acquire(
    setup: Setup[Any],
    keys: Sequence[Key],
    value_keys: Sequence[bytes],
    lock_keys: Sequence[bytes],
    token: bytes,
    deadline: float | None = None,
) -> Operation[list[bytes | str | None]]:
    """Take every lock and return the current raw values. All or nothing: each slot group's
    script takes all of its locks or none, and when any group was busy the groups that
    were taken are released before the jittered pause. A caller never waits while holding
    a lock, so overlapping batches cannot deadlock (no hold-and-wait)."""
    groups = setup.layout.groups(value_keys)
    commands = []
    for group in groups:
        pairs: list[bytes] = []
        for i in group:
            pairs += (value_keys[i], lock_keys[i])
        commands.append(evalsha(scripts.ACQUIRE, pairs, (token, setup.options.lock_ttl_ms)))

    def attempt() -> Operation[tuple[bool, list[bytes | str | None], list[Key]]]:
        replies = yield RoundTrip(commands)
        raw_values: list[bytes | str | None] = [None] * len(keys)
        busy: list[Key] = []
        taken = False
        for group, reply in zip(groups, replies, strict=True):
            entries = check_reply(reply, [keys[i] for i in group])
            if entries[0][0] != 1:  # the script took all of the group's locks or none
                busy += [keys[i] for i, e in zip(group, entries, strict=True) if e[0] == 0]
                continue
            taken = True
            for index, entry in zip(group, entries, strict=True):
                raw_values[index] = entry[1] if len(entry) > 1 else None
        if busy and taken:
            yield from _release(setup, lock_keys, token)
        return not busy, raw_values, busy

    return (yield from until_free(setup.options, attempt, deadline))


def locked_update(
    setup: Setup[T],
    keys: Sequence[Key],
    updater: Callable[..., Any],
    *,
    keyed: bool,
    deadline: float | None = None,
) -> Operation[list[T | None]]:
    """Lock every key, read, run the updater in the client, validate, then commit all keys
    of a group atomically in one script that checks the locks still hold our token.

    Returns the new values (the current value where the updater wrote nothing)."""
    check_updater(updater)
    raw_keys = [encode_key(k) for k in keys]
    value_keys = [setup.layout.value_key(k) for k in raw_keys]
    lock_keys = [setup.layout.lock_key(k) for k in raw_keys]
    yield from warn_if_locks_evictable(setup)
    token = new_token()
    acquired = False
    try:
        raw_values = yield from _acquire(setup, keys, value_keys, lock_keys, token, deadline)
        acquired = True
        plans = yield from plan_updates(setup.codec, keys, raw_values, updater, keyed=keyed)
    except GeneratorExit:
        raise  # the generator is being closed: no more steps may be yielded
    except BaseException as exc:
        # Updater raised, returned an invalid value, was cancelled, or a stored value was
        # corrupt: release at once (not after lock_ttl_ms) and let the error propagate. A
        # lock timeout holds nothing (acquiring is all or nothing): no release to send.
        if acquired or not isinstance(exc, LockTimeoutError):
            yield from _release(setup, lock_keys, token, after=exc)
        raise

    commands = []
    groups = setup.layout.groups(value_keys)
    for group in groups:
        pairs: list[bytes] = []
        args: list[Arg] = [token]
        for i in group:
            pairs += (value_keys[i], lock_keys[i])
            plan = plans[i]
            if plan.data is None:
                args += (b"none", b"", b"")
            elif plan.ttl_ms is None:
                args += (b"keep", plan.data, b"")
            else:
                args += (b"px", plan.data, plan.ttl_ms)
        commands.append(evalsha(scripts.COMMIT, pairs, args))
    try:
        replies = yield RoundTrip(commands, retry_safe=False)
    except ReplyLost as lost:
        # Releasing is safe whatever happened: if the commit ran, the lock is already gone;
        # if it is still queued somewhere, it will find the lock gone and write nothing.
        # Either way the outcome is settled once the release is through, and the lock does
        # not block others until its TTL.
        yield from _release(setup, lock_keys, token, after=lost)
        raise commit_reply_lost(keys, lost) from lost.__cause__
    except GeneratorExit:
        raise
    except BaseException as exc:
        yield from _release(setup, lock_keys, token, after=exc)
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
        yield from _release(setup, lock_keys, token)
        check_reply(error, keys)
    if lost_keys:
        raise lock_lost(lost_keys, setup.options.lock_ttl_ms, several_groups=len(groups) > 1)
    return [plan.value for plan in plans]


def update(
    setup: Setup[T],
    key: Key,
    updater: Callable[[T | None], Any],
    deadline: float | None = None,
) -> Operation[T | None]:
    """`update` of one key (see `locked_update`); `deadline` (monotonic) for the lock wait
    when the caller already waited in line for its turn."""
    encode_key(key)
    (result,) = yield from locked_update(setup, (key,), updater, keyed=False, deadline=deadline)
    return result


def update_many(
    setup: Setup[T], keys: Iterable[K], updater: Callable[[K, T | None], Any]
) -> Operation[dict[K, T | None]]:
    """`update_many` (see `locked_update`); duplicate keys are refused first."""
    key_list = check_keys(keys, unique=True)
    if not key_list:
        return {}
    results = yield from locked_update(setup, key_list, updater, keyed=True)
    return dict(zip(key_list, results, strict=True))


def _script_until_free(
    setup: Setup[Any], command: Command, key: Key, what: str
) -> Operation[list[Any]]:
    """Send a script that answers `{0}` while an update holds the key's lock, until it
    does not (`append`, `consume`). Its lost reply is an outcome-unknown write."""

    def attempt() -> Operation[tuple[bool, list[Any], tuple[Key]]]:
        try:
            (reply,) = yield RoundTrip((command,), retry_safe=False)
        except ReplyLost as lost:
            raise UpdateOutcomeUnknownError(
                f"{what} of key {key!r} was sent but its reply was lost ({lost.__cause__!r}); "
                "it may or may not have been applied, and it was not resent",
                keys=(key,),
            ) from lost.__cause__
        entry = check_reply(reply, (key,))
        return entry[0] != 0, entry, (key,)

    return (yield from until_free(setup.options, attempt))


def append(setup: Setup[T], key: Key, item: object) -> Operation[None]:
    """Append one item to a stored list, atomically on the server. For lists with length
    limits (where the whole list must be re-validated) it runs as a locked update."""
    item_codec = setup.codec.append_item_codec()
    if item_codec is None:
        yield from locked_update(setup, (key,), appending(item), keyed=False)
        return
    raw_key = encode_key(key)
    _, data = item_codec.encode(item, key)
    keys = (setup.layout.value_key(raw_key), setup.layout.lock_key(raw_key))
    command = evalsha(scripts.APPEND, keys, (data,))
    (status,) = yield from _script_until_free(setup, command, key, "append")
    if status == -1:
        raise StoredValueError(
            f"value stored under key {key!r} is not a JSON array; cannot append", key=key
        )


def consume(
    setup: Setup[Any], config: RateLimitConfig, key: str, cost: int, now: int, client_now: int
) -> Operation[RateLimitResult]:
    """Atomic check-and-consume of a rate limit: one script, one round trip. `now` is the
    injected clock (0: the server's `TIME`); `client_now` this client's clock, from which
    it names the fixed window it expects (the script refuses another one and says which
    window it is, so a client whose clock is off sends once more and learns the offset)."""
    encode_key(key)
    assumed = now or client_now + setup.clock_offset_ms
    while True:
        stored = encode_key(state_key(config, key, assumed))
        keys = (setup.layout.value_key(stored), setup.layout.lock_key(stored))
        start = assumed // config.period_ms * config.period_ms
        window = start if config.type == "fixed-window" else 0
        args = (config.type, config.limit, config.period_ms, cost, now, window)
        entry = yield from _script_until_free(
            setup, evalsha(scripts.RATE_LIMIT, keys, args), key, "rate limit consume"
        )
        if entry[0] == 1:
            return explain(config, entry[1] == 1, entry[2], entry[3], cost, entry[4])
        if entry[0] == 3:
            raise invalid_limiter_state(key, entry[1])
        # {2, window start, server now}: another window than the one this client named.
        setup.clock_offset_ms = int(entry[2]) - client_now
        assumed = int(entry[2])
