"""bantai itself: the compiled build, the pure build (`BANTAI_NO_EXTENSIONS=1`) or the
compiled build with busy-polling (`BANTAI_BENCH_BUSY_POLL_US`), as the runner's
environment says."""

from __future__ import annotations

import asyncio
import os

import redis
import redis.asyncio

from benchmarks.common import ASYNC_SHAPES, BATCH, ITEM, Item, bump, cli, timed, timed_tasks


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    from bantai.redis import IMPLEMENTATION

    expected = os.environ.get("BANTAI_BENCH_EXPECT")
    if expected and expected.split("+")[0] != IMPLEMENTATION:
        raise SystemExit(f"expected the {expected} implementation, got {IMPLEMENTATION}")
    if suite == "async":
        return asyncio.run(_asyncio(url, count))
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
    out = {
        "rate_limit_consume": timed(lambda: rate_limit.consume(limiter, limit), count),
        "rate_limit_check_increment": timed(
            lambda: (rate_limit.check(limiter, limit), rate_limit.increment(limiter, limit)),
            count // 3,
        ),
        "get": timed(lambda: storage.get("k"), count),
        "set_ttl": timed(lambda: storage.set("s", ITEM, ttl_ms=60_000), count),
        "update": timed(lambda: storage.update("u", bump), count // 2),
        "get_many_100": timed(lambda: storage.get_many(keys), count // 20, BATCH),
        "update_many_100": timed(
            lambda: storage.update_many(keys, lambda k, c: bump(c)), count // 50, BATCH
        ),
    }
    storage.close()
    limiter.close()
    client.close()
    return out


async def _asyncio(url: str, count: int) -> dict[str, float]:
    from bantai import create_async_redis_storage

    client = redis.asyncio.Redis.from_url(url)
    storage = create_async_redis_storage({"client": client}, Item, {"prefix": "async:"})
    await storage.set_many({f"g{t}": ITEM for t in range(50)})
    out: dict[str, float] = {}
    for tasks, label in ASYNC_SHAPES:
        out[f"get {label}"] = await timed_tasks(lambda t, i: storage.get(f"g{t}"), count, tasks)
        out[f"set {label}"] = await timed_tasks(
            lambda t, i: storage.set(f"s{t}", ITEM, ttl_ms=60_000), count, tasks
        )
        out[f"update {label}"] = await timed_tasks(
            lambda t, i: storage.update(f"u{t}", bump), count // 2, tasks
        )
    await storage.close()
    await client.aclose()
    return out


if __name__ == "__main__":
    cli(measure)
