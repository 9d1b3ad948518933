"""The in-process line for one adapter's updates of a key (a hand-off in front of the Redis
lock): only the first caller polls Redis, the next goes as soon as it is done. Shared by
the blocking and the asyncio adapter."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.observe import line_waited
from bantai.redis.round_trip import ReplyLost


class _Line:
    __slots__ = ("since", "waiting")

    def __init__(self) -> None:
        self.waiting: collections.deque[_Turn] = collections.deque()
        self.since = time.monotonic()  # when the current holder got its turn


GOT_TURN = 1  # first in line: go for the Redis lock, then `release`
TIMED_OUT = 0  # the deadline passed in line
BYPASS = 2  # go for the lock without a turn (the holder overstayed, or its server broke)


class _Turn:
    """A caller waiting in line: how it is woken (a thread's Event or a task's future) and
    what it is woken with."""

    __slots__ = ("error", "outcome", "wake")

    def __init__(self, wake: Any) -> None:
        self.wake = wake
        self.outcome = GOT_TURN
        self.error: BaseException | None = None


class KeyQueue:
    """In-process hand-off for one adapter's updates of the same key: callers line up
    (FIFO) and only the first competes for the Redis lock; when it is done the next one
    goes at once instead of polling. A holder that keeps its turn longer than its lock's
    lease no longer holds anyone up: as with the Redis lock, others may then go ahead
    (`BYPASS`). When the holder's server stops answering (a timeout), everyone in line
    fails with it at once rather than each waiting out its own timeout in turn; after a
    connection error they all go ahead on their own (`BYPASS`). Threads (`acquire`) or
    asyncio tasks (`acquire_async`) — one queue serves either."""

    __slots__ = ("__weakref__", "_lease_s", "_lines", "_mutex")

    def __init__(self, lease_ms: int) -> None:
        self._mutex = threading.Lock()
        self._lines: dict[bytes, _Line] = {}
        self._lease_s = lease_ms / 1000.0
        _queues.add(self)

    def _forget_parent(self) -> None:
        # In a forked child: the parent's callers and their turns do not exist here, and a
        # parent thread may have held the mutex at fork time.
        self._mutex = threading.Lock()
        self._lines = {}

    def _enter(self, key: bytes, make_wake: Callable[[], Any]) -> tuple[int, _Turn, float]:
        """Take the turn if free; else queue a turn. Returns (outcome, or -1 to wait; the
        turn; when the holder's lease ends)."""
        with self._mutex:
            line = self._lines.get(key)
            if line is None:
                self._lines[key] = _Line()
                return GOT_TURN, _NO_TURN, 0.0
            overstay = line.since + self._lease_s
            if time.monotonic() >= overstay:
                return BYPASS, _NO_TURN, 0.0
            turn = _Turn(make_wake())
            line.waiting.append(turn)
            return -1, turn, overstay

    def acquire(self, key: bytes, deadline: float) -> int:
        """Wait for the turn of `key`: `GOT_TURN`, `TIMED_OUT` or `BYPASS`; raises what
        the holder's server did when it stopped answering."""
        outcome, turn, overstay = self._enter(key, threading.Event)
        if outcome >= 0:
            return outcome
        limit = min(deadline, overstay)
        began = time.monotonic()
        try:
            if turn.wake.wait(max(0.0, limit - began)):
                return _woken(turn)
            return self._give_up(key, turn, overstay)
        finally:
            line_waited(time.monotonic() - began)

    async def acquire_async(self, key: bytes, deadline: float) -> int:
        """`acquire` for asyncio tasks. The wake-up is a future the releaser resolves; a
        timer resolves it with False when waiting is over. Whatever wins, `_give_up`
        settles it under the mutex, so a turn handed over at the last moment is never
        lost, and a cancelled task passes on a turn it was given."""
        loop = asyncio.get_running_loop()
        outcome, turn, overstay = self._enter(key, loop.create_future)
        if outcome >= 0:
            return outcome
        limit = min(deadline, overstay)
        began = time.monotonic()
        timer = loop.call_later(max(0.0, limit - began), _resolve, turn.wake, False)
        try:
            if await turn.wake:
                return _woken(turn)
        except BaseException:  # cancelled: leave the line, or pass on a turn just handed
            if self._give_up(key, turn, overstay) == GOT_TURN and turn.outcome == GOT_TURN:
                self.release(key)
            raise
        finally:
            timer.cancel()
            line_waited(time.monotonic() - began)
        return self._give_up(key, turn, overstay)

    def _give_up(self, key: bytes, turn: _Turn, overstay: float) -> int:
        """Leave the line. If the turn was handed over meanwhile it is ours: what it was
        woken with. Else `BYPASS` when the holder overstayed, `TIMED_OUT` otherwise."""
        with self._mutex:
            line = self._lines.get(key)
            if line is not None and turn in line.waiting:
                line.waiting.remove(turn)
                return BYPASS if time.monotonic() >= overstay else TIMED_OUT
        return _woken(turn)

    def release(self, key: bytes, failure: BaseException | None = None) -> None:
        """Hand `key` to the next caller in line, or free it (only after `GOT_TURN`).
        `failure`: what ended the holder's update, if it failed."""
        cause = failure.__cause__ if isinstance(failure, ReplyLost) else failure
        with self._mutex:
            line = self._lines[key]
            if not line.waiting:
                del self._lines[key]
                return
            if isinstance(cause, (RedisTimeoutError, RedisConnectionError)):
                woken = list(line.waiting)  # the server broke: nobody waits for anyone now
                line.waiting.clear()
                del self._lines[key]
                for turn in woken:
                    if isinstance(cause, RedisTimeoutError):
                        turn.outcome, turn.error = -1, cause
                    else:
                        turn.outcome = BYPASS
            else:
                woken = [line.waiting.popleft()]
                line.since = time.monotonic()
        for turn in woken:
            wake = turn.wake
            if isinstance(wake, threading.Event):
                wake.set()
            elif asyncio._get_running_loop() is wake.get_loop():
                _resolve(wake)  # on its own loop: wake the next task directly
            else:
                wake.get_loop().call_soon_threadsafe(_resolve, wake)


_NO_TURN = _Turn(None)
_queues: weakref.WeakSet[KeyQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for queue in list(_queues):
        queue._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _woken(turn: _Turn) -> int:
    if turn.error is not None:
        raise RedisTimeoutError(
            f"the server stopped answering the update ahead of this one ({turn.error})"
        )
    return turn.outcome


def _resolve(wake: asyncio.Future[bool], handed: bool = True) -> None:
    if not wake.done():
        wake.set_result(handed)
