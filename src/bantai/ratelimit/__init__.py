"""Rate limiting: fixed window, sliding window, token bucket, with an atomic consume."""

from bantai.ratelimit import rate_limit
from bantai.ratelimit.algorithms import (
    FixedWindowState,
    GcraState,
    RateLimitConfig,
    RateLimitConfigDict,
    RateLimitResult,
    SlidingWindowCounterState,
    SlidingWindowState,
    TokenBucketState,
    rate_limit_check_result_schema,
    rate_limit_schema,
)
from bantai.ratelimit.periods import period_ms
from bantai.ratelimit.rule import define_rate_limit_rule, with_rate_limit

__all__ = [
    "FixedWindowState",
    "GcraState",
    "SlidingWindowCounterState",
    "RateLimitConfig",
    "RateLimitConfigDict",
    "RateLimitResult",
    "SlidingWindowState",
    "TokenBucketState",
    "define_rate_limit_rule",
    "period_ms",
    "rate_limit",
    "rate_limit_check_result_schema",
    "rate_limit_schema",
    "with_rate_limit",
]
