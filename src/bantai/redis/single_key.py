"""The single-key hot paths of the Redis adapters, each one flat step generator:
`update_one` (`operations.update` of one key), `append_one` (`operations.append` of an
item to a plain list) and `consume_one` (`operations.consume`).

Each takes the same steps in the same order as the generic operation and gives the same
results and errors (`tests/test_single_key.py` checks this with Hypothesis for random
replies and updaters), without the machinery a batch needs: no slot groups, no plan
lists, no nested generators. `update_one` runs once the adapter's one-time
eviction-policy check is done (the facade decides).

This very source is also compiled by Cython into `bantai.redis._single_key`
(`_single_key.pyx` includes it): the compiled and the pure twin cannot drift apart;
`speedups` picks the one in use. (No `from __future__` import here: Cython includes
this file into `_single_key.pyx`, where it could not come first. Annotations are
evaluated at import time, so they stay in the forms Python 3.10 evaluates.)
"""

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from bantai.errors import LockTimeoutError, StoredValueError, UpdateOutcomeUnknownError
from bantai.observe import lock_waited
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult, explain
from bantai.redis import scripts
from bantai.redis.replies import (
    check_reply,
    commit_reply_lost,
    evalsha,
    invalid_limiter_state,
    lock_lost,
    release_command,
    unanswered,
)
from bantai.redis.round_trip import ReplyLost, RoundTrip
from bantai.steps import Call, Operation, Sleep
from bantai.storage.inputs import check_updater, encode_key, unpack_update_result
from bantai.storage.locking import FIRST_PAUSE_S, lock_timeout_error


def update_one(
    setup: Any,
    key: str | bytes,
    updater: Callable[[Any], Any],
    token: bytes,
    deadline: float | None = None,
) -> Operation[Any]:
    """Lock `key`, read it, run `updater(current)`, validate, commit if the lock still
    holds `token`. See `operations.locked_update` for what each failure means."""
    raw = encode_key(key)
    check_updater(updater)
    layout, codec, options = setup.layout, setup.codec, setup.options
    value_key = layout.value_key(raw)
    lock_key = layout.lock_key(raw)
    keys = (key,)
    acquire = RoundTrip(
        [evalsha(scripts.ACQUIRE, [value_key, lock_key], (token, options.lock_ttl_ms))]
    )
    if deadline is None:
        deadline = time.monotonic() + options.lock_timeout_ms / 1000.0
    cap = options.lock_retry_ms / 1000.0
    pause = min(cap, FIRST_PAUSE_S)
    acquired = False
    try:
        while True:  # the busy-lock wait of `locking.until_free`, inline
            (reply,) = yield acquire
            if isinstance(reply, Exception):
                check_reply(reply, keys)
            entry = reply[0]
            if entry[0] == 1:
                break
            wait = min(deadline - time.monotonic(), pause * (0.5 + random.random() / 2))
            if wait <= 0:
                raise lock_timeout_error(options, keys)
            lock_waited(wait)
            yield Sleep(wait)
            pause = min(cap, pause * 2)
        acquired = True
        current = codec.decode(entry[1] if len(entry) > 1 else None, key)
        returned = yield Call(updater, (current,))
        if type(returned) is dict and len(returned) == 1 and "value" in returned:
            unpacked: Any = (returned["value"], None)  # the common shape, checked inline
        else:
            unpacked = unpack_update_result(returned, key)
        if unpacked is None:
            value: Any = current
            args: tuple[Any, ...] = (token, b"none", b"", b"")
        else:
            value, data = codec.encode(unpacked[0], key)
            ttl = unpacked[1]
            args = (token, b"keep", data, b"") if ttl is None else (token, b"px", data, ttl)
    except GeneratorExit:
        raise  # being closed: no more steps may be yielded
    except BaseException as exc:
        # A lock timeout holds nothing (the acquire is all or nothing): nothing to release.
        if acquired or not isinstance(exc, LockTimeoutError):
            with contextlib.suppress(Exception):
                yield _release(lock_key, token, exc)
        raise
    commit = RoundTrip([evalsha(scripts.COMMIT, [value_key, lock_key], args)], retry_safe=False)
    try:
        (reply,) = yield commit
    except ReplyLost as lost:
        with contextlib.suppress(Exception):
            yield _release(lock_key, token, lost)
        raise commit_reply_lost(keys, lost) from lost.__cause__
    except GeneratorExit:
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            yield _release(lock_key, token, exc)
        raise
    if isinstance(reply, Exception):
        # e.g. OOM: the script was refused before it ran, so the lock is still ours.
        with contextlib.suppress(Exception):
            yield _release(lock_key, token, None)
        check_reply(reply, keys)
    if reply:
        raise lock_lost(keys, options.lock_ttl_ms, several_groups=False)
    return value


