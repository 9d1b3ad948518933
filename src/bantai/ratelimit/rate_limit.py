"""`rate_limit.consume` (atomic check-and-consume), plus the original's `check` and
`increment`, over any bantai storage.

On a Redis storage, `consume` is one Lua script, one round trip, no lock, with the time
from Redis `TIME` (or an injected clock). On the memory storages it is the in-process
equivalent under the key's lease; on any other StorageAdapter it runs through its atomic
`update`. Every limiter key is written with a TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bantai.errors import InvalidOptionError, UpdateOutcomeUnknownError
from bantai.ratelimit.algorithms import (
    RateLimitConfig,
    RateLimitResult,
    check_cost,
    decide,
    explain,
    state_validator,
    storage_schema,
    window_start,
)
from bantai.redis import operations as ops
from bantai.redis import scripts
from bantai.redis.async_storage import AsyncRedisStorage
from bantai.redis.storage import RedisStorage
from bantai.storage.inputs import encode_key
from bantai.storage.memory import AsyncMemoryStorage, MemoryStorage
from bantai.storage.steps import (
    CallUpdater,
    Operation,
    Sleep,
    lock_deadline,
    lock_timeout_error,
    retry_pause,
    run_async,
    run_sync,
)

Clock = Callable[[], int]
ConfigLike = RateLimitConfig | Mapping[str, Any]

__all__ = [
    "RateLimitConfig",
    "RateLimitResult",
    "check",
    "check_async",
    "consume",
    "consume_async",
    "increment",
    "increment_async",
    "storage_schema",
]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _now(clock: Clock | None, default: int | None) -> int:
    """The time from an injected clock (checked: epoch milliseconds as an int), else
    `default` (0 = the Redis server's clock), else the wall clock."""
    if clock is None:
        return wall_clock_ms() if default is None else default
    now = clock()
    if not isinstance(now, int) or isinstance(now, bool) or now < 0:
        raise InvalidOptionError(
            f"clock must return epoch milliseconds as a non-negative int, not {now!r}"
        )
    return now


def _key(config: RateLimitConfig, key: str | None) -> str:
    chosen = key if key is not None else config.key
    if not chosen:
        raise ValueError("a rate limit needs a key (config 'key' or the key argument)")
    encode_key(chosen)
    return chosen


def _state_key(config: RateLimitConfig, key: str, now: int) -> str:
    return f"{key}:{window_start(config, now)}" if config.type == "fixed-window" else key


def _normalise(current: Any) -> Any:
    """Limiter state as a validated dict, whatever the storage's schema returned."""
    if current is None:
        return None
    if hasattr(current, "model_dump"):
        current = current.model_dump(by_alias=True)
    return state_validator.validate_python(current)


# --- the Redis path: one script ----------------------------------------------------------


def _redis_consume(
    ctx: ops.Context[Any], config: RateLimitConfig, key: str, cost: int, now: int
) -> Operation[RateLimitResult]:
    redis_key = ctx.layout.value_key(encode_key(key))
    args = (config.type, config.limit, config.period_ms, cost, now)
    deadline = lock_deadline(ctx.options)
    while True:
        try:
            (reply,) = yield ops.RoundTrip(
                (ops.evalsha(scripts.RATE_LIMIT, (redis_key,), args),), retry_safe=False
            )
        except ops.ReplyLost as lost:
            raise UpdateOutcomeUnknownError(
                f"rate limit consume on {key!r} was sent but its reply was lost; the request "
                "may or may not have been counted",
                keys=(key,),
            ) from lost.__cause__
        entry = ops.check_reply(reply, (key,))
        if entry[0] == 1:
            return explain(config, entry[1] == 1, entry[2], entry[3], cost)
        pause = retry_pause(ctx.options, deadline)  # an original-style increment holds it
        if pause <= 0:
            raise lock_timeout_error(ctx.options, (key,))
        yield Sleep(pause)


# --- every other storage: the same decision inside an atomic update ----------------------


def _updater(config: RateLimitConfig, now: int, cost: int, box: list[RateLimitResult]) -> Any:
    def update(current: Any) -> Any:
        allowed, remaining, reset_at, new, ttl = decide(config, _normalise(current), now, cost)
        box.append(explain(config, allowed, remaining, reset_at, cost))
        return None if new is None else {"value": new, "ttl_ms": ttl}

    return update


def _consume_op(
    storage: Any, config: ConfigLike, cost: int | None, key: str | None, clock: Clock | None
) -> Operation[RateLimitResult]:
    """One operation for every kind of storage, run blocking or on asyncio."""
    cfg = RateLimitConfig.parse(config)
    spend = check_cost(cfg.cost if cost is None else cost)
    full_key = _key(cfg, key)
    if isinstance(storage, (RedisStorage, AsyncRedisStorage)):
        return _redis_consume(storage._ctx, cfg, full_key, spend, _now(clock, 0))
    now = _now(clock, None)
    box: list[RateLimitResult] = []
    updater = _updater(cfg, now, spend, box)
    state_key = _state_key(cfg, full_key, now)
    if isinstance(storage, (MemoryStorage, AsyncMemoryStorage)):
        inner: Operation[Any] = storage._core.update_op([state_key], updater, keyed=False)
    else:  # any other StorageAdapter: its own atomic update (awaited when async)
        inner = _call(storage.update, state_key, updater)
    return _boxed(inner, box)


def _call(fn: Callable[..., Any], *args: Any) -> Operation[Any]:
    return (yield CallUpdater(fn, args))


def _boxed(op: Operation[Any], box: list[RateLimitResult]) -> Operation[RateLimitResult]:
    yield from op
    return box[-1]


def consume(
    storage: Any,
    config: ConfigLike,
    cost: int | None = None,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """Atomically check and count one request of `cost` (default: the config's cost)
    against a blocking storage. Never admits more than the limit, however many processes
    share the storage."""
    io = storage._driver.round_trip if isinstance(storage, RedisStorage) else None
    return run_sync(_consume_op(storage, config, cost, key, clock), io)


async def consume_async(
    storage: Any,
    config: ConfigLike,
    cost: int | None = None,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """`consume` for asyncio storages."""
    io = storage._driver.round_trip if isinstance(storage, AsyncRedisStorage) else None
    return await run_async(_consume_op(storage, config, cost, key, clock), io)


# --- the original's two-step API (kept for compatibility; racy by design) ----------------


def _at(
    config: ConfigLike, key: str | None, clock: Clock | None
) -> tuple[RateLimitConfig, int, str]:
    """The parsed config, the time, and the storage key of the state that time reads."""
    cfg = RateLimitConfig.parse(config)
    now = _now(clock, None)
    return cfg, now, _state_key(cfg, _key(cfg, key), now)


def _check_result(cfg: RateLimitConfig, current: Any, now: int) -> RateLimitResult:
    allowed, remaining, reset_at, _, _ = decide(cfg, _normalise(current), now, cfg.cost)
    return explain(cfg, allowed, remaining, reset_at, cfg.cost)


def check(
    storage: Any, config: ConfigLike, *, key: str | None = None, clock: Clock | None = None
) -> RateLimitResult:
    """Read-only: would a request be admitted now? (The original's `checkRateLimit`.)
    Check-then-increment is not atomic: concurrent requests can be over-admitted; use
    `consume`."""
    cfg, now, state_key = _at(config, key, clock)
    return _check_result(cfg, storage.get(state_key), now)


async def check_async(
    storage: Any, config: ConfigLike, *, key: str | None = None, clock: Clock | None = None
) -> RateLimitResult:
    cfg, now, state_key = _at(config, key, clock)
    return _check_result(cfg, await storage.get(state_key), now)


def _increment_updater(cfg: RateLimitConfig, now: int) -> Any:
    # Counts even past the limit, like the original's incrementRateLimit (a token bucket
    # only spends tokens it has).
    loose = (
        cfg
        if cfg.type == "token-bucket"
        else RateLimitConfig(cfg.type, 2**62, cfg.period_ms, cfg.cost, cfg.key)
    )

    def update(current: Any) -> Any:
        _, _, _, new, ttl = decide(loose, _normalise(current), now, cfg.cost)
        return None if new is None else {"value": new, "ttl_ms": ttl}

    return update


def increment(
    storage: Any, config: ConfigLike, *, key: str | None = None, clock: Clock | None = None
) -> None:
    """Count one request (the original's `incrementRateLimit`), through `update`."""
    cfg, now, state_key = _at(config, key, clock)
    storage.update(state_key, _increment_updater(cfg, now))


async def increment_async(
    storage: Any, config: ConfigLike, *, key: str | None = None, clock: Clock | None = None
) -> None:
    cfg, now, state_key = _at(config, key, clock)
    await storage.update(state_key, _increment_updater(cfg, now))
