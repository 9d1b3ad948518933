"""Runs operations (see `operations`) over a redis-py connection pool, synchronously.

The driver only does I/O: it sends a round trip's commands in one write, reads one reply
per command (through the hot path in `speedups`), recovers NOSCRIPT, and reports a lost
reply of a non-retry-safe round trip as `ReplyLost`. It bypasses redis-py's command layer
(response callbacks, and its automatic `Retry`, which would resend a commit whose first
attempt may have landed) but keeps redis-py's connections: auth, TLS, ACL, db selection,
Sentinel, fork safety.

Connections are borrowed from the pool once and kept on a small per-adapter stack, so a
call costs a list pop and push instead of the pool's locking and health polling. A
connection that fails is disconnected and handed back to the pool together with every
idle one (they most likely share its fate, e.g. a server restart); the next call gets a
fresh, health-checked connection from the pool.
"""

from __future__ import annotations

import os
import select
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.redis.operations import (
    Command,
    Operation,
    ReplyLost,
    RoundTrip,
    merge_resend,
    noscript_resend,
)
from bantai.redis.speedups import Wire
from bantai.storage.steps import run_sync

R = TypeVar("R")

_drivers: weakref.WeakSet[SyncDriver] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    # A forked child must never talk on its parent's sockets: drop them (the pool resets
    # itself in the child on its next use).
    for driver in list(_drivers):
        driver._idle = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_connections)


def _stale(conn: Any) -> bool:
    """True when an idle connection has no socket, or its socket is readable (the server
    closed it, or it holds bytes nobody asked for): one zero-timeout poll()."""
    sock = conn._sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class SyncDriver:
    """Drives operations over `client.connection_pool` (a `redis.Redis`, including
    Sentinel-managed clients)."""

    __slots__ = ("__weakref__", "_idle", "_pool", "_spin_us")

    def __init__(self, client: redis.Redis, *, busy_poll_us: int = 0) -> None:
        self._pool = client.connection_pool
        self._idle: list[Wire] = []
        self._spin_us = busy_poll_us
        _drivers.add(self)

    def run(self, op: Operation[R]) -> R:
        return run_sync(op, self.round_trip)

    def call(self, command: Command) -> Any:
        """One retry-safe command, one reply (the hot path of get / set / delete)."""
        return self.round_trip(RoundTrip((command,)))[0]

    def round_trip(self, step: RoundTrip) -> list[Any]:
        retried = False
        while True:
            wire = self._checkout(fresh=not step.retry_safe)
            try:
                replies = wire.exchange(step.commands, self._spin_us)
                if wire.errors:
                    replies = self._recover(wire, step.commands, replies)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._discard(wire)
                if step.retry_safe:
                    # One resend covers a connection that died while idle (a server
                    # restart). Not for auth failures (a subclass) or timeouts: no storms.
                    if not retried and type(exc) is RedisConnectionError:
                        retried = True
                        continue
                    raise
                # The write may have reached the server: only the operation knows what a
                # lost reply means (for a commit: outcome unknown, never a resend).
                raise ReplyLost() from exc
            except BaseException:
                self._discard(wire)  # interrupted mid-exchange: its replies are unread
                raise
            self._idle.append(wire)
            return replies

    def _recover(self, wire: Wire, commands: Sequence[Command], replies: list[Any]) -> list[Any]:
        """Only when a reply was an error: resend what failed with NOSCRIPT; after a
        READONLY (a failed-over primary) make sure this connection is not reused."""
        resend = noscript_resend(commands, replies)
        if resend is not None:
            failed, again = resend
            replies = merge_resend(replies, failed, wire.exchange(again, self._spin_us))
        if any(type(r) is ReadOnlyError for r in replies):
            wire.conn.disconnect()  # the pool reconnects it (to the new primary) when reused
        return replies

    def _checkout(self, *, fresh: bool) -> Wire:
        try:
            wire = self._idle.pop()
        except IndexError:
            return Wire(self._pool.get_connection())  # connects and authenticates if needed
        if fresh and _stale(wire.conn):
            # Before a write that must not be sent twice, make sure an idle connection was
            # not closed under us: afterwards, a failure would be reported as ambiguous.
            self._discard(wire)
            return Wire(self._pool.get_connection())
        return wire

    def _discard(self, wire: Wire) -> None:
        idle, self._idle = self._idle, []
        for w in (wire, *idle):
            w.conn.disconnect()
            self._pool.release(w.conn)

    def close(self) -> None:
        """Hand every borrowed connection back to the pool."""
        idle, self._idle = self._idle, []
        for wire in idle:
            self._pool.release(wire.conn)
