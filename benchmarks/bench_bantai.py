"""bantai itself: the compiled build, the pure build (`BANTAI_NO_EXTENSIONS=1`) or the
compiled build with busy-polling (`BANTAI_BENCH_BUSY_POLL_US`), as the runner's
environment says; asyncio on stdlib asyncio or uvloop (`BANTAI_BENCH_LOOP`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import threading
import time
from typing import Any

import redis
import redis.asyncio

from benchmarks.common import ASYNC_SHAPES, BATCH, ITEM, Item, Results, bump, cli, run_loop


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    from bantai.redis import IMPLEMENTATION

    expected = os.environ.get("BANTAI_BENCH_EXPECT")
    if expected and expected.split("+")[0] != IMPLEMENTATION:
        raise SystemExit(f"expected the {expected} implementation, got {IMPLEMENTATION}")
    if suite == "async":
        return run_loop(_asyncio(url, count))  # type: ignore[no-any-return]
    if suite == "contention":
        return _contention(url, count)
    return _sync(url, count, int(os.environ.get("BANTAI_BENCH_BUSY_POLL_US", "0")))


def _sync(url: str, count: int, spin: int) -> dict[str, float]:
    from bantai import create_redis_storage, rate_limit, rate_limit_schema
    from bantai.redis import IMPLEMENTATION

    client = redis.Redis.from_url(url)
    storage = create_redis_storage(
        {"client": client}, Item, {"prefix": f"{IMPLEMENTATION}:", "busy_poll_us": spin}
    )
    keys = [f"many:{i}" for i in range(BATCH)]
    storage.set_many({k: ITEM for k in keys})
    storage.set("k", ITEM)
    limiter = create_redis_storage(
        {"client": client},
        rate_limit_schema,
        {"prefix": f"{IMPLEMENTATION}:rl:", "busy_poll_us": spin},
    )
    limit = {"type": "fixed-window", "limit": 10**9, "period": "1h", "key": "api"}
    out = Results()
    out.timed("rate_limit_consume", lambda: rate_limit.consume(limiter, limit), count)
    out.timed(
        "rate_limit_check_increment",
        lambda: (rate_limit.check(limiter, limit), rate_limit.increment(limiter, limit)),
        count // 3,
    )
    out.timed("get", lambda: storage.get("k"), count)
    out.timed("set_ttl", lambda: storage.set("s", ITEM, ttl_ms=60_000), count)
    out.timed("update", lambda: storage.update("u", bump), count // 2)
    out.timed("get_many_100", lambda: storage.get_many(keys), count // 20, BATCH)
    out.timed(
        "update_many_100",
        lambda: storage.update_many(keys, lambda k, c: bump(c)),
        count // 50,
        BATCH,
    )
    storage.close()
    limiter.close()
    client.close()
    return out


async def _asyncio(url: str, count: int) -> dict[str, float]:
    from bantai import create_async_redis_storage

    client = redis.asyncio.Redis.from_url(url)
    storage = create_async_redis_storage({"client": client}, Item, {"prefix": "async:"})
    await storage.set_many({f"g{t}": ITEM for t in range(50)})
    out = Results()
    for tasks, label in ASYNC_SHAPES:
        await out.timed_tasks(f"get {label}", lambda t, i: storage.get(f"g{t}"), count, tasks)
        await out.timed_tasks(
            f"set {label}", lambda t, i: storage.set(f"s{t}", ITEM, ttl_ms=60_000), count, tasks
        )
        await out.timed_tasks(
            f"update {label}", lambda t, i: storage.update(f"u{t}", bump), count // 2, tasks
        )
    # Contention: 50 tasks update ONE key at once (in-process hand-off), a few bursts.
    latencies: list[float] = []
    bursts, started = max(3, count // 500), time.perf_counter()

    async def one() -> None:
        began = time.perf_counter()
        await storage.update("hot", bump)
        latencies.append(time.perf_counter() - began)

    for _ in range(bursts):
        await asyncio.gather(*(one() for _ in range(50)))
    out["update 50 tasks 1 key"] = 50 * bursts / (time.perf_counter() - started)
    quantiles = statistics.quantiles(latencies, n=100)
    out["update 50 tasks 1 key p50 ms"] = quantiles[49] * 1000
    out["update 50 tasks 1 key p99 ms"] = quantiles[98] * 1000
    await storage.close()
    await client.aclose()
    return out


def _hammer(url: str, n: int, results: Any) -> None:
    """One process of the 8 x 8 contention run: 8 threads, `n` updates each, one key."""
    from bantai import LockTimeoutError, create_redis_storage

    storage = create_redis_storage({"url": url}, Item, {"prefix": "contended:"})
    timeouts = [0]
    latencies: list[float] = []

    def work() -> None:
        for _ in range(n):
            began = time.perf_counter()
            try:
                storage.update("hot", bump)
            except LockTimeoutError:
                timeouts[0] += 1
            latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((timeouts[0], latencies))
    storage.close()


def _contention(url: str, count: int) -> dict[str, float]:
    """8 processes x 8 threads updating one key at the default lock options."""
    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()
    n = max(5, count // 200)
    procs = [ctx.Process(target=_hammer, args=(url, n, queue)) for _ in range(8)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    got = [queue.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(60)
    latencies = [x for _, lat in got for x in lat]
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "update 8x8 1 key": 64 * n / elapsed,
        "update 8x8 1 key p99 ms": quantiles[98] * 1000,
        "update 8x8 1 key lock timeouts": float(sum(t for t, _ in got)),
    }


if __name__ == "__main__":
    cli(measure)
