"""Redis Cluster (a local 3-master cluster): the hash-tagged layout keeps a value, its lock
and a limiter's windows in one slot, batches spread over every node, no lost updates."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from bantai import (
    InvalidOptionError,
    create_async_redis_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from bantai.testing import LocalRedisCluster
from tests.conftest import unique_prefix
from tests.models import Counter, increment


def _client(cluster: LocalRedisCluster) -> RedisCluster:
    host, port = cluster.startup_nodes[0]
    return RedisCluster(host=host, port=port)


def test_layout_keeps_value_and_lock_in_one_slot(redis_cluster: LocalRedisCluster) -> None:
    client = _client(redis_cluster)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": "app:"})
    seen: dict[str, Any] = {}

    def look(current: Counter | None) -> Any:
        seen["lock"] = client.get("app:{user:1}:lock")
        return increment(current)

    storage.update("user:1", look)
    assert seen["lock"] is not None and len(seen["lock"]) == 32
    assert client.get("app:{user:1}") == b'{"count":1}'
    assert key_slot(b"app:{user:1}") == key_slot(b"app:{user:1}:lock")
    storage.close()
    client.close()


def test_batches_span_every_node(redis_cluster: LocalRedisCluster) -> None:
    client = _client(redis_cluster)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": unique_prefix()})
    keys = [f"k{i}" for i in range(60)]
    nodes = {
        client.nodes_manager.get_node_from_slot(key_slot(b"{%s}" % k.encode())).name for k in keys
    }
    assert len(nodes) == 3  # the batch really crosses all masters
    storage.set_many({k: {"count": 1} for k in keys}, ttl_ms=60_000)
    result = storage.update_many(keys, lambda key, c: increment(c))
    assert result == {k: Counter(count=2) for k in keys}
    assert storage.get_many(keys) == {k: Counter(count=2) for k in keys}
    for node in redis_cluster.nodes:  # NOSCRIPT on every node: recovered per node
        redis.Redis(port=node.port).script_flush()
    assert storage.update_many(keys[:10], lambda key, c: increment(c))["k0"] == Counter(count=3)
    storage.delete_many(keys)
    assert set(storage.get_many(keys).values()) == {None}
    storage.close()
    client.close()


def test_rate_limit_windows_share_the_slot(redis_cluster: LocalRedisCluster) -> None:
    client = _client(redis_cluster)
    limits = create_redis_storage({"client": client}, rate_limit_schema, {"prefix": "rl:"})
    for kind in ("fixed-window", "sliding-window", "token-bucket"):
        config = {"type": kind, "limit": 2, "period": "1m", "key": f"api:{kind}"}
        assert [rate_limit.consume(limits, config).allowed for _ in range(3)] == [True, True, False]
    limits.close()
    client.close()


def _count(host: str, port: int, prefix: str, n: int) -> None:
    client = RedisCluster(host=host, port=port)
    storage = create_redis_storage(
        {"client": client},
        Counter,
        {"prefix": prefix, "lock_timeout_ms": 60_000, "lock_ttl_ms": 60_000, "lock_retry_ms": 1},
    )
    for _ in range(n):
        storage.update("n", increment)
    client.close()


@pytest.mark.slow
def test_no_lost_updates_on_the_cluster(redis_cluster: LocalRedisCluster) -> None:
    """RELIABILITY property 1 on the cluster: 8 processes x 500 update(+1) on one key."""
    ctx = multiprocessing.get_context("fork")
    prefix = unique_prefix()
    host, port = redis_cluster.startup_nodes[0]
    procs = [ctx.Process(target=_count, args=(host, port, prefix, 500)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    client = _client(redis_cluster)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    assert storage.get("n") == Counter(count=4000)
    assert client.keys(prefix + "*lock", target_nodes=RedisCluster.ALL_NODES) == []
    client.close()


def test_asyncio_cluster_is_refused_clearly() -> None:
    with pytest.raises(InvalidOptionError, match="Cluster"):
        create_async_redis_storage(
            {"client": redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1)}, Counter
        )
