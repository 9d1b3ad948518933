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
from bantai.redis import sync_driver
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
    """docs/reliability.md, property 1 on the cluster: 8 processes x 500 update(+1) on one key."""
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


def test_asyncio_adapter_on_the_cluster(redis_cluster: LocalRedisCluster) -> None:
    """One auto-pipelined channel per node; batches and 64 concurrent updaters stay exact."""
    import asyncio

    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    async def main() -> None:
        host, port = redis_cluster.startup_nodes[0]
        client = AsyncRedisCluster(host=host, port=port)
        storage = create_async_redis_storage(
            {"client": client}, Counter, {"prefix": unique_prefix(), "lock_retry_ms": 2}
        )
        keys = [f"k{i}" for i in range(60)]
        await storage.set_many({k: {"count": i} for i, k in enumerate(keys)})
        got = await asyncio.gather(*(storage.get(k) for k in keys))
        assert got == [Counter(count=i) for i in range(60)]
        await asyncio.gather(*(storage.update("hot", increment) for _ in range(64)))
        assert await storage.get("hot") == Counter(count=64)
        result = await storage.update_many(keys, lambda key, c: increment(c))
        assert result["k59"] == Counter(count=60)
        await storage.close()
        await client.aclose()

    asyncio.run(main())


def test_wrong_client_kinds_are_refused(redis_cluster: LocalRedisCluster) -> None:
    client = _client(redis_cluster)  # a blocking cluster client
    with pytest.raises(InvalidOptionError, match="not an asyncio client"):
        create_async_redis_storage({"client": client}, Counter)
    client.close()


def _move_slot(cluster: LocalRedisCluster, slot: int, source_port: int, target_port: int) -> None:
    """Move one slot (and its keys) between masters, as `redis-cli --cluster reshard` does."""
    source, target = redis.Redis(port=source_port), redis.Redis(port=target_port)
    source_id = source.execute_command("CLUSTER", "MYID").decode()
    target_id = target.execute_command("CLUSTER", "MYID").decode()
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes:
        redis.Redis(port=node.port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    source.close()
    target.close()


def test_moved_slot_is_followed(
    redis_cluster: LocalRedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a slot moves to another master, the adapter's stale slot map gets MOVED (the
    command did not run), records the new owner, and resends only that command."""
    client = _client(redis_cluster)
    prefix = unique_prefix()
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    storage.update("moving", increment)  # the client now caches the slot's owner
    slot = key_slot(f"{prefix}{{moving}}".encode())
    owner = client.nodes_manager.get_node_from_slot(slot)
    target = next(n for n in redis_cluster.nodes if n.port != owner.port)
    _move_slot(redis_cluster, slot, owner.port, target.port)
    moves = []
    move_slot = sync_driver.move_slot  # records the MOVED in redis-py's map (_compat)
    monkeypatch.setattr(
        sync_driver, "move_slot", lambda c, e: (moves.append(e.slot_id), move_slot(c, e))
    )
    try:
        assert storage.update("moving", increment) == Counter(count=2)
        assert moves and set(moves) == {slot}  # the stale map really was hit (MOVED)
        assert storage.get("moving") == Counter(count=2)
        assert redis.Redis(port=target.port).get(f"{prefix}{{moving}}") == b'{"count":2}'
    finally:
        _move_slot(redis_cluster, slot, target.port, owner.port)  # leave the cluster as found
    storage.close()
    client.close()
