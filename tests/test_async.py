"""The asyncio adapters beyond the shared conformance suite: concurrency on one connection,
async updaters, cancellation at every point, connection loss, event-loop misuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from bantai import (
    LockLostError,
    LockTimeoutError,
    StorageError,
    create_async_memory_storage,
    create_async_redis_storage,
)
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix
from tests.models import Counter, increment

KINDS = ["async-memory", "async-redis"]


def _make(kind: str, url: str, schema: Any = Counter, **options: Any) -> Any:
    options.setdefault("prefix", unique_prefix())
    if kind == "async-memory":
        return create_async_memory_storage(schema, options)
    return create_async_redis_storage({"url": url}, schema, options)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def _lock_keys(raw: redis.Redis, storage: Any) -> list[bytes]:
    return raw.keys(storage.options.prefix + "*lock")  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", KINDS)
def test_async_updaters(kind: str, redis_server: LocalRedisServer) -> None:
    async def main() -> None:
        storage = _make(kind, redis_server.url)

        async def coroutine_updater(current: Counter | None) -> dict[str, Any]:
            await asyncio.sleep(0)
            return increment(current)

        assert await storage.update("c", coroutine_updater) == Counter(count=1)
        assert await storage.update("c", increment) == Counter(count=2)  # plain function

        async def keyed(key: str, current: Counter | None) -> dict[str, Any]:
            return increment(current)

        assert await storage.update_many(["c", "d"], keyed) == {
            "c": Counter(count=3),
            "d": Counter(count=1),
        }
        await storage.close()

    run(main())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_no_lost_updates_64_tasks(
    kind: str, redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    """docs/reliability.md, property 1 (asyncio): 64 tasks x 250 update(+1) on one key."""

    async def main() -> Any:
        storage = _make(
            kind, redis_server.url, lock_timeout_ms=60_000, lock_ttl_ms=60_000, lock_retry_ms=1
        )

        async def worker() -> None:
            for _ in range(250):
                await storage.update("n", increment)

        await asyncio.gather(*(worker() for _ in range(64)))
        result = await storage.get("n")
        await storage.close()
        return storage, result

    storage, result = run(main())
    assert result == Counter(count=16_000)
    assert _lock_keys(raw, storage) == []


def test_many_concurrent_gets_share_one_connection(
    redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        storage = create_async_redis_storage({"client": client}, Counter, {"prefix": "mux:"})
        await storage.set_many({f"k{i}": {"count": i} for i in range(1000)})
        before = raw.info("clients")["connected_clients"]
        results = await asyncio.gather(*(storage.get(f"k{i}") for i in range(1000)))
        assert results == [Counter(count=i) for i in range(1000)]  # each its own reply
        during = raw.info("clients")["connected_clients"]
        assert during == before  # no task took a socket of its own
        mixed = await asyncio.gather(
            *(storage.update(f"k{i}", increment) for i in range(0, 1000, 7)),
            *(storage.get(f"k{i}") for i in range(1, 1000, 7)),
        )
        assert mixed[: len(range(0, 1000, 7))] == [Counter(count=i + 1) for i in range(0, 1000, 7)]
        await storage.close()
        await client.aclose()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_lock_semantics_on_asyncio(kind: str, redis_server: LocalRedisServer) -> None:
    async def main() -> None:
        storage = _make(
            kind, redis_server.url, lock_timeout_ms=200, lock_ttl_ms=300, lock_retry_ms=20
        )

        # re-entrant update inside an async updater: a timeout, never a hang
        async def nested(current: Counter | None) -> Any:
            return await storage.update("c", increment)

        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="Failed to acquire lock"):
            await storage.update("c", nested)
        assert time.monotonic() - started < 0.2 + 0.02 + 0.15

        # lock lost: the holder outlives lock_ttl_ms while another task commits
        async def slow(current: Counter | None) -> dict[str, Any]:
            await asyncio.sleep(0.4)
            return {"value": {"count": 1000}}

        holder = asyncio.create_task(storage.update("d", slow))
        await asyncio.sleep(0.35)
        assert await storage.update("d", increment) == Counter(count=1)
        with pytest.raises(LockLostError):
            await holder
        assert await storage.get("d") == Counter(count=1)
        await storage.close()

    run(main())


def _lock_key_exists(url: str, key: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.exists(key))
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_while_waiting_for_the_lock(kind: str, redis_server: LocalRedisServer) -> None:
    async def main() -> None:
        storage = _make(kind, redis_server.url, lock_timeout_ms=5000, lock_retry_ms=10)
        release = asyncio.Event()

        async def hold(current: Counter | None) -> dict[str, Any]:
            await release.wait()
            return increment(current)

        holder = asyncio.create_task(storage.update("c", hold))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(storage.update("c", increment))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        assert await holder == Counter(count=1)
        started = time.monotonic()
        assert await storage.update("c", increment) == Counter(count=2)
        assert time.monotonic() - started < 0.5  # the cancelled waiter left nothing behind
        await storage.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_inside_the_updater_releases(kind: str, redis_server: LocalRedisServer) -> None:
    async def main() -> None:
        storage = _make(kind, redis_server.url, lock_timeout_ms=5000, lock_ttl_ms=10_000)
        await storage.set("c", {"count": 5})
        entered = asyncio.Event()

        async def stuck(current: Counter | None) -> dict[str, Any]:
            entered.set()
            await asyncio.sleep(3600)
            return increment(current)

        task = asyncio.create_task(storage.update("c", stuck))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        assert await storage.update("c", increment) == Counter(count=6)  # released at once
        assert time.monotonic() - started < 0.5
        if kind == "async-redis":
            assert not _lock_key_exists(redis_server.url, storage.options.prefix + "c:lock")
        await storage.close()

    run(main())


def test_cancel_during_commit_keeps_connection_in_step(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    server = own_redis_server()

    async def main() -> None:
        storage = create_async_redis_storage({"url": server.url}, Counter, {"prefix": "cc:"})
        admin = redis.asyncio.Redis.from_url(server.url)
        await storage.set_many({"c": {"count": 0}, "other": {"count": 42}})
        await storage.update("c", increment)  # scripts loaded: the commit will not NOSCRIPT

        async def pause_writes(current: Counter | None) -> dict[str, Any]:
            await admin.client_pause(300, all=False)  # the commit waits in the server
            return increment(current)

        task = asyncio.create_task(storage.update("c", pause_writes))
        await asyncio.sleep(0.1)  # the commit is in flight now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Other tasks on the same connection still get their own replies, in order.
        got = await asyncio.gather(*(storage.get("other") for _ in range(20)))
        assert got == [Counter(count=42)] * 20
        # The release went out after the commit on the same connection: the commit ran
        # (here: applied, the lock was still ours), then the lock was released.
        assert await storage.get("c") == Counter(count=2)
        assert not await admin.exists("cc:c:lock")
        await admin.aclose()
        await storage.close()

    run(main())


def test_server_killed_mid_flight_then_back(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    server = own_redis_server()

    async def main() -> None:
        storage = create_async_redis_storage({"url": server.url}, Counter, {"prefix": "k:"})
        await storage.set("c", {"count": 1})
        server.signal(__import__("signal").SIGSTOP)
        pending = [asyncio.create_task(storage.get("c")) for _ in range(50)]
        await asyncio.sleep(0.1)
        server.process.kill()  # type: ignore[union-attr]
        server.process.wait()  # type: ignore[union-attr]
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results), results
        server.start()  # same port, empty
        assert await storage.get("c") is None
        assert await storage.update("c", increment) == Counter(count=1)
        await storage.close()

    run(main())


def test_other_event_loop_is_a_clear_error(redis_server: LocalRedisServer) -> None:
    storage = create_async_redis_storage(
        {"url": redis_server.url}, Counter, {"prefix": unique_prefix()}
    )

    async def use() -> Any:
        return await storage.update("c", increment)

    assert asyncio.run(use()) == Counter(count=1)
    with pytest.raises(StorageError, match="event loop"):
        asyncio.run(asyncio.wait_for(use(), 5))


def test_script_flush_under_concurrency(redis_server: LocalRedisServer, raw: redis.Redis) -> None:
    async def main() -> None:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, Counter, {"prefix": "sf:", "lock_retry_ms": 2}
        )
        await storage.update("warm", increment)
        raw.script_flush()
        results = await asyncio.gather(*(storage.update(f"k{i % 5}", increment) for i in range(50)))
        assert len(results) == 50
        assert await storage.get_many([f"k{i}" for i in range(5)]) == {
            f"k{i}": Counter(count=10) for i in range(5)
        }
        await storage.close()

    run(main())


def test_factory_checks(redis_server: LocalRedisServer) -> None:
    from bantai import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="Either client or url"):
        create_async_redis_storage({}, Counter)
    with pytest.raises(InvalidOptionError, match="not an asyncio client"):
        create_async_redis_storage({"client": redis.Redis()}, Counter)
    with pytest.raises(InvalidOptionError, match="busy_poll_us"):
        create_async_redis_storage({"url": redis_server.url}, Counter, {"busy_poll_us": 10})
