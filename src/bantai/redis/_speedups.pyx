# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path. Twin of `_speedups_pure.py`: same names, signatures, results.

RESP packing is done into one buffer sized up front (no per-argument bytes objects for
the framing), tokens are hex-encoded in C, the request/reply loop runs without
interpreter overhead around the hiredis reader, and busy-polling spins in C without
holding the GIL (other threads keep running).
"""

import os
import socket
from collections import deque as _deque

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# redis-py internals come from _compat, like everywhere else (tests/test_compat.py).
from bantai.redis._compat import SOCK_ATTR, parse_error

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int MSG_NOSIGNAL


cdef Py_ssize_t _READ_SIZE = 65536
cdef object _parse_error = parse_error
# Wire.exchange reads `conn._sock` directly (the hot path: a getattr with SOCK_ATTR cost
# ~20-40 ns more per exchange); it is the attribute _compat names, checked here at import.
if SOCK_ATTR != "_sock":
    raise ImportError(f"bantai.redis._compat.SOCK_ATTR is {SOCK_ATTR!r}: rebuild _speedups")
# hiredis' default "incomplete" marker is False, which is also a RESP3 boolean reply.
cdef object _INCOMPLETE = object()
cdef object _Reader = hiredis.Reader
cdef object _PushNotification = hiredis.PushNotification
cdef object _ProtocolError = hiredis.ProtocolError
cdef object _urandom = os.urandom
cdef object _socket_timeout = socket.timeout
cdef object _plain_socket = socket.socket
cdef object _strerror = os.strerror
cdef const char* _HEX = b"0123456789abcdef"


def new_token():
    """A lock token: 128 bits from the OS CSPRNG as 32 lowercase hex digits."""
    cdef bytes raw = _urandom(16)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
    cdef unsigned char* src = <unsigned char*>PyBytes_AS_STRING(raw)
    cdef char* dst = PyBytes_AS_STRING(out)
    cdef int i
    for i in range(16):
        dst[2 * i] = _HEX[src[i] >> 4]
        dst[2 * i + 1] = _HEX[src[i] & 15]
    return out


cdef inline bytes _arg_bytes(object arg):
    if type(arg) is bytes:
        return <bytes>arg
    if isinstance(arg, str):
        return PyUnicode_AsUTF8String(arg)
    if isinstance(arg, int) and not isinstance(arg, bool):
        return str(arg).encode()
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise TypeError(f"cannot send {type(arg).__name__} to Redis: use bytes, str or int")


cdef inline Py_ssize_t _digits(Py_ssize_t n):
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cdef inline char* _write_header(char* p, char kind, Py_ssize_t n):
    cdef Py_ssize_t d = _digits(n)
    cdef Py_ssize_t i
    p[0] = kind
    for i in range(d, 0, -1):
        p[i] = <char>(48 + n % 10)
        n //= 10
    p[d + 1] = 13
    p[d + 2] = 10
    return p + d + 3


cpdef bytes pack_commands(commands):
    """RESP arrays of bulk strings for every command, back to back (one write)."""
    cdef list parts = []
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t size
    cdef bytes data
    cdef object command
    for command in commands:
        size = len(command)
        parts.append(size)
        total += _digits(size) + 3
        for arg in command:
            data = _arg_bytes(arg)
            size = PyBytes_GET_SIZE(data)
            parts.append(data)
            total += _digits(size) + 5 + size
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    for item in parts:
        if type(item) is int:
            p = _write_header(p, 42, <Py_ssize_t>item)  # '*'
        else:
            data = <bytes>item
            size = PyBytes_GET_SIZE(data)
            p = _write_header(p, 36, size)  # '$'
            memcpy(p, PyBytes_AS_STRING(data), size)
            p += size
            p[0] = 13
            p[1] = 10
            p += 2
    return out


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void _spin_until_readable(int fd, long spin_us) noexcept nogil:
    """Poll (without sleeping, without the GIL) until readable or `spin_us` has passed."""
    cdef pollfd pfd
    cdef double deadline = _now() + spin_us * 1e-6
    pfd.fd = fd
    pfd.events = POLLIN
    while poll(&pfd, 1, 0) == 0:
        if _now() >= deadline:
            return


cdef int _wait(int fd, short events, int timeout_ms) noexcept nogil:
    """poll() for `events`, retrying on EINTR; 1 ready, 0 timed out, -1 error (errno)."""
    cdef pollfd pfd
    cdef int rc
    pfd.fd = fd
    pfd.events = events
    while True:
        rc = poll(&pfd, 1, timeout_ms)
        if rc >= 0 or errno != EINTR:
            return 1 if rc > 0 else rc


cdef class Wire:
    """A borrowed redis-py connection plus its reply reader, reused across exchanges.
    See `_speedups_pure.Wire` for the contract.

    On a plain TCP/Unix socket the bytes move with send()/recv() on the descriptor,
    without the GIL and into one reused buffer, honouring the socket's timeout like
    Python's socket methods do; TLS sockets go through their Python methods."""

    cdef public object conn
    cdef public object reader
    cdef public Py_ssize_t errors
    cdef public bint sent
    cdef bytearray _buffer

    def __init__(self, conn):
        self.conn = conn
        self.reader = _Reader(replyError=_parse_error, notEnoughData=_INCOMPLETE)
        self.errors = 0
        self.sent = False
        self._buffer = bytearray(_READ_SIZE)

    def exchange(self, commands, long spin_us=0):
        cdef bytes payload = pack_commands(commands)
        cdef double timeout_ms_f
        self.sent = False
        conn = self.conn
        sock = conn._sock
        if sock is None:
            conn.connect()
            sock = conn._sock
        cdef list replies = []
        cdef Py_ssize_t remaining = len(commands)
        cdef Py_ssize_t errors = 0
        cdef bint raw = type(sock) is _plain_socket
        cdef bint wait_first
        cdef int fd = -1
        cdef int timeout_ms = -1
        gets = self.reader.gets
        feed = self.reader.feed
        try:
            if raw:
                fd = sock.fileno()
                timeout = sock.gettimeout()
                if timeout is not None:
                    # poll() takes an int of ms: beyond ~24.8 days, wait without a limit
                    # (what the pure twin's socket does with such a timeout, in effect).
                    timeout_ms_f = timeout * 1000.0 + 0.999
                    timeout_ms = -1 if timeout_ms_f >= 2147483647.0 else max(0, <int>timeout_ms_f)
                self._send_all(fd, payload, timeout_ms)
            else:
                self.sent = True  # a TLS socket's sendall cannot say how far it got
                sock.sendall(payload)
            if spin_us > 0:
                fd = sock.fileno()
                with nogil:
                    _spin_until_readable(fd, spin_us)
            # Right after a send the reply is almost never there yet: wait for it first
            # (poll, then recv, as Python's own socket does) instead of a recv that fails
            # with EAGAIN. Once data flows, or after busy-polling, recv first.
            wait_first = spin_us <= 0
            while remaining:
                reply = gets()
                if reply is _INCOMPLETE:
                    if raw:
                        feed(self._buffer, 0, self._recv_some(fd, timeout_ms, wait_first))
                        wait_first = False
                    else:
                        data = sock.recv(_READ_SIZE)
                        if not data:
                            raise RedisConnectionError("Connection closed by server.")
                        feed(data)
                    continue
                if type(reply) is _PushNotification:
                    continue
                if isinstance(reply, Exception):
                    errors += 1
                replies.append(reply)
                remaining -= 1
        except _socket_timeout:
            conn.disconnect()
            raise RedisTimeoutError(f"Timeout talking to {_where(conn)}") from None
        except OSError as exc:
            conn.disconnect()
            raise RedisConnectionError(f"Error talking to {_where(conn)}: {exc}") from exc
        except _ProtocolError as exc:  # the stream cannot be trusted: like a loss
            conn.disconnect()
            raise RedisConnectionError(f"Protocol error from {_where(conn)}: {exc}") from exc
        except BaseException:
            conn.disconnect()
            raise
        self.errors = errors
        return replies

    cdef void _send_all(self, int fd, bytes payload, int timeout_ms) except *:
        cdef const char* p = PyBytes_AS_STRING(payload)
        cdef Py_ssize_t left = PyBytes_GET_SIZE(payload)
        cdef ssize_t n
        cdef int err
        while left > 0:
            with nogil:
                n = send(fd, p, left, MSG_NOSIGNAL)
                err = errno
            if n >= 0:
                if n > 0:
                    self.sent = True
                p += n
                left -= n
            elif err == EINTR:
                PyErr_CheckSignals()
            elif err == EAGAIN or err == EWOULDBLOCK:
                self._ready(fd, POLLOUT, timeout_ms)
            else:
                raise OSError(err, _strerror(err))

    cdef Py_ssize_t _recv_some(self, int fd, int timeout_ms, bint wait_first) except -1:
        cdef char* buf = PyByteArray_AS_STRING(self._buffer)
        cdef ssize_t n
        cdef int err
        if wait_first:
            self._ready(fd, POLLIN, timeout_ms)
        while True:
            with nogil:
                n = recv(fd, buf, _READ_SIZE, 0)
                err = errno
            if n > 0:
                return n
            if n == 0:
                raise RedisConnectionError("Connection closed by server.")
            if err == EINTR:
                PyErr_CheckSignals()
            elif err == EAGAIN or err == EWOULDBLOCK:
                self._ready(fd, POLLIN, timeout_ms)
            else:
                raise OSError(err, _strerror(err))

    cdef void _ready(self, int fd, short events, int timeout_ms) except *:
        """Wait (without the GIL) until the non-blocking socket is ready, or time out the
        way a Python socket with this timeout would."""
        cdef int rc
        cdef int err
        with nogil:
            rc = _wait(fd, events, timeout_ms)
            err = errno
        if rc == 0:
            raise _socket_timeout("timed out")
        if rc < 0:
            raise OSError(err, _strerror(err))


