"""The steps an I/O-free operation yields besides its own I/O, and the two loops that run
operations: one blocking, one asyncio. Shared by the Redis adapter (whose drivers add the
`RoundTrip` step) and the memory storage, so every storage has one implementation of each
operation for sync and asyncio alike.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bantai.errors import LockTimeoutError
from bantai.storage.inputs import Key
from bantai.storage.options import StorageOptions

R = TypeVar("R")

Operation = Generator[Any, Any, R]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait before retrying a busy lock (never holding a connection)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class CallUpdater:
    """Call the user's updater; the asyncio loop awaits it if it returns an awaitable."""

    updater: Callable[..., Any]
    args: tuple[Any, ...]


def run_sync(op: Operation[R], io: Callable[[Any], Any] | None = None) -> R:
    """Run `op`, blocking. Steps other than Sleep / CallUpdater go to `io`. Any failure of
    a step is thrown into the operation at its `yield`, so it can clean up (release
    locks) and decide what the failure means."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.send(value) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        try:
            if type(step) is Sleep:
                time.sleep(step.seconds)
            elif type(step) is CallUpdater:
                value = step.updater(*step.args)
            else:
                assert io is not None, f"no I/O for {step!r}"
                value = io(step)
        except BaseException as exc:
            error = exc


async def run_async(op: Operation[R], io: Callable[[Any], Awaitable[Any]] | None = None) -> R:
    """Run `op` on asyncio: like `run_sync`, awaiting I/O, sleeps and async updaters.
    A CancelledError is thrown into the operation too (it releases what it holds, then
    re-raises)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.send(value) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        try:
            if type(step) is Sleep:
                await asyncio.sleep(step.seconds)
            elif type(step) is CallUpdater:
                value = step.updater(*step.args)
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    value = await value
            else:
                assert io is not None, f"no I/O for {step!r}"
                value = await io(step)
        except BaseException as exc:
            error = exc


def retry_pause(options: StorageOptions, deadline: float) -> float:
    """Jittered pause before the next lock attempt, never past the deadline (monotonic
    clock): concurrent waiters spread out instead of retrying in lock step."""
    retry = options.lock_retry_ms / 1000.0
    return min(deadline - time.monotonic(), retry * (0.5 + random.random() / 2))


def lock_deadline(options: StorageOptions) -> float:
    return time.monotonic() + options.lock_timeout_ms / 1000.0


def shown_keys(keys: Sequence[Key]) -> str:
    return f"key {keys[0]!r}" if len(keys) == 1 else f"keys {list(keys)!r}"


def lock_timeout_error(options: StorageOptions, keys: Sequence[Key]) -> LockTimeoutError:
    return LockTimeoutError(
        f"Failed to acquire lock for {shown_keys(keys)} within {options.lock_timeout_ms} ms",
        keys=keys,
    )
