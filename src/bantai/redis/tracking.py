"""The invalidation stream of a local cache, blocking flavour: one dedicated connection
to the server that receives Redis client-tracking invalidation messages.

Reads that fill the cache go over a second connection of the stream's own, the *fill
connection*, set up once with ``CLIENT TRACKING ON REDIRECT <stream id> OPTIN`` (after
checking with ``CLIENT LIST ID`` that the id is the stream's connection on that server),
each read with ``CLIENT CACHING YES`` in front. The server then sends the messages for
every key read there to the stream (``REDIRECT`` works with RESP2, where the stream
subscribes to ``__redis__:invalidate``, and with RESP3, where the messages are push
replies). Redis files a tracked key under the connection that read it and forgets it
when that connection closes, silently: so the reads must not go over pool connections,
which the pool or the server (``timeout``, ``CLIENT KILL``) may close at any time, but
over one whose closing is seen — a lookup notices it like the stream's and drops
everything. With `broadcast`, the stream itself asks for every key under the prefix
(``BCAST PREFIX``), the reads need nothing in front and go over the driver's
connections.

No thread reads it. Messages wait in the socket until the next cache lookup, which first
asks the kernel whether any arrived (one ``poll()`` with a zero timeout, ~0.3 µs) and
applies them before it looks at the cache: a lookup never serves an entry whose
invalidation had already reached this process. When the connection breaks (the server
restarted, ``CLIENT KILL``, its output buffer limit), messages may have been lost: the
whole cache is dropped, and the next fill opens a new connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bantai.errors import StorageClosedError
from bantai.redis._compat import sync_socket
from bantai.redis.local_cache import LocalCache
from bantai.redis.speedups import Wire, pack_commands

log = logging.getLogger("bantai")


class _Stream(Protocol):
    def reset(self, why: str) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=_Stream)
CHANNEL = b"__redis__:invalidate"
# At most this many fill connections per stream (blocking adapter): concurrent misses
# beyond them wait for one.
FILL_LANES = 4
_READ_SIZE = 65536


def invalidated_keys(message: Any) -> tuple[bool, list[bytes] | None]:
    """(is an invalidation, its keys) of a message on the stream: a RESP2 pub/sub message
    on the invalidation channel or a RESP3 ``invalidate`` push. Keys None: everything
    (FLUSHDB / FLUSHALL)."""
    if isinstance(message, list) and message:
        kind = message[0]
        if kind == b"message" and len(message) == 3 and message[1] == CHANNEL:
            return True, message[2]
        if kind == b"invalidate" and len(message) == 2:
            return True, message[1]
    return False, None


def apply_message(cache: LocalCache, message: Any) -> None:
    """Apply one message of the stream to the cache (others are ignored)."""
    is_invalidation, keys = invalidated_keys(message)
    if not is_invalidation:
        return
    if keys is None:
        cache.invalidate_all()
    else:
        cache.invalidate(keys)


def setup_commands(
    client_id: int | None, broadcast_prefix: bytes | None, name: bytes | None = None
) -> list[tuple[Any, ...]]:
    """What the stream's connection sends once connected (after ``CLIENT ID``)."""
    commands: list[tuple[Any, ...]] = []
    if name is not None:
        commands.append((b"CLIENT", b"SETNAME", name))
    if broadcast_prefix is not None:
        commands.append(
            (b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", client_id, b"BCAST", b"PREFIX",
             broadcast_prefix)
        )  # fmt: skip
    commands.append((b"SUBSCRIBE", CHANNEL))
    return commands


class Attempts:
    """When a stream may try to connect again, and whether its failure was reported:
    after a failure, no attempt for 1 s (the server unreachable: it may be back in a
    moment) or 30 s (a refusal — an ACL, an old server — will not change soon); one
    warning until the stream works again."""

    __slots__ = ("retry_at", "warned")

    def __init__(self) -> None:
        self.retry_at = 0.0
        self.warned = False

    def check(self) -> None:
        """Raise `TrackingUnavailable` while a failed attempt is too recent."""
        if time.monotonic() < self.retry_at:
            raise TrackingUnavailable("tracking failed a moment ago; not retried yet")

    def failed(self, error: BaseException) -> TrackingUnavailable:
        """Record a failed attempt; the error to raise (from `error`)."""
        unreachable = isinstance(error, (OSError, RedisConnectionError))
        self.retry_at = time.monotonic() + (1.0 if unreachable else 30.0)
        if not self.warned:
            self.warned = True
            log.warning("local cache unavailable, reading from Redis: %s", error)
        return TrackingUnavailable(str(error))

    def succeeded(self) -> None:
        """The stream works (again)."""
        self.warned = False