def _release(lock_key: bytes, token: bytes, after: BaseException | None) -> RoundTrip:
    """The lock release after a failure: in the background after a timeout or a
    cancellation (`operations._release` for one key)."""
    return RoundTrip([release_command([lock_key], token)], background=unanswered(after))


def consume_one(
    setup: Any,
    config: RateLimitConfig,
    key: str,
    cost: int,
    now: int,
    client_now: int,
) -> Operation[RateLimitResult]:
    """Atomic check-and-consume of a rate limit: `operations.consume`, flat."""
    encode_key(key)
    layout, options = setup.layout, setup.options
    period = config.period_ms
    fixed = config.type == "fixed-window"
    assumed = now or client_now + setup.clock_offset_ms
    cap = options.lock_retry_ms / 1000.0
    keys = (key,)
    while True:
        start = assumed // period * period
        stored = encode_key(f"{key}:{start}" if fixed else key)  # `algorithms.state_key`
        args = (config.type, config.limit, period, cost, now, start if fixed else 0)
        command = evalsha(
            scripts.RATE_LIMIT, [layout.value_key(stored), layout.lock_key(stored)], args
        )
        deadline = time.monotonic() + options.lock_timeout_ms / 1000.0
        pause = min(cap, FIRST_PAUSE_S)
        while True:  # `operations._script_until_free`, inline
            try:
                (reply,) = yield RoundTrip([command], retry_safe=False)
            except ReplyLost as lost:
                raise UpdateOutcomeUnknownError(
                    f"rate limit consume of key {key!r} was sent but its reply was lost "
                    f"({lost.__cause__!r}); it may or may not have been applied, and it was "
                    "not resent",
                    keys=keys,
                ) from lost.__cause__
            if isinstance(reply, Exception):
                check_reply(reply, keys)
            if reply[0] != 0:
                break
            wait = min(deadline - time.monotonic(), pause * (0.5 + random.random() / 2))
            if wait <= 0:
                raise lock_timeout_error(options, keys)
            lock_waited(wait)
            yield Sleep(wait)
            pause = min(cap, pause * 2)
        if reply[0] == 1:
            return explain(config, reply[1] == 1, reply[2], reply[3], cost, reply[4])
        if reply[0] == 3:
            raise invalid_limiter_state(key, reply[1])
        # {2, window start, server now}: another window than the one this client named.
        setup.clock_offset_ms = int(reply[2]) - client_now
        assumed = int(reply[2])


def append_one(setup: Any, key: str | bytes, item: object) -> Operation[None]:
    """`operations.append` when the schema is a plain list (the facade checks): one
    script, waiting while an update holds the key."""
    raw = encode_key(key)
    _, data = setup.codec.item_codec.encode(item, key)
    layout, options = setup.layout, setup.options
    command = evalsha(scripts.APPEND, [layout.value_key(raw), layout.lock_key(raw)], (data,))
    keys = (key,)
    deadline = time.monotonic() + options.lock_timeout_ms / 1000.0
    cap = options.lock_retry_ms / 1000.0
    pause = min(cap, FIRST_PAUSE_S)
    while True:  # `operations._script_until_free`, inline
        try:
            (reply,) = yield RoundTrip([command], retry_safe=False)
        except ReplyLost as lost:
            raise UpdateOutcomeUnknownError(
                f"append of key {key!r} was sent but its reply was lost ({lost.__cause__!r}); "
                "it may or may not have been applied, and it was not resent",
                keys=keys,
            ) from lost.__cause__
        if isinstance(reply, Exception):
            check_reply(reply, keys)
        if reply[0] != 0:
            break
        wait = min(deadline - time.monotonic(), pause * (0.5 + random.random() / 2))
        if wait <= 0:
            raise lock_timeout_error(options, keys)
        lock_waited(wait)
        yield Sleep(wait)
        pause = min(cap, pause * 2)
    if reply[0] == -1:
        raise StoredValueError(
            f"value stored under key {key!r} is not a JSON array; cannot append", key=key
        )
