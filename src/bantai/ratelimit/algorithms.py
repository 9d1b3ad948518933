"""The three limiters as pure functions of (stored state, now) -> (decision, new state).

This is the reference the Redis Lua script (`redis/scripts.py: RATE_LIMIT`) mirrors
operation for operation (same float arithmetic in the same order), and what the memory
storage runs in-process. Stored states are the TypeScript original's JSON shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypedDict

from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from bantai.errors import InvalidOptionError
from bantai.ratelimit.periods import period_ms
from bantai.storage.inputs import MAX_TTL_MS

Algorithm = Literal[
    "fixed-window", "sliding-window", "token-bucket", "sliding-window-counter", "gcra"
]
ALGORITHMS: tuple[Algorithm, ...] = (
    "fixed-window",
    "sliding-window",
    "token-bucket",
    "sliding-window-counter",
    "gcra",
)


# --- stored state (wire format of @bantai-dev/with-rate-limit) ------------------------------
# Plain pydantic-core schemas (no pydantic needed): states are dicts with these keys.


class FixedWindowState(TypedDict):
    """A fixed window's stored state (the original's JSON shape)."""

    type: Literal["fixed-window"]
    count: int


class SlidingWindowState(TypedDict):
    """A sliding window's stored state: every admitted request's time."""

    type: Literal["sliding-window"]
    timestamps: list[int]


class SlidingWindowCounterState(TypedDict):
    type: Literal["sliding-window-counter"]
    windowStart: int
    previous: int
    current: int


class GcraState(TypedDict):
    type: Literal["gcra"]
    tat: float


class TokenBucketState(TypedDict):
    """A token bucket's stored state."""

    type: Literal["token-bucket"]
    remainingTokens: int
    lastRefillAt: int


def _state(kind: str, **fields: cs.CoreSchema) -> cs.CoreSchema:
    return cs.typed_dict_schema(
        {
            "type": cs.typed_dict_field(cs.literal_schema([kind])),
            **{name: cs.typed_dict_field(schema) for name, schema in fields.items()},
        }
    )


_COUNT = cs.int_schema(ge=0)
# The schema to give a storage that holds limiter state (the original's `rateLimitSchema`).
rate_limit_schema: cs.CoreSchema = cs.tagged_union_schema(
    {
        "fixed-window": _state("fixed-window", count=_COUNT),
        "sliding-window": _state("sliding-window", timestamps=cs.list_schema(_COUNT)),
        "token-bucket": _state("token-bucket", remainingTokens=_COUNT, lastRefillAt=_COUNT),
        # The two O(1) algorithms of this port (not in the original):
        "sliding-window-counter": _state(
            "sliding-window-counter", windowStart=_COUNT, previous=_COUNT, current=_COUNT
        ),
        "gcra": _state("gcra", tat=cs.float_schema(ge=0, allow_inf_nan=False)),
    },
    discriminator="type",
)
state_validator = SchemaValidator(rate_limit_schema)

# A check result in the original's shape (its `rateLimitCheckResultSchema`), for users who
# validate or serialise results: `RateLimitResult.to_json()` produces it.
rate_limit_check_result_schema: cs.CoreSchema = cs.typed_dict_schema(
    {
        "allowed": cs.typed_dict_field(cs.bool_schema()),
        "remaining": cs.typed_dict_field(cs.int_schema(ge=0)),
        "resetAt": cs.typed_dict_field(cs.int_schema(ge=0)),
        "reason": cs.typed_dict_field(cs.nullable_schema(cs.str_schema()), required=False),
    }
)


# --- configuration ---------------------------------------------------------------------------

# Limits and costs are counted in Lua doubles (exact up to 2**53) and read by JavaScript
# (Number.MAX_SAFE_INTEGER): a larger limit would compute a wrong, even negative,
# `remaining`.
MAX_COUNT = 2**53 - 1


