"""The hot path in pure Python: the twin of `_speedups.pyx`, name for name.

Used when the compiled extension is unavailable or `BANTAI_NO_EXTENSIONS=1`. Every public
name here has the same signature and the same results as its compiled twin; the test
suite runs against both and Hypothesis tests compare them directly.

What lives here: RESP command packing, the request/reply exchange on a redis-py
connection's socket (`Wire`: replies parsed by hiredis, error replies turned into
redis-py's exception classes and returned in place, optional bounded busy-polling), the
reply demultiplexer of the asyncio adapter's shared connection (`Multiplexer`), and lock
tokens.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.redis._compat import parse_error as _parse_error
from bantai.redis._compat import sync_socket

_READ_SIZE = 65536
# hiredis' default "incomplete" marker is False, which is also a RESP3 boolean reply.
_INCOMPLETE = object()


def new_token() -> bytes:
    """A lock token: 128 bits from the OS CSPRNG as 32 lowercase hex digits."""
    return os.urandom(16).hex().encode()


def _arg_bytes(arg: object) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int) and not isinstance(arg, bool):
        return str(arg).encode()
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise TypeError(f"cannot send {type(arg).__name__} to Redis: use bytes, str or int")


def pack_commands(commands: Sequence[Sequence[object]]) -> bytes:
    """RESP arrays of bulk strings for every command, back to back (one write)."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _arg_bytes(arg)
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
    return b"".join(out)


class Wire:
    """A borrowed redis-py connection plus its reply reader, reused across exchanges.

    `exchange` sends commands in one write and reads one reply each. Error replies come
    back as redis-py exception instances in place (`errors` counts them), so a batch
    reads past them; RESP3 push messages are skipped. A socket failure disconnects the
    connection and raises redis-py's `ConnectionError` / `TimeoutError`; any other
    interruption disconnects it too (its replies are unread). Discard the wire then.
    `sent` says whether any byte of the last exchange was accepted by the socket: when it
    is False after a failure, the commands never left this client.

    With `spin_us > 0` the first read busy-polls the socket (non-blocking) for up to that
    many microseconds before blocking: the reply usually arrives before the thread would
    have gone to sleep, which saves the scheduler wake-up (tens of microseconds on an
    idle machine) at the price of that much CPU.
    """

    __slots__ = ("conn", "errors", "reader", "sent")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.reader = hiredis.Reader(replyError=_parse_error, notEnoughData=_INCOMPLETE)
        self.errors = 0
        self.sent = False

    def exchange(self, commands: Sequence[Sequence[object]], spin_us: int = 0) -> list[Any]:
        """Send `commands` in one write and read one reply each (see the class docstring for
        errors and `spin_us`)."""
        payload = pack_commands(commands)
        self.sent = False
        conn = self.conn
        sock = sync_socket(conn)
        if sock is None:
            conn.connect()
            sock = sync_socket(conn)
        reader = self.reader
        replies: list[Any] = []
        remaining = len(commands)
        errors = 0
        try:
            if type(sock) is socket.socket:
                view = memoryview(payload)
                while view:
                    n = sock.send(view)
                    self.sent = self.sent or n > 0
                    view = view[n:]
            else:
                self.sent = True  # a TLS socket's sendall cannot say how far it got
                sock.sendall(payload)
            if spin_us > 0:
                _spin_until_readable(sock, spin_us)
            while remaining:
                reply = reader.gets()
                if reply is _INCOMPLETE:
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        raise RedisConnectionError("Connection closed by server.")
                    reader.feed(data)
                    continue
                if type(reply) is hiredis.PushNotification:
                    continue
                if isinstance(reply, Exception):
                    errors += 1
                replies.append(reply)
                remaining -= 1
        except TimeoutError:
            conn.disconnect()
            raise RedisTimeoutError(f"Timeout talking to {_where(conn)}") from None
        except OSError as exc:
            conn.disconnect()
            raise RedisConnectionError(f"Error talking to {_where(conn)}: {exc}") from exc
        except hiredis.ProtocolError as exc:  # the stream cannot be trusted: like a loss
            conn.disconnect()
            raise RedisConnectionError(f"Protocol error from {_where(conn)}: {exc}") from exc
        except BaseException:
            conn.disconnect()
            raise
        self.errors = errors
        return replies


_HAS_POLL = hasattr(select, "poll")


def _spin_until_readable(sock: socket.socket, spin_us: int) -> None:
    """Poll (without sleeping) until the socket is readable or `spin_us` has passed."""
    deadline = time.perf_counter() + spin_us / 1e6
    if _HAS_POLL:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poll = poller.poll
        while not poll(0):
            if time.perf_counter() >= deadline:
                return
    else:  # Windows has no poll(); its select() takes sockets
        watched = [sock]
        while not select.select(watched, [], [], 0)[0]:
            if time.perf_counter() >= deadline:
                return


def _where(conn: Any) -> str:
    path = getattr(conn, "path", None)
    return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


class _Pending:
    """The replies one waiter still expects (the compiled twin's `_Pending`)."""

    __slots__ = ("errors", "remaining", "replies", "waiter")

    def __init__(self, waiter: Any, count: int) -> None:
        self.waiter = waiter
        self.remaining = count
        self.replies: list[Any] = []
        self.errors = 0


class Multiplexer:
    """Matches the replies of one auto-pipelined connection to their waiters, in order.

    `expect(waiter, count)` registers an asyncio future for the next `count` replies (in
    the order the commands are written); `feed(data)` parses whatever arrived and resolves
    each waiter with `(replies, error_count)` once its last reply is in. A waiter that was
    cancelled still has its replies read and dropped, so the connection never gets out of
    step. A reply nobody asked for raises `ConnectionError` (the stream cannot be trusted).
    `fail(exc)` fails every pending waiter (the connection is gone)."""

    __slots__ = ("_current", "_queue", "reader")

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_parse_error, notEnoughData=_INCOMPLETE)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._current: _Pending | None = None

    @property
    def pending(self) -> int:
        """How many waiters still expect replies."""
        return len(self._queue) + (self._current is not None)

    def expect(self, waiter: Any, count: int) -> None:
        """Register `waiter` (a future) for the next `count` replies."""
        self._queue.append(_Pending(waiter, count))

    def feed(self, data: bytes) -> None:
        """Parse `data` and resolve every waiter whose replies are complete."""
        reader = self.reader
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is _INCOMPLETE:
                return
            if type(reply) is hiredis.PushNotification:
                continue
            entry = self._current
            if entry is None:
                if not self._queue:
                    raise RedisConnectionError("a reply arrived that no command asked for")
                entry = self._current = self._queue.popleft()
            entry.replies.append(reply)
            if isinstance(reply, Exception):
                entry.errors += 1
            entry.remaining -= 1
            if entry.remaining == 0:
                self._current = None
                if not entry.waiter.done():
                    entry.waiter.set_result((entry.replies, entry.errors))

    def fail(self, exc: BaseException) -> None:
        """Fail every pending waiter with `exc` (the connection is gone)."""
        entries = list(self._queue)
        if self._current is not None:
            entries.insert(0, self._current)
        self._queue.clear()
        self._current = None
        for entry in entries:
            if not entry.waiter.done():
                entry.waiter.set_exception(exc)
