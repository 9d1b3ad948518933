"""A TCP fault-injection proxy between a Redis client and a real local `redis-server`.

Why: the hard failures of a networked store are the ambiguous ones. A command that reached the
server but whose reply was lost looks, to the client, exactly like a command that never left:
both end in a `ConnectionError`. Killing or pausing the server cannot tell these apart, so tests
put this proxy in the middle and decide, per command, what the client gets to see.

Design: one daemon thread runs a `selectors` loop over non-blocking sockets on the loopback
interface. Every socket is touched only by that thread, so faults cannot race with the data they
act on; the public methods that change connections hand their work to the loop and wait (bounded)
until it is done, which makes e.g. `reset_all()` take effect before it returns. Standard library
only.

Matching limitation: faults match with a plain `pattern in chunk` on each chunk read from a client
socket. A chunk is whatever one `recv` returned: it may hold several pipelined commands (they then
share the fault) and, in principle, a long command may be split over chunks so that a pattern
straddling the boundary is missed. Commands from redis-py are RESP arrays of bulk strings, so the
precise pattern for the `SET` command is `b"\\r\\nSET\\r\\n"`: a bare `b"SET"` also matches the
`CLIENT SETINFO` handshake redis-py sends on every new connection, and any key containing "SET".
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

_HOST = "127.0.0.1"
_RECV_SIZE = 65536
# Stop reading from a side while this much is still queued for the other side: backpressure
# instead of unbounded buffering when one peer does not read.
_HIGH_WATER = 1 << 20
_CONNECT_TIMEOUT = 2.0
_CALL_TIMEOUT = 5.0
_JOIN_TIMEOUT = 5.0
_DEFAULT_GRACE = 0.2
_LINGER_RST = struct.pack("ii", 1, 0)

FaultKind = Literal["lose_reply", "drop_request", "garble_reply"]
# Not RESP: a reply type byte that no RESP version has.
GARBAGE = b"@not a reply\r\n"


@dataclass
class _Fault:
    kind: FaultKind
    pattern: bytes
    remaining: int


@dataclass(eq=False)
class _Conn:
    """One proxied client connection and its upstream twin, with what each side still owes."""

    client: socket.socket
    upstream: socket.socket
    to_client: bytearray = field(default_factory=bytearray)
    to_upstream: bytearray = field(default_factory=bytearray)
    held: bytearray = field(default_factory=bytearray)
    # lose_reply armed on this connection: the server's replies are discarded, and the pair dies
    # once the server has answered or at `deadline` (monotonic), whichever comes first.
    swallowing: bool = False
    garbling: bool = False
    deadline: float = 0.0
    closed: bool = False


@dataclass
class _Call:
    fn: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class FaultProxy:
    """Forwards 127.0.0.1:<free port> to an upstream Redis, injecting faults on request.

    Faults are armed globally and apply to connections already open as well as new ones. All
    public methods are thread-safe.
    """

    def __init__(
        self,
        upstream_host: str = _HOST,
        upstream_port: int = 6379,
        *,
        grace: float = _DEFAULT_GRACE,
    ) -> None:
        """Only records the target: nothing listens until `start()`, so a test can build the
        proxy before its server exists. `grace` bounds how long `lose_reply_after` waits for the
        server's answer before cutting the connection anyway."""
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.grace = grace
        self.host = _HOST
        self.replies_lost = 0
        self.requests_dropped = 0
        self.replies_garbled = 0
        self._port: int | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._faults: list[_Fault] = []
        self._held = False
        self._conns: set[_Conn] = set()
        self._calls: list[_Call] = []
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a port the OS picks (no collisions between parallel tests) and start the
        I/O thread. Returns self so `proxy = FaultProxy(...).start()` reads naturally."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy can only be started once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_HOST, 0))
            listener.listen(128)
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        selector.register(wake_r, selectors.EVENT_READ, None)
        self._listener, self._wake_r, self._wake_w = listener, wake_r, wake_w
        self._selector = selector
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"FaultProxy-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection and join the I/O thread (bounded).

        Idempotent, so fixtures and `with` blocks may both call it. Raises if the I/O thread died
        of an unexpected error, so a proxy bug fails the test instead of hiding in a log.
        """
        with self._lock:
            if self._thread is None or self._stopped:
                return
            self._stopped = True
            self._stopping = True
        self._wake()
        self._thread.join(_JOIN_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"FaultProxy I/O thread did not stop within {_JOIN_TIMEOUT} s")
        if self._wake_w is not None:
            self._wake_w.close()
        if self._error is not None:
            raise RuntimeError("FaultProxy I/O thread failed") from self._error

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the proxy listens on; only known once started."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """A redis-py URL for database 0 through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        with self._lock:
            return len(self._conns)

    # -- faults ----------------------------------------------------------------------------

    def lose_reply_after(self, pattern: bytes, *, count: int = 1) -> None:
        """The next `count` client chunks containing `pattern` reach the server, but the client
        never sees the answer: its connection is reset once the server has replied (or after the
        grace period). This is the ambiguous failure: the write happened, the client cannot
        know. Increments `replies_lost` each time it fires."""
        self._arm("lose_reply", pattern, count)

    def drop_request(self, pattern: bytes, *, count: int = 1) -> None:
        """The next `count` client chunks containing `pattern` are not forwarded and the client
        connection is reset at once: the command never ran, though the client sees the same
        error as for a lost reply. Increments `requests_dropped` each time it fires."""
        self._arm("drop_request", pattern, count)

    def garble_reply_after(self, pattern: bytes, *, count: int = 1) -> None:
        """The next `count` client chunks containing `pattern` reach the server, and the
        server's next reply on that connection reaches the client as bytes that are not
        RESP at all (`GARBAGE`): the command ran, its answer cannot be read. Increments
        `replies_garbled`."""
        self._arm("garble_reply", pattern, count)

    def hold_replies(self) -> None:
        """Buffer server->client bytes instead of delivering them: the server looks frozen to
        its clients (timeouts) while it actually keeps executing commands."""
        with self._lock:
            self._held = True

    def release_replies(self) -> None:
        """Stop holding and deliver what was buffered, in order, to connections still open."""

        def release() -> None:
            with self._lock:
                self._held = False
                conns = list(self._conns)
            for conn in conns:
                if conn.held:
                    conn.to_client += conn.held
                    conn.held.clear()
                    self._flush(conn)

        self._call(release)
        with self._lock:  # in case the proxy is stopping and `release` did not run
            self._held = False

    def reset_all(self) -> None:
        """Reset (RST) every current client connection and close its upstream side; done by the
        time this returns, so the client's very next command fails."""

        def reset() -> None:
            with self._lock:
                conns = list(self._conns)
            for conn in conns:
                self._close(conn, reset=True)

        self._call(reset)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds, re-checking whenever the proxy's state changes (and at
        least every 50 ms, for predicates on outside state). Raises AssertionError on timeout so
        a test fails with a clear message instead of hanging."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout} s")
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    # -- internals: called from other threads ----------------------------------------------

    def _arm(self, kind: FaultKind, pattern: bytes, count: int) -> None:
        if not pattern:
            raise ValueError("pattern must not be empty")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, bytes(pattern), count))

    def _wake(self) -> None:
        if self._wake_w is None:
            return
        # OSError: the buffer is full (a wake-up is pending anyway) or the proxy is stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the I/O thread, which owns the sockets, and wait for it (bounded).

        Without a running I/O thread there is nothing for `fn` to act on: never started means no
        connection exists (so `fn` runs here, harmlessly); stopping means the I/O thread is
        closing every connection itself (so `fn` is skipped)."""
        call = _Call(fn)
        with self._lock:
            if self._thread is None or threading.current_thread() is self._thread:
                run_here = True
            elif self._stopping:
                return
            else:
                run_here = False
                self._calls.append(call)
        if run_here:
            fn()
            return
        self._wake()
        if not call.done.wait(_CALL_TIMEOUT):
            raise RuntimeError(f"FaultProxy I/O thread did not respond within {_CALL_TIMEOUT} s")
        if call.error is not None:
            raise call.error

    # -- internals: the I/O thread ---------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while True:
                events = selector.select(self._next_timeout())
                for key, mask in events:
                    self._dispatch(key, mask)
                self._run_calls()
                self._expire()
                with self._changed:
                    self._changed.notify_all()
                    if self._stopping:
                        break
        except BaseException as exc:  # surfaced by stop(); the loop must still clean up
            self._error = exc
        finally:
            self._shutdown()

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.fileobj is self._listener:
            self._accept()
        elif key.fileobj is self._wake_r:
            self._drain_wake()
        else:
            conn: _Conn = key.data
            if conn.closed:
                return
            sock = key.fileobj
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if conn.closed or not mask & selectors.EVENT_READ:
                return
            if sock is conn.client:
                self._read_client(conn)
            else:
                self._read_upstream(conn)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _addr = self._listener.accept()
        except OSError:  # the client gave up before we got to it
            return
        try:
            # Blocking but bounded, and the upstream is on loopback: connect or refuse at once.
            upstream = socket.create_connection(
                (self.upstream_host, self.upstream_port), timeout=_CONNECT_TIMEOUT
            )
        except OSError:
            _reset(client)  # the upstream is down: the client sees its connection drop
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(client, upstream)
        assert self._selector is not None
        self._selector.register(client, selectors.EVENT_READ, conn)
        self._selector.register(upstream, selectors.EVENT_READ, conn)
        with self._lock:
            self._conns.add(conn)

    def _read_client(self, conn: _Conn) -> None:
        data = _recv(conn.client)
        if data is None:
            return
        if not data:  # EOF or error: the client is gone
            self._close(conn, reset=False)
            return
        if not conn.swallowing:
            fault = self._match(data)
            if fault == "drop_request":
                self._close(conn, reset=True)
                return
            if fault == "lose_reply":
                conn.swallowing = True
            if fault == "garble_reply":
                conn.garbling = True
        if conn.swallowing:
            # Keep forwarding: the rest of a long command may follow in later chunks, and it must
            # reach the server whole. The grace period counts from the last byte forwarded.
            conn.deadline = time.monotonic() + self.grace
        conn.to_upstream += data
        self._flush(conn)

    def _read_upstream(self, conn: _Conn) -> None:
        data = _recv(conn.upstream)
        if data is None:
            return
        if not data:  # EOF or error: the server closed; pass on what it said before, then close
            self._close(conn, reset=False)
            return
        if conn.swallowing:
            # The server answered what we forwarded: the command ran, the reply is lost.
            if not conn.to_upstream:
                self._close(conn, reset=True)
            return
        if conn.garbling:
            conn.garbling = False
            data = GARBAGE
        with self._lock:
            held = self._held
        if held:
            conn.held += data
        else:
            conn.to_client += data
            self._flush(conn)

    def _match(self, data: bytes) -> FaultKind | None:
        """Consume one armed fault whose pattern occurs in `data`, oldest first."""
        with self._lock:
            for fault in self._faults:
                if fault.pattern in data:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    # Counted before the client is reset, so a test that has seen the error also
                    # sees the counter.
                    if fault.kind == "lose_reply":
                        self.replies_lost += 1
                    elif fault.kind == "garble_reply":
                        self.replies_garbled += 1
                    else:
                        self.requests_dropped += 1
                    return fault.kind
        return None

    def _flush(self, conn: _Conn) -> None:
        """Send what can be sent without blocking and re-arm the selector for the rest."""
        if conn.closed:
            return
        for sock, buf in ((conn.upstream, conn.to_upstream), (conn.client, conn.to_client)):
            if not buf:
                continue
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn, reset=False)
                return
            del buf[:sent]
        self._update(conn)

    def _update(self, conn: _Conn) -> None:
        """Watch for writability only while bytes wait, and stop reading a side whose peer is
        not keeping up."""
        client_events = selectors.EVENT_WRITE if conn.to_client else 0
        if len(conn.to_upstream) < _HIGH_WATER:
            client_events |= selectors.EVENT_READ
        upstream_events = selectors.EVENT_WRITE if conn.to_upstream else 0
        if len(conn.to_client) + len(conn.held) < _HIGH_WATER:
            upstream_events |= selectors.EVENT_READ
        self._watch(conn.client, client_events, conn)
        self._watch(conn.upstream, upstream_events, conn)

    def _watch(self, sock: socket.socket, events: int, conn: _Conn) -> None:
        """Set the selector's interest in `sock`; an empty interest unregisters it (selectors
        refuse an empty mask), and the peer's progress registers it again."""
        assert self._selector is not None
        try:
            key: selectors.SelectorKey | None = self._selector.get_key(sock)
        except KeyError:
            key = None
        if not events:
            if key is not None:
                self._selector.unregister(sock)
        elif key is None:
            self._selector.register(sock, events, conn)
        elif key.events != events:
            self._selector.modify(sock, events, conn)

    def _close(self, conn: _Conn, *, reset: bool) -> None:
        """Close the pair. With `reset`, the client gets an RST (SO_LINGER 0): the abrupt failure
        a client sees when a network path dies. The upstream side always closes normally, so the
        server still executes whatever it has already received."""
        if conn.closed:
            return
        conn.closed = True
        with self._lock:
            self._conns.discard(conn)
        assert self._selector is not None
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        if not reset:
            # Best effort, without blocking: what one side said before leaving (e.g. a server
            # error) still reaches the other. Loopback buffers are large enough in practice.
            _send_nowait(conn.client, conn.to_client)
        _send_nowait(conn.upstream, conn.to_upstream)
        if reset:
            _reset(conn.client)
        else:
            conn.client.close()
        conn.upstream.close()

    def _next_timeout(self) -> float | None:
        """Sleep until the nearest lose_reply deadline, or indefinitely: no polling."""
        deadlines = [c.deadline for c in self._conns if c.swallowing]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns if c.swallowing and c.deadline <= now]:
            self._close(conn, reset=True)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call.fn()
            except Exception as exc:
                call.error = exc
            finally:
                call.done.set()

    def _shutdown(self) -> None:
        """Close everything the I/O thread owns; runs on that thread, even after an error."""
        for conn in list(self._conns):
            try:
                self._close(conn, reset=True)
            except Exception:
                conn.client.close()
                conn.upstream.close()
        with self._changed:
            self._stopping = True
            self._conns.clear()
            calls, self._calls = self._calls, []
            self._changed.notify_all()
        for call in calls:  # nothing left to act on: release the waiters
            call.done.set()
        for sock in (self._listener, self._wake_r):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()


def _recv(sock: socket.socket) -> bytes | None:
    """Read what is there: None if nothing is (a spurious wake-up), b"" if the peer is gone
    (EOF or reset)."""
    try:
        return sock.recv(_RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _send_nowait(sock: socket.socket, buf: bytearray) -> None:
    if not buf:
        return
    with contextlib.suppress(OSError):
        sock.send(buf)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()
