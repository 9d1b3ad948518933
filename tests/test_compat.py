"""redis-py's private and undocumented API that bantai relies on (`bantai/redis/_compat.py`)
is still there, with the shape bantai expects, on the installed redis-py: a connection's
socket and asyncio transport, the error-reply parser, the locks renewed after fork, and a
cluster client's slot map and node connections. Against real servers. A failure names
the redis-py version and the attribute, so an upgrade that moves one fails here first,
not in production.

CI runs this (and the suite) with redis-py at both ends of the supported range."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from typing import Any, NoReturn

import hiredis
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from bantai.redis import _compat
from bantai.testing import LocalRedisCluster, LocalRedisServer

VERSION = redis.__version__


def _gone(what: str, detail: str = "") -> NoReturn:
    pytest.fail(
        f"redis-py {VERSION}: {what} is missing or has changed{detail} — "
        "bantai.redis._compat relies on it (supported: redis>=5.3,<9)",
        pytrace=False,
    )


def _require(obj: Any, attr: str, what: str) -> Any:
    if not hasattr(obj, attr):
        _gone(what)
    return getattr(obj, attr)


def _require_callable(obj: Any, attr: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """`obj.attr`, callable with these arguments (checked on its signature, not called)."""
    method = _require(obj, attr, what)
    if not callable(method):
        _gone(what, " (not callable)")
    try:
        inspect.signature(method).bind(*args, **kwargs)
    except TypeError as exc:
        _gone(what, f" (signature {inspect.signature(method)}: {exc})")
    return method


def _is_lock(value: Any) -> bool:
    return isinstance(value, (type(threading.Lock()), type(threading.RLock())))


# --- connections ---------------------------------------------------------------------------


def test_sync_connection_socket(redis_server: LocalRedisServer) -> None:
    """`Connection._sock`: the connected socket, None once disconnected (the wires send and
    receive on it directly)."""
    pool = redis.ConnectionPool(host=redis_server.host, port=redis_server.port)
    conn = pool.get_connection()
    try:
        sock = _require(conn, _compat.SOCK_ATTR, f"redis.Connection.{_compat.SOCK_ATTR}")
        if not isinstance(sock, socket.socket):
            _gone(f"redis.Connection.{_compat.SOCK_ATTR}", f" (a {type(sock).__name__})")
        assert _compat.sync_socket(conn) is sock
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        conn.disconnect()
        if _compat.sync_socket(conn) is not None:
            _gone(f"redis.Connection.{_compat.SOCK_ATTR}", " (not None after disconnect())")
    finally:
        pool.release(conn)
        pool.disconnect()


class _FakeSocket:
    """Answers every request with +PONG (not a plain socket: the wires' generic path)."""

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return b"+PONG\r\n"

    def gettimeout(self) -> None:
        return None


def test_both_wires_take_the_socket_named_in_compat(twin: Any) -> None:
    """Each twin's `Wire` reads the socket from the attribute `_compat.SOCK_ATTR` names (the
    compiled one spells it out for speed and checks the constant at import)."""
    conn = type("Conn", (), {})()
    setattr(conn, _compat.SOCK_ATTR, _FakeSocket())
    assert twin.Wire(conn).exchange([(b"PING",)]) == [b"PONG"]


def test_async_connection_transport(redis_server: LocalRedisServer) -> None:
    """`redis.asyncio.Connection._writer.transport`: the transport the asyncio driver takes
    over with its own protocol (`set_protocol`)."""

    async def main() -> None:
        conn = redis.asyncio.Connection(host=redis_server.host, port=redis_server.port)
        await conn.connect()
        try:
            writer = _require(conn, "_writer", "redis.asyncio.Connection._writer")
            transport = _require(writer, "transport", "redis.asyncio.Connection._writer.transport")
            assert _compat.async_transport(conn) is transport
            for method in ("set_protocol", "get_protocol", "write", "close", "is_closing"):
                _require(transport, method, f"the asyncio transport's {method}()")
        finally:
            await conn.disconnect()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("NOSCRIPT No matching script", NoScriptError),
        ("READONLY You can't write against a read only replica.", ReadOnlyError),
        ("LOADING Redis is loading the dataset in memory", BusyLoadingError),
        ("MOVED 3999 127.0.0.1:6381", MovedError),
        ("ASK 3999 127.0.0.1:6381", AskError),
        ("TRYAGAIN Multiple keys request during rehashing of slot", TryAgainError),
        ("CLUSTERDOWN The cluster is down", ClusterDownError),
        ("ERR unknown command", ResponseError),
    ],
)
def test_error_reply_parser(reply: str, expected: type[Exception]) -> None:
    """`parse_error` (redis-py's parser classmethod) turns an error reply into the exception
    class the round-trip policy dispatches on, also as hiredis' `replyError` callback."""
    error = _compat.parse_error(reply)
    if type(error) is not expected:
        _gone(
            f"{_compat._ErrorParser.__name__}.parse_error",
            f" ({reply.split()[0]} gives {type(error).__name__}, not {expected.__name__})",
        )
    reader = hiredis.Reader(replyError=_compat.parse_error)
    reader.feed(f"-{reply}\r\n".encode())
    assert type(reader.gets()) is expected
    if isinstance(error, (MovedError, AskError)):
        for attr in ("slot_id", "host", "port"):
            _require(error, attr, f"{type(error).__name__}.{attr}")
        assert (error.slot_id, error.host, error.port) == (3999, "127.0.0.1", 6381)


