"""Runs operations (see `operations`) over redis-py connection pools, blocking: one
server, a Sentinel-managed primary, or every node of a Redis Cluster.

The driver only does I/O. For each `Exchange` the round-trip policy (`round_trip`) asks
for, it sends the commands in one write and reads one reply per command through the hot
path in `speedups`; what to do when that does not simply succeed is the policy's call.
It bypasses redis-py's command layer (response callbacks, and its automatic `Retry`,
which would resend a write whose first copy may have landed) but keeps redis-py's
connections: auth, TLS, ACL, db selection, Sentinel discovery, the cluster slot map.

Connections are borrowed from a pool once and kept on a small per-node stack, so a call
costs a list pop and push instead of the pool's locking and health polling. At most
`max_connections` of a pool are borrowed; a thread that finds them all busy waits for one
to come back (up to the pool's `timeout`, else the connection's `socket_timeout`)
instead of failing with "too many connections". A connection that fails is
disconnected and handed back to the pool together with every idle one (they most likely
share its fate, e.g. a server restart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import select
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import StorageClosedError
from bantai.redis._compat import (
    give_cluster_fresh_locks,
    give_pool_fresh_locks,
    move_slot,
    refresh_slots,
    sync_socket,
)
from bantai.redis.cluster_router import ClusterRouter
from bantai.redis.round_trip import (
    ONE_SERVER,
    Action,
    Command,
    Exchange,
    NotSent,
    Reconnect,
    RefreshSlots,
    ReplyLost,
    RoundTrip,
    Router,
    SlotMoved,
    answered,
    not_sent,
    round_trip,
)
from bantai.redis.speedups import Wire
from bantai.steps import Operation, run_sync

R = TypeVar("R")

_drivers: weakref.WeakSet[SyncDriver] = weakref.WeakSet()
# How long a thread waits for a free connection when neither the pool (`timeout`) nor the
# client (`socket_timeout`) says: redis-py's own default socket timeout, or, when the
# client disabled timeouts, a generous bound all the same.
_DEFAULT_WAIT = 5.0
_NO_TIMEOUT_WAIT = 60.0


class _Janitor:
    """One daemon thread per process that runs cleanups (a lock release after a timeout)
    so the caller that timed out does not wait for them. The queue is bounded: when the
    server is down and cleanups pile up, the surplus is dropped — the locks' TTL is the
    backstop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[SyncDriver, RoundTrip]] = queue.Queue(1000)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, driver: SyncDriver, step: RoundTrip) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="bantai-cleanup", daemon=True
                    )
                    self._thread.start()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((driver, dataclasses.replace(step, background=False)))

    def _run(self) -> None:
        while True:
            driver, step = self._queue.get()
            with contextlib.suppress(Exception):  # an unreleased lock expires by its TTL
                driver.round_trip(step)


_janitor = _Janitor()


def _after_fork_in_child() -> None:
    # A forked child must never talk on its parent's sockets nor wait on a lock another
    # parent thread held at fork time: fresh state for every driver and its pools.
    global _janitor
    _janitor = _Janitor()  # the parent's thread did not survive the fork
    for driver in list(_drivers):
        driver._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _readable_by_poll(sock: Any) -> bool:
    """Whether `sock` is readable right now: one zero-timeout poll()."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _readable_by_select(sock: Any) -> bool:
    """The same with select(), for Windows, which has no poll() (select takes sockets)."""
    return bool(select.select([sock], [], [], 0)[0])


_readable = _readable_by_poll if hasattr(select, "poll") else _readable_by_select


def _stale(conn: Any) -> bool:
    """True when an idle connection has no socket, or its socket is readable (the server
    closed it, or it holds bytes nobody asked for)."""
    sock = sync_socket(conn)
    if sock is None:
        return True
    return _readable(sock)


class _Node:
    """The connections a driver borrowed from one pool (the server, or a cluster node)."""

    __slots__ = (
        "borrowed",
        "closed",
        "cond",
        "idle",
        "limit",
        "pool",
        "wait_timeout",
        "waiters",
    )

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.idle: list[Wire] = []
        self.borrowed = 0  # idle + in use: connections taken out of the pool
        self.waiters = 0  # threads in `_borrow` (counted before they look at `idle`)
        self.closed = False
        self.cond = threading.Condition(threading.Lock())
        self.limit = int(getattr(pool, "max_connections", 0) or 2**31)
        kwargs = getattr(pool, "connection_kwargs", {})
        wait = getattr(pool, "timeout", None) or kwargs.get("socket_timeout", _DEFAULT_WAIT)
        self.wait_timeout = float(wait or _NO_TIMEOUT_WAIT)

    def checkout(self, write: bool) -> Wire:
        try:
            wire = self.idle.pop()
        except IndexError:
            return self._borrow()
        if write and _stale(wire.conn):
            # Before a write that must not be sent twice, make sure an idle connection was
            # not closed under us: afterwards, a failure would be reported as ambiguous.
            self.discard(wire)
            return self._borrow()
        return wire

    def checkin(self, wire: Wire) -> None:
        if self.closed:  # closed while this call was in flight: hand it back, not to idle
            self.pool.release(wire.conn)
            self._returned()
            return
        self.idle.append(wire)
        # Lock-free unless someone waits. A borrower counts itself in `waiters` (under the
        # lock) before it looks at `idle`, so it either sees this wire or gets the notify.
        if self.waiters:
            with self.cond:
                self.cond.notify()

    def discard(self, wire: Wire | None) -> None:
        """Close `wire` and every idle connection, handing them back to the pool."""
        wires = [] if wire is None else [wire]
        while True:
            try:
                wires.append(self.idle.pop())
            except IndexError:
                break
        for w in wires:
            w.conn.disconnect()
            self.pool.release(w.conn)
        with self.cond:
            self.borrowed -= len(wires)
            self.cond.notify_all()

    def _borrow(self) -> Wire:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            with self.cond:
                self.waiters += 1
                try:
                    while not self.idle and self.borrowed >= self.limit:
                        self._wait(deadline)
                    if self.idle:
                        return self.idle.pop()
                    self.borrowed += 1
                finally:
                    self.waiters -= 1
            try:
                return Wire(self.pool.get_connection())  # connects and authenticates
            except MaxConnectionsError as exc:
                # The pool is shared and others hold the rest: wait for one of ours.
                with self.cond:
                    self.borrowed -= 1
                    if self.borrowed == 0:
                        raise NotSent(False) from exc
                    self.waiters += 1
                    try:
                        if not self.idle:
                            self._wait(deadline)
                    finally:
                        self.waiters -= 1
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._returned()
                # Resend once after a plain connection error (a server restarting), not
                # after a timeout or a refused login: no storms, no doubled waits.
                raise NotSent(type(exc) is RedisConnectionError) from exc
            except BaseException:
                self._returned()
                raise

    def _wait(self, deadline: float) -> None:
        """Wait (holding `cond`, counted in `waiters`) for a connection to come back."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            cause = RedisConnectionError(
                f"no free connection within {self.wait_timeout:g} s: all {self.limit} "
                "connections of the pool are in use"
            )
            raise not_sent(cause, resend=False)
        self.cond.wait(remaining)

    def _returned(self) -> None:
        with self.cond:
            self.borrowed -= 1
            self.cond.notify()

    def forget_parent(self) -> None:
        self.idle = []
        self.borrowed = self.waiters = 0
        self.cond = threading.Condition(threading.Lock())
        give_pool_fresh_locks(self.pool)

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                wire = self.idle.pop()
            except IndexError:
                return
            self.pool.release(wire.conn)
            self._returned()


