"""The step protocol: how code written once, without I/O, is run blocking or on asyncio.

An *operation* (a storage operation, a policy evaluation) is a generator. It yields steps
and receives their results:

- `Sleep(seconds)`: wait (never holding a connection or a lock of ours);
- `Call(fn, args)`: call user code — an updater, a rule, a hook; the asyncio runner
  awaits the result when it is awaitable;
- anything else is I/O, handed to the `io` function the runner was given (the Redis
  drivers pass their round trip).

If a step fails, the runner throws the exception into the generator at its `yield`, so the
operation decides what the failure means (release a lock, report an ambiguous write).
`run_sync` and `run_async` are the only two loops; nothing above them is written twice.
This module depends on nothing else in bantai: the core, the storages and the Redis
adapter all build on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")

Operation = Generator[Any, Any, R]
"""A generator that yields steps and returns its result."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait before trying again (e.g. a busy lock)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """Call user code: `fn(*args)`. The asyncio runner awaits an awaitable result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


def run_sync(op: Operation[R], io: Callable[[Any], Any] | None = None) -> R:
    """Run `op`, blocking. Steps other than Sleep / Call go to `io`. Any failure of a step
    is thrown into the operation at its `yield`."""
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
            elif type(step) is Call:
                value = step.fn(*step.args)
            else:
                assert io is not None, f"no I/O for {step!r}"
                value = io(step)
        except BaseException as exc:
            error = exc


async def run_async(op: Operation[R], io: Callable[[Any], Awaitable[Any]] | None = None) -> R:
    """Run `op` on asyncio: like `run_sync`, awaiting I/O, sleeps and awaitable results of
    user code. A CancelledError is thrown into the operation too (it releases what it
    holds, then re-raises)."""
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
            elif type(step) is Call:
                value = step.fn(*step.args)
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    value = await value
            else:
                assert io is not None, f"no I/O for {step!r}"
                value = await io(step)
        except BaseException as exc:
            error = exc


__all__ = ["Call", "Operation", "Sleep", "run_async", "run_sync"]