def connection_name() -> bytes:
    """A name no other connection has, for a stream whose fills verify it."""
    return b"bantai-cache-" + os.urandom(8).hex().encode()


def readiness(*socks: Any) -> Any:
    """An object whose `poll(0)` lists `(fd, events)` for each of `socks` with bytes to
    read: a `select.poll` (one syscall), or where there is none (Windows) the same through
    `select.select`."""
    if hasattr(select, "poll"):
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLIN)
        return poller
    return _SelectReadiness(socks)


class _SelectReadiness:
    __slots__ = ("_socks",)

    def __init__(self, socks: tuple[Any, ...]) -> None:
        self._socks = socks

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        ready = select.select(self._socks, (), (), timeout)[0]
        return [(sock if isinstance(sock, int) else sock.fileno(), 1) for sock in ready]


def fill_setup(client_id: int, name: bytes) -> list[tuple[Any, ...]]:
    """What the fill connection sends once connected: whose is `client_id` on this
    server (it must be the stream's connection, called `name`), then tracking on, towards
    the stream, for reads that opt in (each read follows a ``CLIENT CACHING YES``)."""
    return [
        (b"CLIENT", b"LIST", b"ID", client_id),
        (b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", client_id, b"OPTIN"),
    ]


def describes(client_list: Any, name: bytes) -> bool:
    """Whether a `CLIENT LIST ID` reply describes the connection called `name`."""
    if isinstance(client_list, str):
        client_list = client_list.encode()
    return isinstance(client_list, bytes) and b" name=" + name + b" " in client_list


class TrackingUnavailable(Exception):
    """The stream could not be opened (the server refused a command, or could not be
    reached); `__cause__` says why. The cache stays empty and reads go to Redis."""


class InvalidationStream:
    """The blocking stream: connected lazily by the first fill, read by lookups."""

    __slots__ = (
        "_attempts",
        "_broadcast_prefix",
        "_cache",
        "_conn",
        "_lane_fds",
        "_lanes",
        "_lock",
        "_poll",
        "_pool",
        "_reader",
        "_shut",
        "_sock",
        "_tls",
        "client_id",
        "name",
    )

    def __init__(
        self,
        pool: Any,
        cache: LocalCache,
        broadcast_prefix: bytes | None,
    ) -> None:
        self._pool = pool
        # A unique connection name, which the fill connection checks behind the id.
        self.name = connection_name()
        self._cache = cache
        # Per-key tracking: the fill connections ("lanes"), opened as concurrent misses
        # need them, up to FILL_LANES; each used by one fill at a time.
        self._lanes: tuple[_Lane, ...] = ()
        self._lane_fds: dict[int, _Lane] = {}
        self._shut = False  # closed with the storage: for good
        self._attempts = Attempts()
        self._broadcast_prefix = broadcast_prefix
        self._lock = threading.Lock()
        self._conn: Any = None
        self._sock: Any = None
        self._tls = False
        self._reader: Any = None
        self._poll: Any = None
        self.client_id: int | None = None  # None: not connected

    # --- the lookup side --------------------------------------------------------------------

    def catch_up(self) -> None:
        """Apply every message that has reached this process (call before a lookup)."""
        poller, sock = self._poll, self._sock
        if poller is None:
            return
        try:
            ready = poller.poll(0)
        except RuntimeError:  # another thread is in poll() on this object right now
            ready = [(-2, 0)]  # look at both under the lock
        # A fill connection that is idle, yet readable: the server closed it (idle
        # `timeout`, CLIENT KILL), and with it forgot every key it tracked for us. Idle
        # means: its lock is free (taken here, without waiting, so no fill starts while
        # we look).
        if ready and self._lanes:
            lane_fds = self._lane_fds
            for fd, _ in ready:
                for lane in self._lanes if fd == -2 else (lane_fds.get(fd),):
                    if lane is None or not lane.lock.acquire(blocking=False):
                        continue
                    try:
                        closed = _closed(lane.wire)
                    finally:
                        lane.lock.release()
                    if closed:
                        with self._lock:
                            if lane in self._lanes:
                                self._broken("the server closed a fill connection")
                        return
        # `locked()`: another thread may have read messages off the socket and not yet
        # applied them (the socket then looks empty): wait for it to finish.
        if ready or self._lock.locked() or (self._tls and sock.pending()):
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        reader = self._reader
        cache = self._cache
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                self._broken(f"the invalidation connection failed: {exc}")
                return
            if not data:
                self._broken("the server closed the invalidation connection")
                return
            reader.feed(data)
            while True:
                message = reader.gets()
                if message is False:
                    break
                apply_message(cache, message)

    def _broken(self, why: str) -> None:
        log.debug("local cache dropped: %s", why)
        self._close()
        self._cache.invalidate_all()

    # --- the fill side ----------------------------------------------------------------------

    def ensure(self) -> int:
        """The stream's client id, connecting first if needed (raises
        `TrackingUnavailable`)."""
        client_id = self.client_id
        if client_id is not None:
            return client_id
        with self._lock:
            if self._shut:
                raise StorageClosedError("this storage was closed")
            if self.client_id is None:
                self._attempts.check()
                self._connect()
            assert self.client_id is not None
            return self.client_id

    def _connect(self) -> None:
        pool = self._pool
        conn = pool.connection_class(**pool.connection_kwargs)
        fill: Wire | None = None
        try:
            conn.connect()
            sock = sync_socket(conn)
            reader = hiredis.Reader()
            client_id = self._call(sock, reader, [(b"CLIENT", b"ID")])[0]
            prefix = self._broadcast_prefix
            replies = self._call(sock, reader, setup_commands(client_id, prefix, self.name))
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            if prefix is None:
                fill = self._open_lane_wire(client_id)
        except Exception as exc:
            conn.disconnect()
            if fill is not None:
                fill.conn.disconnect()
            raise self._attempts.failed(exc) from exc
        self._attempts.succeeded()
        sock.setblocking(False)
        self._conn, self._sock, self._reader = conn, sock, reader
        self._lanes, self._lane_fds = (), {}
        self._poll = readiness(sock)
        if fill is not None:
            self._add_lane(fill)
        self._tls = isinstance(sock, ssl.SSLSocket)
        # Nothing to drop: when a stream breaks the cache is emptied and the epoch moves on
        # (poisoning fills in flight), and client ids are never reused, so a fill still
        # aiming at the old connection gets an error reply instead of tracking.
        self.client_id = int(client_id)

    @staticmethod
    def _call(sock: Any, reader: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Blocking request/replies during set-up (the socket has its connect timeout)."""
        sock.sendall(pack_commands(commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise ConnectionError("the server closed the connection")
                reader.feed(data)
            else:
                replies.append(reply)  # error replies come back as ReplyError instances
        return replies

    def _open_lane_wire(self, client_id: int) -> Wire:
        """A new fill connection, its tracking redirected to the stream (checked to be
        ours, on the same server)."""
        pool = self._pool
        fill = Wire(pool.connection_class(**pool.connection_kwargs))
        try:
            fill.conn.connect()
            whose, tracking = fill.exchange(fill_setup(client_id, self.name))
            if isinstance(tracking, Exception):
                raise tracking
            if not describes(whose, self.name):
                raise ConnectionError("the fill connection reached another server")
        except BaseException:
            fill.conn.disconnect()
            raise
        return fill

    def _add_lane(self, fill: Wire) -> _Lane:
        """Start using `fill` (holding `_lock`): lookups watch its socket too."""
        lane = _Lane(fill)
        lanes = (*self._lanes, lane)
        self._lane_fds = {**self._lane_fds, lane.fd: lane}
        self._lanes = lanes
        self._poll = readiness(self._sock, *(each.fd for each in lanes))
        return lane

    def fill(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send a fill's reads over a free fill connection (opening another while fewer
        than FILL_LANES are busy), one reply each. Raises `TrackingUnavailable` when the
        connection is lost: everything is dropped, read from Redis."""
        lanes = self._lanes
        for lane in lanes:
            if lane.lock.acquire(blocking=False):
                return self._exchange(lane, commands)
        if not lanes:
            raise TrackingUnavailable("the stream is not connected")
        lane = self._another_lane() or lanes[threading.get_ident() % len(lanes)]
        lane.lock.acquire()
        return self._exchange(lane, commands)

    def _another_lane(self) -> _Lane | None:
        """A new fill connection when all are busy and there are fewer than FILL_LANES (a
        failure to open one is not the fill's failure: it waits for a busy one)."""
        with self._lock:
            client_id = self.client_id
            if client_id is None or len(self._lanes) >= FILL_LANES:
                return None
            try:
                return self._add_lane(self._open_lane_wire(client_id))
            except Exception as exc:
                log.debug("local cache: no further fill connection: %s", exc)
                return None

    def _exchange(self, lane: _Lane, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """One fill on `lane`, whose lock the caller took."""
        try:
            return lane.wire.exchange(commands)
        except BaseException as exc:
            with self._lock:
                if lane in self._lanes:
                    self._broken(f"a fill connection failed: {exc!r}")
            if isinstance(exc, RedisConnectionError):
                # Read from Redis instead (as a driver resends a read once). Not after
                # a timeout: that would double the caller's wait.
                raise TrackingUnavailable(str(exc)) from exc
            raise
        finally:
            lane.lock.release()

    def reset(self, why: str) -> None:
        """Start over (a fill learned the stream cannot be trusted)."""
        with self._lock:
            self._broken(why)

    def _close(self) -> None:
        conns = [self._conn, *(lane.wire.conn for lane in self._lanes)]
        self._conn = self._sock = self._reader = self._poll = None
        self._lanes, self._lane_fds = (), {}
        self.client_id = None
        for each in conns:
            if each is not None:
                with contextlib.suppress(Exception):  # already broken: nothing to release
                    each.disconnect()

    def close(self) -> None:
        """Close the connections (the storage is closing): for good."""
        with self._lock:
            self._shut = True
            self._close()
            self._cache.invalidate_all()


class _Lane:
    """A fill connection and the lock of the one fill using it."""

    __slots__ = ("fd", "lock", "wire")

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.lock = threading.Lock()
        self.fd = sync_socket(wire.conn).fileno()


def _closed(fill: Wire | None) -> bool:
    """Whether an idle fill connection was closed by the server (readable: EOF, or bytes
    nobody asked for, which are not to be trusted either). Looks without waiting: the
    socket's own timeout is set aside meanwhile."""
    if fill is None:
        return False
    sock = sync_socket(fill.conn)
    if sock is None:
        return True
    try:
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            if isinstance(sock, ssl.SSLSocket):
                # TLS records that carry no data (a session ticket) are read and dropped
                # here; application data from an idle connection means it is not trusted.
                sock.recv(1)
            else:
                sock.recv(1, socket.MSG_PEEK)
        finally:
            sock.settimeout(timeout)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
        return False
    except (OSError, ValueError):  # closed (by the server, or by another thread just now)
        return True
    return True  # EOF, or bytes nobody asked for


class NodeStreams(Generic[S]):
    """One stream per cluster node, created (by `new`) as fills reach the node; both
    flavours. An entry read from a node is invalidated by that node's stream, also after
    its slot moved (the move deletes the key there, which is announced). Any stream
    breaking drops the whole cache."""

    __slots__ = ("_lock", "_new", "_shut", "streams")

    def __init__(self, new: Callable[[Any], S]) -> None:
        self._new = new
        self._lock = threading.Lock()
        self._shut = False
        self.streams: dict[str, S] = {}

    def for_node(self, node: Any) -> S:
        """The stream of `node` (a `ClusterNode`), created on first use."""
        stream = self.streams.get(node.name)
        if stream is None:
            with self._lock:
                if self._shut:
                    raise StorageClosedError("this storage was closed")
                stream = self.streams.get(node.name)
                if stream is None:
                    stream = self.streams[node.name] = self._new(node)
        return stream

    def reset(self, why: str) -> None:
        """Start every stream over (which one the server lost is not known)."""
        for stream in list(self.streams.values()):
            stream.reset(why)

    def close(self) -> None:
        """Close every stream, for good."""
        with self._lock:
            self._shut = True
        for stream in list(self.streams.values()):
            stream.close()


class ClusterStreams(NodeStreams[InvalidationStream]):
    """The blocking streams of a cluster; a lookup catches up with all of them."""

    __slots__ = ()

    def __init__(self, client: Any, cache: LocalCache, broadcast_prefix: bytes | None) -> None:
        def new(node: Any) -> InvalidationStream:
            pool = client.get_redis_connection(node).connection_pool
            return InvalidationStream(pool, cache, broadcast_prefix)

        super().__init__(new)

    def catch_up(self) -> None:
        """Apply what every node's stream has received."""
        for stream in list(self.streams.values()):
            stream.catch_up()


__all__ = [
    "CHANNEL",
    "ClusterStreams",
    "InvalidationStream",
    "NodeStreams",
    "TrackingUnavailable",
    "Attempts",
    "apply_message",
    "connection_name",
    "describes",
    "fill_setup",
    "invalidated_keys",
    "setup_commands",
]