class SyncDriver:
    """Drives operations over a `redis.Redis` (including Sentinel-managed clients) or a
    `redis.cluster.RedisCluster`."""

    __slots__ = ("__weakref__", "_client", "_closed", "_main", "_nodes", "_router", "_spin_us")

    def __init__(self, client: redis.Redis | RedisCluster, *, busy_poll_us: int = 0) -> None:
        self._client: Any = client
        self._spin_us = busy_poll_us
        self._closed = False
        self._nodes: dict[str, _Node] = {}
        self._router: Router
        if isinstance(client, RedisCluster):
            self._router = ClusterRouter(client)
            self._main: _Node | None = None
        else:
            self._router = ONE_SERVER
            self._main = _Node(client.connection_pool)
        _drivers.add(self)

    def run(self, op: Operation[R]) -> R:
        """Run an operation, blocking."""
        return run_sync(op, self.round_trip)

    def call(self, command: Command, *, write: bool = False) -> Any:
        """One command, one reply (get / set / delete). A write's lost reply comes back as
        a `ReplyLost` instance in place of the reply, like an error reply."""
        try:
            return self.round_trip(RoundTrip((command,), not write))[0]
        except ReplyLost as lost:
            return lost

    def round_trip(self, step: RoundTrip) -> list[Any]:
        """One round trip through the round-trip policy (a fast path when nothing goes wrong);
        `background` ones go to the cleanup thread."""
        if step.background:
            # After a timeout the server may not answer for a while: the caller does not
            # wait for the cleanup.
            _janitor.submit(self, step)
            return [None] * len(step.commands)
        main = self._main
        if main is None:
            return run_sync(round_trip(step, self._router), self._perform)
        # Fast path: the policy's first action on one server is always this exchange,
        # and when it brings no error reply the policy returns its replies unchanged.
        try:
            replies, errors = self._exchange(main, step.commands, not step.retry_safe)
        except BaseException as exc:
            return run_sync(answered(round_trip(step, self._router), None, exc), self._perform)
        if not errors:
            return replies
        return run_sync(answered(round_trip(step, self._router), replies, None), self._perform)

    def _perform(self, action: Action) -> Any:
        if type(action) is Exchange:
            return self._exchange(self._node(action.node), action.commands, action.write)[0]
        if type(action) is Reconnect:
            self._node(action.node).discard(None)  # the pool reconnects (to the new primary)
        elif type(action) is SlotMoved:
            move_slot(self._client, action.error)
        elif type(action) is RefreshSlots:
            refresh_slots(self._client)
        return None

    def _exchange(
        self, node: _Node, commands: Sequence[Command], write: bool
    ) -> tuple[list[Any], int]:
        if self._closed:
            raise not_sent(StorageClosedError("this storage was closed"), resend=False)
        wire = node.checkout(write)
        try:
            replies = wire.exchange(commands, self._spin_us)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            node.discard(wire)
            if not wire.sent:
                raise NotSent(type(exc) is RedisConnectionError) from exc
            raise
        except BaseException:
            node.discard(wire)  # interrupted mid-exchange: its replies are unread
            raise
        errors = wire.errors
        node.checkin(wire)
        return replies, errors

    def _node(self, node: Any) -> _Node:
        if node is None:
            assert self._main is not None
            return self._main
        state = self._nodes.get(node.name)
        if state is None:
            pool = self._client.get_redis_connection(node).connection_pool
            state = self._nodes.setdefault(node.name, _Node(pool))
        return state

    def _forget_parent(self) -> None:
        if self._main is not None:
            self._main.forget_parent()
        else:
            give_cluster_fresh_locks(self._client)
        for node in self._nodes.values():
            node.forget_parent()

    def close(self) -> None:
        """Hand every borrowed connection back to its pool; later calls raise
        `StorageClosedError`."""
        self._closed = True
        for node in (self._main, *self._nodes.values()):
            if node is not None:
                node.close()