cdef str _where(conn):
    path = getattr(conn, "path", None)
    return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


cdef class _Pending:
    cdef object waiter
    cdef Py_ssize_t remaining
    cdef list replies
    cdef Py_ssize_t errors


cdef class Multiplexer:
    """Matches the replies of one auto-pipelined connection to their waiters, in order.
    See `_speedups_pure.Multiplexer` for the contract."""

    cdef public object reader
    cdef object _queue
    cdef _Pending _current
    cdef object _gets

    def __init__(self):
        self.reader = _Reader(replyError=_parse_error, notEnoughData=_INCOMPLETE)
        self._gets = self.reader.gets
        self._queue = _deque()
        self._current = None

    @property
    def pending(self):
        return len(self._queue) + (self._current is not None)

    def expect(self, waiter, Py_ssize_t count):
        cdef _Pending entry = _Pending.__new__(_Pending)
        entry.waiter = waiter
        entry.remaining = count
        entry.replies = []
        entry.errors = 0
        self._queue.append(entry)

    def feed(self, data):
        cdef _Pending entry
        self.reader.feed(data)
        gets = self._gets
        while True:
            reply = gets()
            if reply is _INCOMPLETE:
                return
            if type(reply) is _PushNotification:
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

    def fail(self, exc):
        cdef _Pending entry
        entries = list(self._queue)
        if self._current is not None:
            entries.insert(0, self._current)
        self._queue.clear()
        self._current = None
        for entry in entries:
            if not entry.waiter.done():
                entry.waiter.set_exception(exc)