# --- fork: fresh locks for the pools a child inherits --------------------------------------


def test_pool_locks_are_renewed(redis_server: LocalRedisServer) -> None:
    """A pool's `_fork_lock` and `_lock` (taken by its after-fork check and `reset()`): held
    by another thread at fork time, they would hang the child; `give_pool_fresh_locks`
    replaces them and `reset()` forgets the parent's connections."""
    pool = redis.ConnectionPool(host=redis_server.host, port=redis_server.port)
    _require_callable(pool, "reset", "redis.ConnectionPool.reset")
    held = []
    for name in ("_fork_lock", "_lock"):
        lock = _require(pool, name, f"redis.ConnectionPool.{name}")
        if not _is_lock(lock):
            _gone(f"redis.ConnectionPool.{name}", f" (a {type(lock).__name__}, not a lock)")
        lock.acquire()  # as if another thread held it at fork time
        held.append(lock)
    _compat.give_pool_fresh_locks(pool)
    for name, old in zip(("_fork_lock", "_lock"), held, strict=True):
        new = getattr(pool, name)
        assert new is not old and new.acquire(blocking=False), name
        new.release()
        old.release()
    client = redis.Redis(connection_pool=pool)
    assert client.ping()
    client.close()


def test_cluster_locks_are_renewed(redis_cluster: LocalRedisCluster) -> None:
    """The same for a cluster client's slot map (`nodes_manager._lock`)."""
    host, port = redis_cluster.startup_nodes[0]
    client = redis.cluster.RedisCluster(host=host, port=port)
    try:
        nodes = _require(client, "nodes_manager", "redis.cluster.RedisCluster.nodes_manager")
        lock = _require(nodes, "_lock", "redis.cluster.NodesManager._lock")
        if not _is_lock(lock):
            _gone("redis.cluster.NodesManager._lock", f" (a {type(lock).__name__})")
        lock.acquire()
        _compat.give_cluster_fresh_locks(client)
        assert nodes._lock is not lock and nodes._lock.acquire(blocking=False)
        nodes._lock.release()
        lock.release()
        assert client.ping()
    finally:
        client.close()


# --- Redis Cluster: the slot map and the nodes ---------------------------------------------


def _slot_and_nodes(cluster: LocalRedisCluster, lookup: Any) -> tuple[int, Any, tuple[str, int]]:
    slot = 3999
    owner = lookup(slot)
    for attr in ("name", "host", "port"):
        _require(owner, attr, f"ClusterNode.{attr}")
    other = next((h, p) for h, p in cluster.startup_nodes if p != owner.port)
    return slot, owner, other


