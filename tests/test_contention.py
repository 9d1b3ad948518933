"""In-process hand-off of one key's updates (redis/local_line.KeyQueue): callers of one
adapter line up FIFO, only the first competes for the Redis lock, and the next goes as soon
as it is done. Correctness and fairness here; the latency figures are in the benchmark."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from bantai import LockTimeoutError, create_async_redis_storage, create_redis_storage
from bantai.redis.local_line import BYPASS, GOT_TURN, TIMED_OUT, KeyQueue
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix
from tests.models import Counter, increment


def test_threads_are_served_in_arrival_order() -> None:
    line = KeyQueue(60_000)
    assert line.acquire(b"k", time.monotonic() + 5) == GOT_TURN
    order: list[int] = []
    started = []

    def wait(i: int) -> None:
        assert line.acquire(b"k", time.monotonic() + 5) == GOT_TURN
        order.append(i)
        line.release(b"k")

    threads = []
    for i in range(5):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        started.append(t)
        time.sleep(0.02)  # a clear arrival order
        threads.append(t)
    line.release(b"k")
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert line.acquire(b"k", time.monotonic()) == GOT_TURN  # free again: nobody in line


def test_a_waiter_gives_up_at_its_deadline_and_leaves_the_line() -> None:
    line = KeyQueue(60_000)
    assert line.acquire(b"k", time.monotonic() + 5) == GOT_TURN
    assert line.acquire(b"k", time.monotonic() + 0.05) == TIMED_OUT
    line.release(b"k")
    assert line.acquire(b"k", time.monotonic()) == GOT_TURN  # the quitter is not in the way


def test_a_holder_overstaying_its_lease_holds_nobody_up() -> None:
    """Like the Redis lock: once the holder has had its turn longer than lock_ttl_ms, the
    others go for the lock without waiting for it (they must not hang with it)."""
    line = KeyQueue(100)
    assert line.acquire(b"k", time.monotonic() + 5) == GOT_TURN
    started = time.monotonic()
    assert line.acquire(b"k", time.monotonic() + 5) == BYPASS  # waited out the lease
    assert 0.08 <= time.monotonic() - started < 1
    assert line.acquire(b"k", time.monotonic() + 5) == BYPASS  # at once now
    line.release(b"k")
    assert line.acquire(b"k", time.monotonic()) == GOT_TURN


def test_a_cancelled_task_leaves_the_line_or_passes_its_turn_on() -> None:
    async def main() -> None:
        line = KeyQueue(60_000)
        assert await line.acquire_async(b"k", time.monotonic() + 5) == GOT_TURN
        first = asyncio.ensure_future(line.acquire_async(b"k", time.monotonic() + 5))
        second = asyncio.ensure_future(line.acquire_async(b"k", time.monotonic() + 5))
        await asyncio.sleep(0.01)
        line.release(b"k")  # the turn goes to `first`...
        first.cancel()  # ...which is cancelled before it runs: the turn passes on
        assert await asyncio.wait_for(second, 5) == GOT_TURN
        with pytest.raises(asyncio.CancelledError):
            await first
        line.release(b"k")
        assert await line.acquire_async(b"k", time.monotonic()) == GOT_TURN

    asyncio.run(main())


def test_50_tasks_on_one_key_complete_in_order_without_lock_timeouts(
    redis_server: LocalRedisServer,
) -> None:
    async def main() -> list[int]:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, Counter, {"prefix": unique_prefix(), "lock_timeout_ms": 2000}
        )
        done: list[int] = []

        async def one(i: int) -> None:
            await storage.update("k", increment)
            done.append(i)

        tasks = []
        for i in range(50):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0)  # arrival order = i
        await asyncio.gather(*tasks)
        assert await storage.get("k") == Counter(count=50)
        await storage.close()
        return done

    assert asyncio.run(main()) == list(range(50))


def test_reentrant_update_still_times_out(redis_server: LocalRedisServer) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url}, Counter, {"prefix": unique_prefix(), "lock_timeout_ms": 100}
    )

    def nested(current: Any) -> Any:
        return storage.update("k", increment)  # waits in line behind itself

    started = time.monotonic()
    with pytest.raises(LockTimeoutError):
        storage.update("k", nested)
    assert time.monotonic() - started < 1
    assert storage.update("k", increment) == Counter(count=1)
    storage.close()
