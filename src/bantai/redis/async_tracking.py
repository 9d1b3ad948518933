"""The invalidation stream of a local cache, asyncio flavour (`tracking.py` explains the
stream and has what both flavours share).

The connection comes from redis-py (auth, TLS, db, Sentinel), then its transport is taken
over by a protocol that applies each message the moment the event loop reads it. A
lookup runs without yielding to the loop, so it first asks the kernel whether bytes are
waiting on the stream's socket (one ``poll()`` with a zero timeout); if they are, it
reads from Redis instead of the cache, and the loop applies the messages while that read
is in flight (the fill it starts is poisoned if its key was among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bantai.errors import StorageClosedError
from bantai.redis._compat import async_transport
from bantai.redis.async_driver import Channel
from bantai.redis.local_cache import LocalCache
from bantai.redis.round_trip import NotSent
from bantai.redis.speedups import pack_commands
from bantai.redis.tracking import (
    Attempts,
    NodeStreams,
    TrackingUnavailable,
    apply_message,
    connection_name,
    describes,
    fill_setup,
    readiness,
    setup_commands,
)

log = logging.getLogger("bantai")


class _StreamProtocol(asyncio.Protocol):
    """Replies to the set-up commands first (to `expect`ed futures), then messages."""

    def __init__(self, stream: AsyncInvalidationStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()
        self.waiting: list[tuple[int, list[Any], asyncio.Future[list[Any]]]] = []

    def expect(self, count: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((count, [], future))
        return future

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            message = reader.gets()
            if message is False:
                return
            if self.waiting:
                count, replies, future = self.waiting[0]
                replies.append(message)
                if len(replies) == count:
                    self.waiting.pop(0)
                    if not future.done():
                        future.set_result(replies)
            else:
                apply_message(self.stream.cache, message)

    def eof_received(self) -> bool:
        return False  # close: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        for _, _, future in self.waiting:
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc or 'closed'}"))
        self.waiting.clear()
        self.stream.lost(self, f"the invalidation connection was lost: {exc or 'closed'}")


class AsyncInvalidationStream:
    """The asyncio stream: connected lazily by the first fill, bound to its event loop.
    Its fill connection is a `Channel` of the asyncio driver: the reads of concurrent
    fills are pipelined on it."""

    def __init__(self, pool: Any, cache: LocalCache, broadcast_prefix: bytes | None) -> None:
        self._pool = pool
        self.name = connection_name()  # see tracking.InvalidationStream
        self.cache = cache
        self._broadcast_prefix = broadcast_prefix
        self._protocol: _StreamProtocol | None = None
        self._conn: Any = None
        self._transport: asyncio.Transport | None = None
        self._fill: Channel | None = None
        self._fill_fd = -1
        self._poll: Any = None
        self._opening: asyncio.Future[int] | None = None
        self._shut = False  # closed with the storage: for good
        self._attempts = Attempts()
        self.client_id: int | None = None

    def caught_up(self) -> bool:
        """True when nothing is waiting to be read, and the fill connection stands: the
        cache may be used as it is. Otherwise the caller reads from Redis, and the event
        loop applies the messages (or notices the closed connection) meanwhile."""
        poller = self._poll
        if poller is None:
            return True
        fill = self._fill
        if fill is not None and fill.closed is not None:
            # Closed by the server (idle `timeout`, CLIENT KILL): Redis forgot every key
            # tracked for us on it.
            self.reset("the fill connection was closed")
            return True  # nothing is cached any more
        ready = poller.poll(0)
        if not ready:
            return True
        # Only the fill connection has bytes, and they are replies somebody awaits: the
        # event loop hands them over; nothing to apply to the cache.
        return bool(
            fill is not None and fill.mux.pending and all(fd == self._fill_fd for fd, _ in ready)
        )

    async def ensure(self) -> int:
        """The stream's client id, connecting first if needed (one connect shared by the
        tasks that need it; raises `TrackingUnavailable`)."""
        if self.client_id is not None:
            return self.client_id
        if self._shut:
            raise StorageClosedError("this storage was closed")
        opening = self._opening
        if opening is None:
            self._attempts.check()
            opening = self._opening = asyncio.ensure_future(self._connect())
            opening.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening = None

    async def _connect(self) -> int:
        pool = self._pool
        conn = pool.connection_class(**pool.connection_kwargs)
        fill_conn: Any = None
        try:
            await conn.connect()
            transport = async_transport(conn)
            protocol = _StreamProtocol(self)
            transport.set_protocol(protocol)
            transport.write(pack_commands([(b"CLIENT", b"ID")]))
            (client_id,) = await protocol.expect(1)
            commands = setup_commands(client_id, self._broadcast_prefix, self.name)
            reply = protocol.expect(len(commands))
            transport.write(pack_commands(commands))
            for answer in await reply:
                if isinstance(answer, Exception):
                    raise answer
            fill: Channel | None = None
            if self._broadcast_prefix is None:
                fill_conn = pool.connection_class(**pool.connection_kwargs)
                await fill_conn.connect()
                fill = Channel(fill_conn, asyncio.get_running_loop())
                (whose, tracking), _ = await fill.send(fill_setup(client_id, self.name))
                if isinstance(tracking, Exception):
                    raise tracking
                if not describes(whose, self.name):
                    raise ConnectionError("the fill connection reached another server")
        except BaseException as exc:
            await _disconnect(conn)
            if fill_conn is not None:
                await _disconnect(fill_conn)
            if not isinstance(exc, Exception):
                raise  # cancelled: nothing to report
            raise self._attempts.failed(exc) from exc
        if self._shut:  # the storage was closed while this connected
            transport.close()
            if fill is not None:
                fill.close()
            raise StorageClosedError("this storage was closed")
        self._attempts.succeeded()
        fds = [transport.get_extra_info("socket").fileno()]
        if fill is not None:
            self._fill_fd = fill.transport.get_extra_info("socket").fileno()
            fds.append(self._fill_fd)
        self._poll = readiness(*fds)
        self._conn, self._transport, self._protocol, self._fill = conn, transport, protocol, fill
        self.client_id = int(client_id)
        return self.client_id

    async def fill(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send a fill's reads over the fill connection (pipelined with other tasks'),
        one reply each; `TrackingUnavailable` when it fails on a lost connection."""
        fill = self._fill
        if fill is None:
            raise TrackingUnavailable("the stream is not connected")
        try:
            replies, _ = await fill.send(commands)
        except (RedisConnectionError, NotSent) as exc:
            if self._fill is fill:
                self.reset(f"the fill connection failed: {exc!r}")
            raise TrackingUnavailable(str(exc)) from exc
        except BaseException as exc:  # a timeout: the channel is broken, do not wait twice
            if self._fill is fill and fill.closed is not None:
                self.reset(f"the fill connection failed: {exc!r}")
            raise
        return replies

    def lost(self, protocol: _StreamProtocol, why: str) -> None:
        """The connection of `protocol` is gone: messages may have been lost."""
        if protocol is self._protocol:
            self._forget(why)

    def reset(self, why: str) -> None:
        """Start over (a fill learned the stream cannot be trusted)."""
        transport, fill = self._transport, self._fill
        self._forget(why)
        if transport is not None:
            transport.close()
        if fill is not None:
            fill.close()

    def _forget(self, why: str) -> None:
        log.debug("local cache dropped: %s", why)
        self._conn = self._transport = self._protocol = self._poll = self._fill = None
        self._fill_fd = -1
        self.client_id = None
        self.cache.invalidate_all()

    def close(self) -> None:
        """Close the connections (the storage is closing): for good."""
        self._shut = True
        self.reset("the storage was closed")


class AsyncClusterStreams(NodeStreams[AsyncInvalidationStream]):
    """The asyncio streams of a cluster (see `tracking.NodeStreams`)."""

    def __init__(self, cache: LocalCache, broadcast_prefix: bytes | None) -> None:
        # An asyncio `ClusterNode` has the connection class and arguments a stream needs.
        super().__init__(lambda node: AsyncInvalidationStream(node, cache, broadcast_prefix))

    def caught_up(self) -> bool:
        """True when no node's stream has a message waiting."""
        return all(stream.caught_up() for stream in self.streams.values())


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a connect nobody waits for any more: its failure is seen


async def _disconnect(conn: Any) -> None:
    with contextlib.suppress(Exception):  # broken already: nothing more to release
        await conn.disconnect(nowait=True)


__all__ = ["AsyncClusterStreams", "AsyncInvalidationStream"]