def test_sync_cluster_slot_map(redis_cluster: LocalRedisCluster) -> None:
    """`nodes_manager.get_node_from_slot`, `get_node(host=, port=)`, the MOVED update
    (`move_slot`, or `update_moved_exception` before redis-py 7.2) and `initialize()`."""
    host, port = redis_cluster.startup_nodes[0]
    client = redis.cluster.RedisCluster(host=host, port=port)
    try:
        nodes = _require(client, "nodes_manager", "redis.cluster.RedisCluster.nodes_manager")
        _require_callable(nodes, "get_node_from_slot", "NodesManager.get_node_from_slot", 0)
        _require_callable(nodes, "get_node", "NodesManager.get_node", host="h", port=1)
        _require_callable(nodes, "initialize", "NodesManager.initialize")
        if not (hasattr(nodes, "move_slot") or hasattr(nodes, "update_moved_exception")):
            _gone("NodesManager.move_slot (or update_moved_exception, before 7.2)")
        lookup = _compat.slot_lookup(client)
        slot, owner, (other_host, other_port) = _slot_and_nodes(redis_cluster, lookup)
        assert _compat.node_at(client, owner.host, owner.port) is owner
        assert _compat.node_at(client, "127.0.0.1", 1) is None

        moved = _compat.parse_error(f"MOVED {slot} {other_host}:{other_port}")
        _compat.move_slot(client, moved)
        if (lookup(slot).host, lookup(slot).port) != (other_host, other_port):
            _gone("the MOVED update of NodesManager", " (the slot did not move)")
        _compat.refresh_slots(client)  # the cluster says otherwise: back to the owner
        assert _compat.slot_lookup(client)(slot).port == owner.port
    finally:
        client.close()


def test_async_cluster_slot_map_and_nodes(redis_cluster: LocalRedisCluster) -> None:
    """The asyncio cluster client: the same slot map calls (its MOVED update differs most
    between redis-py releases), and a node's own connections (`acquire_connection`, then
    `release`, or the `_free` list before 6.2), whose transport the driver takes over."""

    async def main() -> None:
        host, port = redis_cluster.startup_nodes[0]
        client = redis.asyncio.cluster.RedisCluster(host=host, port=port)
        try:
            await client.initialize()
            nodes = _require(
                client, "nodes_manager", "redis.asyncio.cluster.RedisCluster.nodes_manager"
            )
            what = "redis.asyncio.cluster.NodesManager"
            _require_callable(nodes, "get_node_from_slot", f"{what}.get_node_from_slot", 0)
            _require_callable(nodes, "get_node", f"{what}.get_node", host="h", port=1)
            _require_callable(nodes, "initialize", f"{what}.initialize")
            lookup = _compat.slot_lookup(client)
            slot, owner, (other_host, other_port) = _slot_and_nodes(redis_cluster, lookup)
            assert _compat.node_at(client, owner.host, owner.port) is owner

            # (before the MOVED below: redis-py 8 then has the owner's connections reconnect)
            node = owner
            _require_callable(node, "acquire_connection", "asyncio ClusterNode.acquire_connection")
            if not (hasattr(node, "release") or hasattr(node, "_free")):
                _gone("asyncio ClusterNode.release (or _free, before 6.2)")
            conn = _compat.acquire_node_connection(node)
            await conn.connect()
            transport = _compat.async_transport(conn)
            assert not transport.is_closing()
            _compat.release_node_connection(node, conn)
            taken = []  # it went back to the node's free connections: it comes out again
            while conn not in taken and len(taken) < 20:
                taken.append(_compat.acquire_node_connection(node))
            for each in taken:
                _compat.release_node_connection(node, each)
            assert conn in taken

            moved = _compat.parse_error(f"MOVED {slot} {other_host}:{other_port}")
            await _compat.move_slot_async(client, moved)
            if (lookup(slot).host, lookup(slot).port) != (other_host, other_port):
                _gone(f"the MOVED update of {what}", " (the slot did not move)")
            await _compat.refresh_slots_async(client)
            assert _compat.slot_lookup(client)(slot).port == owner.port
        finally:
            await client.aclose()

    asyncio.run(main())