class RateLimitConfigDict(TypedDict, total=False):
    """A rate limit as a mapping, in the original's vocabulary (for type checkers: a typo in
    `type` or a key is an error). `limit` + `period` (a `"1m"`-style string, milliseconds,
    or a `timedelta`); or the original's aliases `windowMs`, `capacity` + `refillRate`."""

    type: Algorithm
    limit: int
    period: str | int | timedelta
    cost: int
    key: str
    windowMs: int
    capacity: int
    refillRate: str | int | timedelta


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """A validated limiter: `limit` requests (tokens: bucket capacity) per `period_ms`
    (token bucket: the time to refill from empty to full), `cost` per request. Invalid
    values raise `InvalidOptionError` (a `ValueError`) when it is built, however it is
    built."""

    type: Algorithm
    limit: int
    period_ms: int
    cost: int = 1
    key: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ALGORITHMS:
            raise InvalidOptionError(
                f"rate limit type must be one of {ALGORITHMS}, not {self.type!r}"
            )
        limit = self.limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_COUNT:
            raise InvalidOptionError(
                f"rate limit 'limit' must be an int from 0 (always deny) to {MAX_COUNT}, "
                f"not {limit!r}"
            )
        check_cost(self.cost)
        period = self.period_ms
        if not isinstance(period, int) or isinstance(period, bool) or not 1 <= period <= MAX_TTL_MS:
            raise InvalidOptionError(
                f"rate limit 'period_ms' must be an int from 1 to {MAX_TTL_MS}, not {period!r}"
            )
        if self.key is not None and not isinstance(self.key, str):
            raise InvalidOptionError(f"rate limit 'key' must be a str, not {self.key!r}")

    @classmethod
    def parse(cls, config: RateLimitConfig | Mapping[str, Any]) -> RateLimitConfig:
        """From a mapping in the original's vocabulary: `type`, `limit`, `period` (also
        `windowMs`, or `capacity` + `refillRate` for a token bucket), `cost`, `key`."""
        if isinstance(config, RateLimitConfig):
            return config
        if not isinstance(config, Mapping):
            raise InvalidOptionError(f"rate limit config must be a mapping, not {config!r}")
        limit = config.get("limit", config.get("capacity"))
        period = config.get("period", config.get("windowMs", config.get("refillRate")))
        if period is None:
            raise InvalidOptionError("rate limit config needs a 'period' (e.g. '1m')")
        kind = config.get("type", "fixed-window")
        return cls.create(kind, limit, period, config.get("cost", 1), config.get("key"))

    @classmethod
    def create(
        cls, kind: Any, limit: Any, period: object, cost: Any = 1, key: Any = None
    ) -> RateLimitConfig:
        """From a period in the `ms` package's format or a `timedelta`."""
        if kind not in ALGORITHMS:
            raise InvalidOptionError(f"rate limit type must be one of {ALGORITHMS}, not {kind!r}")
        return cls(kind, limit, period_ms(period), cost, key)


def check_cost(cost: object) -> int:
    """`cost` as an int from 1 to `MAX_COUNT`, else `InvalidOptionError`."""
    if not isinstance(cost, int) or isinstance(cost, bool) or not 1 <= cost <= MAX_COUNT:
        raise InvalidOptionError(
            f"rate limit 'cost' must be an int from 1 to {MAX_COUNT}, not {cost!r}"
        )
    return cost


