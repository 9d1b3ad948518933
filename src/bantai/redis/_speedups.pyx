# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path. Twin of `_speedups_pure.py`: same names, signatures, results.

RESP packing is done into one buffer sized up front (no per-argument bytes objects for
the framing), tokens are hex-encoded in C, and the request/reply loop runs without
interpreter overhead around the hiredis reader.
"""

import os
import socket

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.string cimport memcpy

cdef Py_ssize_t _READ_SIZE = 65536
cdef object _parse_error = BaseParser.parse_error
# hiredis' default "incomplete" marker is False, which is also a RESP3 boolean reply.
cdef object _INCOMPLETE = object()
cdef object _Reader = hiredis.Reader
cdef object _PushNotification = hiredis.PushNotification
cdef object _urandom = os.urandom
cdef object _socket_timeout = socket.timeout
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


def pack_commands(commands):
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


def exchange(conn, commands):
    """Send `commands` on a connected redis-py connection and read one reply each.

    Error replies come back as redis-py exception instances in place; RESP3 push messages
    are skipped. A socket failure disconnects `conn` and raises redis-py's
    `ConnectionError` / `TimeoutError`; any other interruption disconnects it too."""
    cdef bytes payload = pack_commands(commands)
    sock = conn._sock
    if sock is None:
        conn.connect()
        sock = conn._sock
    reader = _Reader(replyError=_parse_error, notEnoughData=_INCOMPLETE)
    cdef list replies = []
    cdef Py_ssize_t remaining = len(commands)
    try:
        sock.sendall(payload)
        recv = sock.recv
        gets = reader.gets
        feed = reader.feed
        while remaining:
            reply = gets()
            if reply is _INCOMPLETE:
                data = recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                feed(data)
                continue
            if type(reply) is _PushNotification:
                continue
            replies.append(reply)
            remaining -= 1
    except _socket_timeout:
        conn.disconnect()
        raise RedisTimeoutError(f"Timeout talking to {_where(conn)}") from None
    except OSError as exc:
        conn.disconnect()
        raise RedisConnectionError(f"Error talking to {_where(conn)}: {exc}") from exc
    except BaseException:
        conn.disconnect()
        raise
    return replies


cdef str _where(conn):
    path = getattr(conn, "path", None)
    return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
