"""Runs operations (see `operations`) on asyncio over ONE auto-pipelined connection per
server (per node on a cluster).

Every task that shares an adapter writes its commands onto the same connection: commands
queued during one event-loop iteration go out in a single write, and the `Multiplexer`
(compiled when available) hands each reply batch to its waiter in order. No task holds a
socket of its own, so hundreds of concurrent calls cost one connection and a few large
writes instead of a pool of sockets each doing one round trip.

The connection is set up by redis-py (auth, TLS, db selection, client name, Sentinel
discovery): the adapter borrows one connection from the client's pool, then takes over
its transport with its own protocol. What to do when an exchange does not simply succeed
is the round-trip policy's call (`round_trip`); this module only moves bytes.

Deadlines: a channel honours its connection's `socket_timeout` the way a socket does.
When something is pending and no byte has arrived for that long, the channel is dropped:
every waiter gets redis-py's `TimeoutError` (a write: outcome unknown) and the next call
opens a new connection. One timer per channel, not per call.

Cancellation never desynchronises the connection: a cancelled waiter's replies are still
read (and dropped). An operation cancelled mid-flight gets the CancelledError thrown in;
`update` then queues its lock release on the same connection without waiting for it (a
`background` round trip), so the commit has run (or been refused) by the time the lock
is released, and the cancelled caller is not held up by a slow or frozen server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import StorageClosedError, StorageError
from bantai.redis._compat import (
    acquire_node_connection,
    async_transport,
    move_slot_async,
    refresh_slots_async,
    release_node_connection,
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
from bantai.redis.speedups import Multiplexer, pack_commands
from bantai.steps import Operation, run_async

R = TypeVar("R")


class _MuxProtocol(asyncio.Protocol):
    """Feeds every received byte to the multiplexer; fails all waiters on loss."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        channel.progress_at = channel.loop.time()
        try:
            channel.mux.feed(data)
        except Exception as exc:  # a protocol error: the stream cannot be trusted
            channel.broken(RedisConnectionError(f"protocol error: {exc!r}"))
            return
        if channel.detached and not channel.mux.pending:
            channel.close()

    def eof_received(self) -> bool:
        self.channel.broken(RedisConnectionError("Connection closed by server."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.broken(RedisConnectionError(f"Connection lost: {exc or 'closed'}"))


class Channel:
    """One multiplexed connection, bound to the event loop that opened it."""

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.mux = Multiplexer()
        self.closed: BaseException | None = None
        # Detached: takes no new sends and closes once its pending replies are in.
        self.detached = False
        self.done: asyncio.Future[None] = loop.create_future()  # resolved once closed
        timeout = getattr(conn, "socket_timeout", None)
        self.timeout: float | None = float(timeout) if timeout else None
        # When the channel last made progress (a byte arrived, or it went from idle to
        # busy): the deadline runs from there, like a socket timeout.
        self.progress_at = loop.time()
        self.queued = 0  # sends so far
        self.flushed = 0  # sends handed to the transport (the rest never left)
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport = async_transport(conn)
        # Take the socket over from redis-py's stream reader (nothing is pending on a
        # freshly handed-out connection).
        self.transport.set_protocol(_MuxProtocol(self))

    def send(self, commands: Sequence[Command]) -> asyncio.Future[tuple[list[Any], int]]:
        """Queue `commands` (they leave with everything queued in this loop iteration) and
        return the future of their replies. A closed channel raises `NotSent`."""
        if self.closed is not None:
            raise not_sent(RedisConnectionError(f"connection closed: {self.closed}"), resend=True)
        # Pack first: a command that cannot be packed must not leave a waiter behind in
        # the multiplexer, or every later reply would go to the wrong caller.
        data = pack_commands(commands)
        mux = self.mux
        if not mux.pending:
            self.progress_at = self.loop.time()
        waiter: asyncio.Future[tuple[list[Any], int]] = self.loop.create_future()
        mux.expect(waiter, len(commands))
        self._out.append(data)
        self.queued += 1
        if not self._flush_scheduled:
            # Auto-pipelining: everything queued in this loop iteration goes in one write.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None and self.timeout is not None:
            self._watchdog = self.loop.call_at(self.progress_at + self.timeout, self._check)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.closed is None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self.flushed = self.queued
            self.transport.write(data)

    def _check(self) -> None:
        """The deadline timer: drop the channel when something has been pending without a
        byte arriving for `timeout` seconds; otherwise look again when it could expire."""
        self._watchdog = None
        if self.closed is not None or not self.mux.pending:
            return
        assert self.timeout is not None
        expires = self.progress_at + self.timeout
        if self.loop.time() >= expires - 0.001:
            self.broken(
                RedisTimeoutError(f"Timeout reading from {_where(self.conn)} ({self.timeout:g} s)")
            )
        else:
            self._watchdog = self.loop.call_at(expires, self._check)

    def sent(self, sequence: int) -> bool:
        """Whether the send numbered `sequence` (`queued` before it) reached the transport."""
        return sequence < self.flushed

    def detach(self) -> None:
        """Stop using this connection without failing what is in flight on it (their
        replies still arrive); it closes itself once nothing is pending."""
        self.detached = True
        if not self.mux.pending:
            self.close()

    def broken(self, exc: BaseException) -> None:
        """The connection is lost or untrustworthy: close it and fail every waiter with `exc`."""
        if self.closed is None:
            self.closed = exc
            self.transport.close()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            if not self.done.done():
                self.done.set_result(None)
        self.mux.fail(exc)

    def close(self) -> None:
        """Close the channel (pending waiters get a connection error)."""
        self.broken(RedisConnectionError("adapter closed"))


def _where(conn: Any) -> str:
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody waits for a background reply: mark it seen


class _Slot:
    """The channel to one server or cluster node, and how to (re)open it."""

    __slots__ = ("acquire", "channel", "open_timeout", "opening", "release")

    def __init__(
        self,
        acquire: Callable[[], Awaitable[Any]],
        release: Callable[[Any], Awaitable[None]],
        connection_kwargs: dict[str, Any],
    ) -> None:
        self.acquire = acquire
        self.release = release
        self.channel: Channel | None = None
        self.opening: asyncio.Task[Channel] | None = None
        # How long a caller waits for the connection to open: one connect plus one
        # handshake reply. redis-py may go on retrying the connect (a client built with
        # `Redis(...)` retries it 10 times by default); the caller does not wait for that.
        connect = connection_kwargs.get("socket_connect_timeout")
        reply = connection_kwargs.get("socket_timeout")
        self.open_timeout = (connect or reply or 0) + (reply or 0) or None


class AsyncDriver:
    """Drives operations for an asyncio adapter over a `redis.asyncio.Redis` (including
    Sentinel-managed clients) or a `redis.asyncio.cluster.RedisCluster`."""

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster) -> None:
        self._client: Any = client
        self._closed = False
        self._slots: dict[str, _Slot] = {}
        self._cleanups: set[asyncio.Task[Any]] = set()  # referenced until done
        self._router: Router
        if isinstance(client, AsyncRedisCluster):
            self._router = ClusterRouter(client)
            self._main: _Slot | None = None
            self._ready = False
        else:
            pool: Any = client.connection_pool
            self._router = ONE_SERVER
            self._main = _Slot(pool.get_connection, _release_to(pool), pool.connection_kwargs)
            self._ready = True

    async def run(self, op: Operation[R]) -> R:
        """Run an operation on this event loop."""
        return await run_async(op, self.round_trip)

    async def call(self, command: Command, *, write: bool = False) -> Any:
        """One command, one reply (get / set / delete). A write's lost reply comes back as
        a `ReplyLost` instance in place of the reply, like an error reply."""
        try:
            return (await self.round_trip(RoundTrip((command,), not write)))[0]
        except ReplyLost as lost:
            return lost

    async def round_trip(self, step: RoundTrip) -> list[Any]:
        """One round trip through the round-trip policy (a fast path when nothing goes wrong);
        `background` ones run as tasks of their own."""
        if step.background:
            return self._in_background(step)
        main = self._main
        if main is None:
            if not self._ready:
                await self._client.initialize()
                self._ready = True
            return await run_async(round_trip(step, self._router), self._perform)
        # Fast path (see the sync driver): the policy only runs when this exchange failed
        # or brought an error reply. On an open channel of this loop, without a frame more.
        channel = main.channel
        try:
            if (
                channel is not None
                and channel.closed is None
                and channel.loop is asyncio.get_running_loop()
            ):
                sequence = channel.queued
                try:
                    replies, errors = await channel.send(step.commands)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    if not channel.sent(sequence):
                        raise NotSent(type(exc) is RedisConnectionError) from exc
                    raise
            else:
                replies, errors = await self._exchange(main, step.commands)
        except BaseException as exc:
            policy = answered(round_trip(step, self._router), None, exc)
            return await run_async(policy, self._perform)
        if not errors:
            return replies
        policy = answered(round_trip(step, self._router), replies, None)
        return await run_async(policy, self._perform)

    def _in_background(self, step: RoundTrip) -> list[Any]:
        """A cleanup nobody waits for, run by a task of its own through the whole policy
        (a NOSCRIPT on a release is recovered like any other). Its commands go out on the
        same channel after everything the operation sent before, so a release always
        follows the commit it cleans up after."""
        if not self._closed:
            self._in_task(self.round_trip(dataclasses.replace(step, background=False)))
        return [None] * len(step.commands)

    def _in_task(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` without anyone waiting for it (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        task.add_done_callback(_retrieve)

    async def _perform(self, action: Action) -> Any:
        if type(action) is Exchange:
            return (await self._exchange(self._slot(action.node), action.commands))[0]
        if type(action) is Reconnect:
            # The server became a replica (READONLY): new sends go to a new connection (to
            # the new primary); what is in flight on the old one still gets its replies —
            # breaking it would turn other tasks' refused writes into "outcome unknown".
            slot = self._slot(action.node)
            channel, slot.channel = slot.channel, None
            if channel is not None and channel.closed is None:
                channel.detach()
                self._in_task(_retire_when_done(slot, channel))
        elif type(action) is SlotMoved:
            await move_slot_async(self._client, action.error)
        elif type(action) is RefreshSlots:
            await refresh_slots_async(self._client)
        return None

    async def _exchange(self, slot: _Slot, commands: Sequence[Command]) -> tuple[list[Any], int]:
        channel = slot.channel
        if channel is None or channel.closed is not None:
            channel = await self._open(slot)
        elif channel.loop is not asyncio.get_running_loop():
            raise _other_loop()
        sequence = channel.queued
        try:
            return await channel.send(commands)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not channel.sent(sequence):
                raise NotSent(type(exc) is RedisConnectionError) from exc
            raise

    async def _open(self, slot: _Slot) -> Channel:
        """The slot's channel, opened by one task that the callers share: a caller that is
        cancelled while waiting does not cancel the opening for the others."""
        if self._closed:
            raise not_sent(StorageClosedError("this storage was closed"), resend=False)
        loop = asyncio.get_running_loop()
        if slot.channel is not None and slot.channel.loop is not loop:
            raise _other_loop()
        opening = slot.opening
        if opening is None or opening.get_loop() is not loop:
            stale, slot.channel = slot.channel, None
            opening = slot.opening = loop.create_task(self._connect(slot, stale))
            opening.add_done_callback(_retrieve)
        try:
            return await asyncio.wait_for(asyncio.shield(opening), slot.open_timeout)
        except asyncio.TimeoutError:
            cause = RedisTimeoutError(f"Timeout connecting ({slot.open_timeout:g} s)")
            raise not_sent(cause, resend=False) from cause
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise NotSent(type(exc) is RedisConnectionError) from exc

    async def _connect(self, slot: _Slot, stale: Channel | None) -> Channel:
        try:
            if stale is not None:
                with contextlib.suppress(Exception):  # it is broken already; open anew
                    await _retire(slot, stale)
            conn = await slot.acquire()
            if self._closed:  # closed while we were connecting
                await slot.release(conn)
                raise StorageClosedError("this storage was closed")
            channel = Channel(conn, asyncio.get_running_loop())
            slot.channel = channel
            return channel
        finally:
            slot.opening = None

    def _slot(self, node: Any) -> _Slot:
        if node is None:
            assert self._main is not None
            return self._main
        slot = self._slots.get(node.name)
        if slot is None:

            async def acquire() -> Any:
                conn = acquire_node_connection(node)
                try:
                    await conn.connect()
                except BaseException:
                    # or the node's pool fills up with dead connections
                    release_node_connection(node, conn)
                    raise
                return conn

            async def release(conn: Any) -> None:
                release_node_connection(node, conn)

            kwargs = getattr(node, "connection_kwargs", {})
            slot = self._slots.setdefault(node.name, _Slot(acquire, release, kwargs))
        return slot

    async def close(self) -> None:
        """Close every channel; later calls raise `StorageClosedError`."""
        self._closed = True
        for slot in (self._main, *self._slots.values()):
            if slot is None:
                continue
            channel, slot.channel = slot.channel, None
            if channel is not None:
                await _retire(slot, channel)


def _release_to(pool: Any) -> Callable[[Any], Awaitable[None]]:
    async def release(conn: Any) -> None:
        await pool.release(conn)

    return release


def _other_loop() -> StorageError:
    return StorageError(
        "this asyncio storage is bound to the event loop it was first used on; "
        "create one storage per event loop"
    )


async def _retire_when_done(slot: _Slot, channel: Channel) -> None:
    await channel.done
    await _retire(slot, channel)


async def _retire(slot: _Slot, channel: Channel) -> None:
    """Hand a closed or broken channel's connection back to redis-py's pool."""
    channel.close()
    try:
        # nowait: redis-py's stream protocol no longer owns the transport, so its
        # "closed" future would never resolve.
        await channel.conn.disconnect(nowait=True)
    finally:
        await slot.release(channel.conn)