def state_key(config: RateLimitConfig, key: str, now: int) -> str:
    """Where a limiter's state lives in the storage, as the original names it: the key
    itself, or for a fixed window `<key>:<window start ms>` (the window that holds `now`).
    Every storage maps this key like any other (the Redis adapter adds its prefix)."""
    if config.type == "fixed-window":
        return f"{key}:{window_start(config, now)}"
    return key


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """A decision: `allowed`, `remaining` (after this request), `reset_at` (epoch ms) and a
    human `reason`, as in the original's check result; plus `decided_at`, the limiter's
    clock (epoch ms: Redis `TIME`, or the injected clock) when it decided, and
    `retry_after_ms`: 0 when allowed; when denied, how long until a request of the same
    cost can be admitted (never too early, except for a `sliding-window` cost above 1,
    where it is when the oldest request slides out), or None when it never can (a cost
    above the limit). HTTP headers are made from these (`bantai.web`)."""

    allowed: bool
    remaining: int
    reset_at: int
    reason: str
    decided_at: int = 0
    retry_after_ms: int | None = 0

    @property
    def reset_after_ms(self) -> int:
        """How long until `reset_at`, on the limiter's own clock (never negative)."""
        return max(0, self.reset_at - self.decided_at)

    def to_json(self) -> dict[str, Any]:
        """The original's check-result shape (`allowed`, `remaining`, `resetAt`, `reason`)."""
        return {"allowed": self.allowed, "remaining": self.remaining,
                "resetAt": self.reset_at, "reason": self.reason}  # fmt: skip


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def explain(
    config: RateLimitConfig, allowed: bool, remaining: int, reset_at: int, cost: int, now: int
) -> RateLimitResult:
    """The result with the original's reason strings, and when to retry."""
    if allowed:
        reason = f"rate_limit_passed: {remaining} remaining"
        return RateLimitResult(True, remaining, reset_at, reason, now, 0)
    if cost > config.limit:
        reason = f"rate_limit_exceeded: cost {cost} is more than the limit of {config.limit}"
        return RateLimitResult(False, remaining, reset_at, reason, now, None)
    reason = f"rate_limit_exceeded: limit of {config.limit} reached, resets at {_iso(reset_at)}"
    wait = reset_at - now
    if config.type == "token-bucket":
        # reset_at is when the bucket is full again; `cost` tokens are there sooner, by the
        # time the other (limit - cost) take to refill (rounded down: never too early).
        wait -= (config.limit - cost) * config.period_ms // config.limit
    return RateLimitResult(False, remaining, reset_at, reason, now, max(1, wait))


def window_start(config: RateLimitConfig, now: int) -> int:
    """The start (epoch ms) of the fixed window that holds `now`."""
    return now // config.period_ms * config.period_ms


def _is(state: Any, kind: str) -> bool:
    return isinstance(state, Mapping) and state.get("type") == kind


@dataclass(frozen=True, slots=True)
class Decision:
    """One limiter decision: `allowed`, `remaining` (after this request), `reset_at`
    (epoch ms), and the `state` to store (None: store nothing) with its `ttl_ms`."""

    allowed: bool
    remaining: int
    reset_at: int
    state: dict[str, Any] | None = None
    ttl_ms: int = 0


