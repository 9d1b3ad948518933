"""Every use of redis-py's private API, in one place.

The adapter keeps redis-py for what it does well (connecting, AUTH/HELLO, TLS, ACL,
Sentinel discovery, the cluster slot map) and moves the bytes itself, which needs a few
attributes redis-py does not document. They are reached only through this module, and
`tests/test_compat.py` fails loudly if a redis-py release moves them.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


def sync_socket(conn: Any) -> Any:
    """The socket of a connected sync `redis.connection.Connection` (None if closed)."""
    return conn._sock


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


__all__ = [
    "async_transport",
    "give_cluster_fresh_locks",
    "give_pool_fresh_locks",
    "sync_socket",
]
