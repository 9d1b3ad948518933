"""Sentinel: the adapter on a Sentinel-managed client, through a real failover (one
master, one replica and a sentinel, all local processes started by the test)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.sentinel import Sentinel

from bantai import create_redis_storage
from bantai.testing import LocalRedisServer, LocalSentinel
from tests.models import Counter, increment


@pytest.fixture
def sentinel_set(
    own_redis_server: Callable[..., LocalRedisServer],
) -> Iterator[tuple[LocalRedisServer, LocalRedisServer, LocalSentinel]]:
    master = own_redis_server()
    replica = own_redis_server("--replicaof", "127.0.0.1", str(master.port))
    probe = redis.Redis(port=replica.port)
    deadline = time.monotonic() + 15
    while probe.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica never synced"
        time.sleep(0.05)
    probe.close()
    sentinel = LocalSentinel(master.port).start()
    yield master, replica, sentinel
    sentinel.stop()


def fail_over(sentinels: Sentinel, replica: LocalRedisServer) -> None:
    """Have the sentinel promote `replica` (bounded: 20 s)."""
    deadline = time.monotonic() + 20
    # The sentinel learns about the replica from the master's INFO (every few seconds).
    while ("127.0.0.1", replica.port) not in sentinels.discover_slaves("mymaster"):
        assert time.monotonic() < deadline, "the sentinel never saw the replica"
        time.sleep(0.1)
    while True:  # until the sentinel has the replica's own INFO and accepts the failover
        try:
            sentinels.sentinels[0].execute_command("SENTINEL", "FAILOVER", "mymaster")
            break
        except redis.exceptions.ResponseError as exc:
            assert "NOGOODSLAVE" in str(exc) and time.monotonic() < deadline, exc
            time.sleep(0.2)
    while sentinels.discover_master("mymaster")[1] != replica.port:
        assert time.monotonic() < deadline, "no failover"
        time.sleep(0.1)


def test_updates_survive_a_sentinel_failover(
    sentinel_set: tuple[LocalRedisServer, LocalRedisServer, LocalSentinel],
) -> None:
    master, replica, sentinel = sentinel_set
    sentinels = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2)
    client = sentinels.master_for("mymaster", socket_timeout=2)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": "sen:"})
    for _ in range(5):
        storage.update("c", increment)
    assert storage.get("c") == Counter(count=5)
    assert redis.Redis(port=master.port).wait(1, 2000) == 1  # the replica has every write

    fail_over(sentinels, replica)

    # Calls during the switch may fail (READONLY from the demoted master, a dropped
    # connection); the adapter then drops the connection so the next call reaches the new
    # master through the Sentinel-managed pool.
    errors = 0
    while True:
        try:
            value = storage.update("c", increment)
            break
        except (redis.exceptions.ReadOnlyError, redis.exceptions.ConnectionError):
            errors += 1
            assert errors < 50, "never reached the new master"
            time.sleep(0.1)
    assert value == Counter(count=6)  # nothing acknowledged was lost, nothing applied twice
    assert storage.get("c") == Counter(count=6)
    assert redis.Redis(port=replica.port).exists("sen:c:lock") == 0
    storage.close()
    client.close()


def test_asyncio_adapter_on_a_sentinel_client(
    sentinel_set: tuple[LocalRedisServer, LocalRedisServer, LocalSentinel],
) -> None:
    import asyncio

    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    from bantai import create_async_redis_storage

    _, _, sentinel = sentinel_set

    async def main() -> None:
        client = AsyncSentinel([("127.0.0.1", sentinel.port)]).master_for("mymaster")
        storage = create_async_redis_storage(
            {"client": client}, Counter, {"prefix": "asen:", "lock_retry_ms": 2}
        )
        await asyncio.gather(*(storage.update("c", increment) for _ in range(50)))
        assert await storage.get("c") == Counter(count=50)
        await storage.close()
        await client.aclose()

    asyncio.run(main())