def decide(config: RateLimitConfig, state: Any, now: int, cost: int) -> Decision:
    """The decision for a request of `cost` at `now`, from the stored `state` (for a fixed
    window: the state of the window that contains `now`)."""
    limit, period = config.limit, config.period_ms
    if config.type == "fixed-window":
        start = window_start(config, now)
        reset_at = start + period
        count = state["count"] if _is(state, "fixed-window") else 0
        if cost > limit or count + cost > limit:
            return Decision(False, max(0, limit - count), reset_at)
        count += cost
        # TTL of a whole period, like the original: the key outlives its window by at most
        # one period, and an injected clock can never make it expire mid-window.
        return Decision(
            True, limit - count, reset_at, {"type": "fixed-window", "count": count}, period
        )
    if config.type == "sliding-window":
        stamps = state["timestamps"] if _is(state, "sliding-window") else []
        valid = [t for t in stamps if t > now - period]
        if cost > limit or len(valid) + cost > limit:
            reset_at = (min(valid) + period) if valid else now + period
            return Decision(False, max(0, limit - len(valid)), reset_at)
        valid.extend([now] * cost)
        new: dict[str, Any] = {"type": "sliding-window", "timestamps": valid}
        return Decision(True, limit - len(valid), min(valid) + period, new, period)
    if config.type == "sliding-window-counter":
        return _sliding_window_counter(limit, period, state, now, cost)
    if config.type == "gcra":
        return _gcra(limit, period, state, now, cost)
    # token bucket
    if limit == 0:  # a bucket that holds nothing: always denied (no refill rate to divide by)
        return Decision(False, 0, now + period)
    rate = limit / period
    if _is(state, "token-bucket"):
        tokens: float = state["remainingTokens"]
        last = state["lastRefillAt"]
    else:
        tokens, last = float(limit), now
    elapsed = now - last
    if elapsed > 0:
        tokens = min(float(limit), tokens + elapsed * rate)
    if cost > limit or tokens < cost:
        reset_at = now + math.ceil((limit - tokens) / rate)
        return Decision(False, max(0, math.floor(tokens)), reset_at)
    tokens = tokens - cost
    whole = math.floor(tokens)
    # Keep the fractional token: move lastRefillAt back by the time it took to accrue it
    # (the original floors it away, refilling slower than configured).
    carried = math.floor((tokens - whole) / rate)
    bucket = {"type": "token-bucket", "remainingTokens": whole, "lastRefillAt": now - carried}
    return Decision(True, whole, now + math.ceil((limit - tokens) / rate), bucket, period)


def _sliding_window_counter(limit: int, period: int, state: Any, now: int, cost: int) -> Decision:
    """Two fixed windows, weighted (Cloudflare's, and `limits`'): the previous window counts
    for the part of it the sliding window still covers. One small state, O(1) per
    decision whatever the limit; an estimate that assumes the previous window's requests
    were spread evenly."""
    start = now // period * period
    previous = current = 0
    if _is(state, "sliding-window-counter"):
        if state["windowStart"] == start:
            previous, current = state["previous"], state["current"]
        elif state["windowStart"] == start - period:
            previous = state["current"]
    weight = (period - (now - start)) / period
    estimate = previous * weight + current
    if cost > limit or estimate + cost > limit:
        # When the previous window's share has shrunk enough for this request: in this
        # window if what this one counted leaves room, else in the next one (where this
        # window's count becomes the previous share).
        room = limit - current - cost
        if cost > limit:
            reset_at = start + period
        elif room >= 0:  # denied with room: the previous share is not 0
            reset_at = start + math.ceil(period - room * period / previous)
        else:  # current + cost > limit >= cost: current is not 0
            reset_at = start + period + math.ceil(period - (limit - cost) * period / current)
        return Decision(False, max(0, math.floor(limit - estimate)), reset_at)
    current += cost
    remaining = max(0, math.floor(limit - (previous * weight + current)))
    new = {
        "type": "sliding-window-counter",
        "windowStart": start,
        "previous": previous,
        "current": current,
    }
    return Decision(True, remaining, start + period, new, 2 * period)


def _gcra(limit: int, period: int, state: Any, now: int, cost: int) -> Decision:
    """The generic cell rate algorithm (redis-cell's, throttled's): one timestamp per key,
    the theoretical arrival time `tat`. Requests are spaced `period / limit` apart, with a
    burst of up to `limit`. O(1) per decision whatever the limit."""
    if limit == 0:
        return Decision(False, 0, now + period)
    interval = period / limit
    tat = max(float(state["tat"]), float(now)) if _is(state, "gcra") else float(now)
    new_tat = tat + cost * interval
    allow_at = new_tat - period
    if cost > limit or now < allow_at:
        remaining = max(0, math.floor((period - (tat - now)) / interval))
        return Decision(False, remaining, math.ceil(allow_at))
    remaining = max(0, math.floor((period - (new_tat - now)) / interval))
    ttl = max(1, math.ceil(new_tat - now))
    return Decision(True, remaining, math.ceil(new_tat), {"type": "gcra", "tat": new_tat}, ttl)
