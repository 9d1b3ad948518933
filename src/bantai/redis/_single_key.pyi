from collections.abc import Callable
from typing import Any

from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult
from bantai.steps import Operation

def update_one(
    setup: Any,
    key: str | bytes,
    updater: Callable[[Any], Any],
    token: bytes,
    deadline: float | None = None,
) -> Operation[Any]: ...
def consume_one(
    setup: Any, config: RateLimitConfig, key: str, cost: int, now: int, client_now: int
) -> Operation[RateLimitResult]: ...
def append_one(setup: Any, key: str | bytes, item: object) -> Operation[None]: ...
