"""Runs operations (see `operations`) on asyncio over ONE auto-pipelined connection.

Every task that shares an adapter writes its commands onto the same connection: commands
queued during one event-loop iteration go out in a single write, and the `Multiplexer`
(compiled when available) hands each reply batch to its waiter in order. No task holds a
socket of its own, so hundreds of concurrent calls cost one connection and a few large
writes instead of a pool of sockets each doing one round trip.

The connection is set up by redis-py (auth, TLS, db selection, client name, Sentinel
discovery): the adapter borrows one connection from the client's pool, then takes over
its transport with its own protocol. If the connection drops, every pending waiter gets
redis-py's `ConnectionError` and the next call opens a new one.

Cancellation never desynchronises the connection: a cancelled waiter's replies are still
read (and dropped). An operation cancelled mid-flight gets the CancelledError thrown in,
so `update` releases its lock; because the release goes out on the same connection after
the commit, the commit has run (or been refused) by the time the lock is released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import StorageError
from bantai.redis.operations import (
    Command,
    Operation,
    ReplyLost,
    RoundTrip,
    merge_resend,
    noscript_resend,
)
from bantai.redis.speedups import Multiplexer, pack_commands
from bantai.storage.steps import run_async

R = TypeVar("R")


class _MuxProtocol(asyncio.Protocol):
    """Feeds every received byte to the multiplexer; fails all waiters on loss."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        try:
            self.channel.mux.feed(data)
        except Exception as exc:  # a protocol error: the stream cannot be trusted
            self.channel.broken(RedisConnectionError(f"protocol error: {exc!r}"))

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
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport = conn._writer.transport
        # Take the socket over from redis-py's stream reader (nothing is pending on a
        # freshly handed-out connection).
        self.transport.set_protocol(_MuxProtocol(self))

    def send(self, commands: Sequence[Command]) -> asyncio.Future[tuple[list[Any], int]]:
        if self.closed is not None:
            raise RedisConnectionError(f"connection closed: {self.closed}")
        waiter: asyncio.Future[tuple[list[Any], int]] = self.loop.create_future()
        self.mux.expect(waiter, len(commands))
        self._out.append(pack_commands(commands))
        if not self._flush_scheduled:
            # Auto-pipelining: everything queued in this loop iteration goes in one write.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.closed is None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self.transport.write(data)

    def broken(self, exc: BaseException) -> None:
        if self.closed is None:
            self.closed = exc
            self.transport.close()
        self.mux.fail(exc)

    def close(self) -> None:
        self.broken(RedisConnectionError("adapter closed"))


class AsyncDriver:
    """Drives operations for an asyncio adapter over one `Channel` per adapter (or per
    cluster node). `acquire` / `release` borrow and return the redis-py connection the
    channel is built on; by default the client's pool."""

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        acquire: Callable[[], Awaitable[Any]] | None = None,
        release: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        if client is not None:
            pool: Any = client.connection_pool
            acquire, release = pool.get_connection, pool.release
        assert acquire is not None and release is not None
        self._acquire = acquire
        self._release = release
        self._channel: Channel | None = None
        self._opening: asyncio.Future[Channel] | None = None

    async def run(self, op: Operation[R]) -> R:
        return await run_async(op, self.round_trip)

    async def call(self, command: Command) -> Any:
        """One retry-safe command, one reply (get / set / delete)."""
        return (await self.round_trip(RoundTrip((command,))))[0]

    async def round_trip(self, step: RoundTrip) -> list[Any]:
        retried = False
        while True:
            channel = await self._get_channel()
            try:
                replies, errors = await channel.send(step.commands)
                if errors:
                    replies = await self._recover(channel, step.commands, replies)
                return replies
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if channel.closed is None:
                    channel.broken(exc)
                if step.retry_safe:
                    if not retried and type(exc) is RedisConnectionError:
                        retried = True
                        continue
                    raise
                raise ReplyLost() from exc

    async def _recover(
        self, channel: Channel, commands: Sequence[Command], replies: list[Any]
    ) -> list[Any]:
        resend = noscript_resend(commands, replies)
        if resend is not None:
            failed, again = resend
            resent, _ = await channel.send(again)
            replies = merge_resend(replies, failed, resent)
        if any(type(r) is ReadOnlyError for r in replies):
            channel.broken(RedisConnectionError("the server became a replica (READONLY)"))
        return replies

    async def _get_channel(self) -> Channel:
        channel = self._channel
        loop = asyncio.get_running_loop()
        if channel is not None and channel.closed is not None:
            self._channel = None
            await self._retire(channel)
            channel = None
        if channel is not None:
            if channel.loop is not loop:
                raise StorageError(
                    "this asyncio storage is bound to the event loop it was first used on; "
                    "create one storage per event loop"
                )
            return channel
        if self._opening is not None and self._opening.get_loop() is loop:
            return await asyncio.shield(self._opening)
        self._opening = loop.create_future()
        opening = self._opening
        try:
            conn = await self._acquire()
            channel = Channel(conn, loop)
        except BaseException as exc:
            opening.set_exception(exc)
            opening.exception()  # retrieved: waiters re-raise it, nobody else must
            self._opening = None
            raise
        if self._channel is not None and self._channel.loop is not loop:
            channel.close()
            raise StorageError(
                "this asyncio storage is bound to the event loop it was first used on; "
                "create one storage per event loop"
            )
        self._channel = channel
        self._opening = None
        opening.set_result(channel)
        return channel

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await self._retire(channel)

    async def _retire(self, channel: Channel) -> None:
        """Hand a closed or broken channel's connection back to redis-py's pool."""
        channel.close()
        try:
            # nowait: redis-py's stream protocol no longer owns the transport, so its
            # "closed" future would never resolve.
            await channel.conn.disconnect(nowait=True)
        finally:
            await self._release(channel.conn)
