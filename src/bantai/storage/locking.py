"""Waiting for a busy lock, written once for every storage and every operation that
waits: the Redis lock acquire, the Redis scripts that refuse while an update holds a key
(`append`, rate-limit `consume`), and the memory storage's leases.

`until_free` retries an attempt with a jittered pause that never passes the deadline
(monotonic clock, so wall-clock jumps change nothing) and raises `LockTimeoutError`
("Failed to acquire lock ...", like the TypeScript original) when it does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from bantai.errors import LockTimeoutError
from bantai.observe import lock_waited
from bantai.steps import Operation, Sleep
from bantai.storage.inputs import Key
from bantai.storage.options import StorageOptions

R = TypeVar("R")

Attempt = Callable[[], Operation["tuple[bool, R | None, Sequence[Key]]"]]
"""One try: an operation returning (got it, its result, the keys that were busy)."""


# The first pause after a busy lock: about one loopback round trip. It doubles with every
# busy attempt up to `lock_retry_ms`, so a lock freed a moment later is taken a moment
# later, while a long hold costs the server one poll per `lock_retry_ms`.
FIRST_PAUSE_S = 0.001


def until_free(
    options: StorageOptions, attempt: Attempt[R], deadline: float | None = None
) -> Operation[R]:
    """Run `attempt` until it succeeds; between tries pause with jitter (concurrent
    waiters spread out instead of retrying in lock step), starting near one round trip
    and doubling up to `lock_retry_ms`, never holding anything and never past the
    deadline (`lock_timeout_ms` from now unless given, on the monotonic clock).
    `LockTimeoutError` naming the busy keys once it has passed."""
    if deadline is None:
        deadline = time.monotonic() + options.lock_timeout_ms / 1000.0
    cap = options.lock_retry_ms / 1000.0
    pause = min(cap, FIRST_PAUSE_S)
    while True:
        done, result, busy = yield from attempt()
        if done:
            return result  # type: ignore[return-value]
        wait = min(deadline - time.monotonic(), pause * (0.5 + random.random() / 2))
        if wait <= 0:
            raise lock_timeout_error(options, busy)
        lock_waited(wait)
        yield Sleep(wait)
        pause = min(cap, pause * 2)


def shown_keys(keys: Sequence[Key]) -> str:
    """`key 'a'` or `keys ['a', 'b']`, for error messages."""
    return f"key {keys[0]!r}" if len(keys) == 1 else f"keys {list(keys)!r}"


def lock_timeout_error(options: StorageOptions, keys: Sequence[Key]) -> LockTimeoutError:
    """The `LockTimeoutError` for `keys` ("Failed to acquire lock ...", like the original)."""
    return LockTimeoutError(
        f"Failed to acquire lock for {shown_keys(keys)} within {options.lock_timeout_ms} ms",
        keys=keys,
    )
