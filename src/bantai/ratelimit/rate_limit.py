"""`rate_limit.consume` (atomic check-and-consume), plus the original's `check` and
`increment`, over any bantai storage.

A storage may offer a faster, equally atomic way to consume through one internal hook,
`_bantai_consume(config, key, cost, now)` (a coroutine function on asyncio storages): the
Redis adapters run one Lua script, one round trip, no lock, with the time from Redis
`TIME` (`now` = 0) or an injected clock. Every other storage — the memory storages, any
third-party `StorageAdapter` — runs the same decision inside its own atomic `update`.
Every limiter key is written with a TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic_core import ValidationError

from bantai.errors import InvalidKeyError, InvalidOptionError, StoredValueError
from bantai.ratelimit.algorithms import (
    MAX_COUNT,
    RateLimitConfig,
    RateLimitConfigDict,
    RateLimitResult,
    check_cost,
    decide,
    explain,
    rate_limit_schema,
    state_key,
    state_validator,
)
from bantai.steps import Call, Operation, run_async, run_sync
from bantai.storage.inputs import encode_key
from bantai.storage.protocol import AsyncKeyValueStorage, KeyValueStorage

Clock = Callable[[], int]
# A config: validated, or a mapping in the original's vocabulary (typed by the TypedDict).
ConfigLike = RateLimitConfig | RateLimitConfigDict

__all__ = [
    "RateLimitConfig",
    "RateLimitResult",
    "check",
    "check_async",
    "consume",
    "consume_async",
    "increment",
    "increment_async",
    "rate_limit_schema",
]


def wall_clock_ms() -> int:
    """This machine's clock, epoch milliseconds."""
    return time.time_ns() // 1_000_000


def _now(clock: Clock | None, default: int | None) -> int:
    """The time from an injected clock (checked: epoch milliseconds as an int), else
    `default` (0 = the storage's own clock), else the wall clock."""
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
        raise InvalidKeyError("a rate limit needs a key (config 'key' or the key argument)")
    encode_key(chosen)
    return chosen


def _normalise(current: Any, key: str) -> Any:
    """Limiter state as a validated dict, whatever the storage's schema returned; a state
    that is not a valid rate-limit state is a `StoredValueError` (never trusted: a planted
    negative count must not admit more)."""
    if current is None:
        return None
    if hasattr(current, "model_dump"):
        current = current.model_dump(by_alias=True)
    try:
        return state_validator.validate_python(current)
    except ValidationError as exc:
        raise StoredValueError(
            f"rate limit state stored under key {key!r} is invalid: {exc.errors()[0]['msg']}; "
            "nothing was counted",
            key=key,
        ) from None


def _plan(
    config: ConfigLike, cost: int | None, key: str | None
) -> tuple[RateLimitConfig, int, str]:
    cfg = RateLimitConfig.parse(config)
    return cfg, check_cost(cfg.cost if cost is None else cost), _key(cfg, key)


def _consume_op(
    storage: Any, cfg: RateLimitConfig, spend: int, full_key: str, now: int
) -> Operation[RateLimitResult]:
    """The decision inside the storage's own atomic `update` (awaited when it is async)."""
    decided: list[RateLimitResult] = []

    at = state_key(cfg, full_key, now)

    def update(current: Any) -> Any:
        decision = decide(cfg, _normalise(current, at), now, spend)
        decided.append(
            explain(cfg, decision.allowed, decision.remaining, decision.reset_at, spend, now)
        )
        if decision.state is None:
            return None
        return {"value": decision.state, "ttl_ms": decision.ttl_ms}

    if hasattr(storage, "update"):
        yield Call(storage.update, (at, update))
    else:
        yield from _get_then_set(storage, at, update)
    return decided[-1]


def _get_then_set(storage: Any, at: str, update: Callable[[Any], Any]) -> Operation[None]:
    """For a storage without `update` (the original's interface makes it optional): read,
    decide, write — NOT atomic: concurrent requests can be over-admitted."""
    current = yield Call(storage.get, (at,))
    planned = update(current)
    if planned is not None:
        yield Call(storage.set, (at, planned["value"], planned["ttl_ms"]))


