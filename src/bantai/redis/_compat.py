"""Every use of redis-py's private or undocumented API, in one place.

The adapter keeps redis-py for what it does well (connecting, AUTH/HELLO, TLS, ACL,
Sentinel discovery, the cluster slot map) and moves the bytes itself, which needs a few
attributes redis-py does not document. They are reached only through this module, and
`tests/test_compat.py` fails loudly, naming the redis-py version and the attribute, if a
redis-py release moves them. Supported: redis-py 5.3 to 8.x (`redis>=5.3,<9`); where
those releases differ, the functions here pick what the installed one has.

The compiled `_speedups` imports `SOCK_ATTR` and `parse_error` from here at module
initialisation, so it has no redis-py internals of its own either.
"""

from __future__ import annotations

import inspect
import operator
import queue
import threading
from collections.abc import Callable
from typing import Any

import redis.cluster
from redis._parsers import BaseParser

# --- connections ---------------------------------------------------------------------------

SOCK_ATTR = "_sock"
"""The attribute of a sync `redis.connection.Connection` holding its socket (None while
disconnected). The compiled `_speedups.Wire` reads `conn._sock` directly — a getattr with
this constant measured ~20-40 ns more per exchange there — and its module asserts at
import that this constant is still `"_sock"`; test_compat checks both twins use it."""

# redis-py 5.x knows the cluster errors (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, ...) only in
# its cluster parser; from 6.0 they are in BaseParser itself, and ClusterParser is gone.
_ErrorParser: Any = getattr(redis.cluster, "ClusterParser", None) or BaseParser

parse_error: Callable[[str], Exception] = _ErrorParser.parse_error
"""redis-py's error-reply parser (`"NOSCRIPT ..."` -> `NoScriptError(...)`, `"MOVED ..."`
-> `MovedError`, ...): the `replyError` callback of the wires' hiredis readers, so error
replies become the very exception classes redis-py raises."""


sync_socket: Callable[[Any], Any] = operator.attrgetter(SOCK_ATTR)
"""`sync_socket(conn)`: the socket of a sync `redis.connection.Connection` (None while
disconnected). An `attrgetter`: the cheapest call there is, for the pure wire's hot path."""


def async_transport(conn: Any) -> Any:
    """The asyncio transport under a connected `redis.asyncio.Connection`'s stream."""
    return conn._writer.transport


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _renew_locks(owner: Any) -> None:
    """Replace every lock held directly by `owner`, and by the plain objects it holds (its
    event dispatcher, its maintenance-notification handler, ...), with a new one."""
    if owner is None:
        return
    for obj in (owner, *list(vars(owner).values())):
        if isinstance(obj, (type, threading.Condition, queue.Queue)) or not hasattr(
            obj, "__dict__"
        ):
            continue
        for name, value in list(vars(obj).items()):
            if isinstance(value, _LOCK_TYPES):
                setattr(obj, name, threading.RLock())


def give_pool_fresh_locks(pool: Any) -> None:
    """In a forked child: give a connection pool new locks and empty state before anything
    touches it. A lock another parent thread held at fork time stays held forever in the
    child; redis-py's own after-fork check (`_checkpid`) takes the old `_fork_lock` and
    then `reset()` takes the old `_lock`, and `release()` takes its event dispatcher's, so
    a child could hang on its first command."""
    _renew_locks(pool)
    pool.reset()  # forget the parent's connections; the pid check then passes


def give_cluster_fresh_locks(client: Any) -> None:
    """The same for a sync `RedisCluster` and its slot map (`NodesManager`)."""
    _renew_locks(client)
    _renew_locks(getattr(client, "nodes_manager", None))


# --- Redis Cluster: redis-py's slot map (`RedisCluster.nodes_manager`) and nodes ----------


def slot_lookup(client: Any) -> Callable[[int], Any]:
    """`slot -> ClusterNode` (the primary) from a sync or asyncio `RedisCluster`'s slot map;
    fetched once per routing, called per key."""
    lookup: Callable[[int], Any] = client.nodes_manager.get_node_from_slot
    return lookup


def node_at(client: Any, host: str, port: int) -> Any:
    """The known cluster node at host:port, or None."""
    return client.nodes_manager.get_node(host=host, port=port)


def move_slot(client: Any, error: Exception) -> None:
    """Record a MOVED redirect in a sync `RedisCluster`'s slot map: redis-py >= 7.2 moves
    the slot at once (`move_slot`); 5.3 - 7.1 keep the error and move the slot at the next
    lookup (`update_moved_exception`), which the resend does."""
    nodes = client.nodes_manager
    move = getattr(nodes, "move_slot", None)
    if move is not None:
        move(error)
    else:
        nodes.update_moved_exception(error)


async def move_slot_async(client: Any, error: Exception) -> None:
    """The same for an asyncio `RedisCluster`: `move_slot` is a coroutine function from
    redis-py 7.4 and a plain one in 7.2 - 7.3; 6.2 - 7.1 have `update_moved_exception`,
    5.3 - 6.1 only the `_moved_exception` attribute it sets."""
    nodes = client.nodes_manager
    move = getattr(nodes, "move_slot", None)
    if move is not None:
        moved = move(error)
        if inspect.isawaitable(moved):
            await moved
    elif hasattr(nodes, "update_moved_exception"):
        nodes.update_moved_exception(error)
    else:
        nodes._moved_exception = error


def refresh_slots(client: Any) -> None:
    """Reload a sync `RedisCluster`'s slot map from the cluster."""
    client.nodes_manager.initialize()


async def refresh_slots_async(client: Any) -> None:
    """Reload an asyncio `RedisCluster`'s slot map from the cluster."""
    await client.nodes_manager.initialize()


def acquire_node_connection(node: Any) -> Any:
    """A connection (not yet connected) from an asyncio `ClusterNode`'s own free list."""
    return node.acquire_connection()


def release_node_connection(node: Any, conn: Any) -> None:
    """Give a connection back to an asyncio `ClusterNode`: `release` from redis-py 6.2;
    before, the node's `_free` deque is what its own commands append to."""
    release = getattr(node, "release", None)
    if release is not None:
        release(conn)
    else:
        node._free.append(conn)


__all__ = [
    "SOCK_ATTR",
    "acquire_node_connection",
    "async_transport",
    "give_cluster_fresh_locks",
    "give_pool_fresh_locks",
    "move_slot",
    "move_slot_async",
    "node_at",
    "parse_error",
    "refresh_slots",
    "refresh_slots_async",
    "release_node_connection",
    "slot_lookup",
    "sync_socket",
]