def consume(
    storage: KeyValueStorage[Any],
    config: ConfigLike,
    cost: int | None = None,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """Atomically check and count one request of `cost` (default: the config's cost)
    against a blocking storage. Never admits more than the limit, however many processes
    share the storage."""
    cfg, spend, full_key = _plan(config, cost, key)
    hook = getattr(storage, "_bantai_consume", None)
    if hook is not None:
        return hook(cfg, full_key, spend, _now(clock, 0))  # type: ignore[no-any-return]
    return run_sync(_consume_op(storage, cfg, spend, full_key, _now(clock, None)))


async def consume_async(
    storage: AsyncKeyValueStorage[Any],
    config: ConfigLike,
    cost: int | None = None,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """`consume` for asyncio storages."""
    cfg, spend, full_key = _plan(config, cost, key)
    hook = getattr(storage, "_bantai_consume", None)
    if hook is not None:
        return await hook(cfg, full_key, spend, _now(clock, 0))  # type: ignore[no-any-return]
    return await run_async(_consume_op(storage, cfg, spend, full_key, _now(clock, None)))


# --- the original's two-step API (kept for compatibility; racy by design) ----------------


def _at(
    config: ConfigLike, key: str | None, clock: Clock | None
) -> tuple[RateLimitConfig, int, str]:
    """The parsed config, the time, and the storage key of the state that time reads."""
    cfg = RateLimitConfig.parse(config)
    now = _now(clock, None)
    return cfg, now, state_key(cfg, _key(cfg, key), now)


def _check_result(cfg: RateLimitConfig, current: Any, now: int, at: str) -> RateLimitResult:
    decision = decide(cfg, _normalise(current, at), now, cfg.cost)
    return explain(cfg, decision.allowed, decision.remaining, decision.reset_at, cfg.cost, now)


def check(
    storage: KeyValueStorage[Any],
    config: ConfigLike,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """Read-only: would a request be admitted now? (The original's `checkRateLimit`.)
    Check-then-increment is not atomic: concurrent requests can be over-admitted; use
    `consume`."""
    cfg, now, at = _at(config, key, clock)
    return _check_result(cfg, storage.get(at), now, at)


async def check_async(
    storage: AsyncKeyValueStorage[Any],
    config: ConfigLike,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> RateLimitResult:
    """`check` for asyncio storages."""
    cfg, now, at = _at(config, key, clock)
    return _check_result(cfg, await storage.get(at), now, at)


def _increment_updater(cfg: RateLimitConfig, now: int, at: str) -> Any:
    # Counts even past the limit, like the original's incrementRateLimit (a token bucket
    # only spends tokens it has).
    loose = (
        cfg
        if cfg.type == "token-bucket"
        else RateLimitConfig(cfg.type, MAX_COUNT, cfg.period_ms, cfg.cost, cfg.key)
    )

    def update(current: Any) -> Any:
        decision = decide(loose, _normalise(current, at), now, cfg.cost)
        if decision.state is None:
            return None
        return {"value": decision.state, "ttl_ms": decision.ttl_ms}

    return update


def _increment_op(storage: Any, at: str, update: Callable[[Any], Any]) -> Operation[None]:
    if hasattr(storage, "update"):
        yield Call(storage.update, (at, update))
    else:  # like the original: get, then set with the window as TTL
        yield from _get_then_set(storage, at, update)


def increment(
    storage: KeyValueStorage[Any],
    config: ConfigLike,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> None:
    """Count one request (the original's `incrementRateLimit`), through `update` (or get +
    set on a storage without `update`)."""
    cfg, now, at = _at(config, key, clock)
    run_sync(_increment_op(storage, at, _increment_updater(cfg, now, at)))


async def increment_async(
    storage: AsyncKeyValueStorage[Any],
    config: ConfigLike,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> None:
    """`increment` for asyncio storages."""
    cfg, now, at = _at(config, key, clock)
    await run_async(_increment_op(storage, at, _increment_updater(cfg, now, at)))
