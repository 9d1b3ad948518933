"""One measurement round, run in a child process so each implementation is imported as a
user would get it: `python -m benchmarks.workloads --impl cython|python|baseline --url U`.

Prints one JSON object: workload name -> operations (or keys) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import redis
from pydantic import BaseModel

from bantai.redis import scripts


class Item(BaseModel):
    id: int
    name: str
    score: float


ITEM = {"id": 7, "name": "widget", "score": 1.5}
BATCH = 100
BUSY_POLL_US = 100


def bump(current: Item | None) -> dict[str, Any]:
    base = current or Item(**ITEM)
    return {"value": base.model_copy(update={"id": base.id + 1})}


def _timed(fn: Callable[[], object], count: int, per_call: int = 1) -> float:
    for _ in range(max(1, count // 10)):  # warm-up: connections, script cache, caches
        fn()
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return count * per_call / (time.perf_counter() - started)


def bantai_workloads(url: str, count: int) -> dict[str, float]:
    from bantai import create_redis_storage
    from bantai.redis import IMPLEMENTATION

    expected = os.environ.get("BANTAI_BENCH_EXPECT")
    if expected and expected.split("+")[0] != IMPLEMENTATION:
        raise SystemExit(f"expected the {expected} implementation, got {IMPLEMENTATION}")
    client = redis.Redis.from_url(url)
    spin = int(os.environ.get("BANTAI_BENCH_BUSY_POLL_US", "0"))
    storage = create_redis_storage(
        {"client": client}, Item, {"prefix": f"{IMPLEMENTATION}:", "busy_poll_us": spin}
    )
    keys = [f"many:{i}" for i in range(BATCH)]
    storage.set_many({k: ITEM for k in keys})
    storage.set("k", ITEM)
    from bantai import rate_limit, rate_limit_schema

    limiter = create_redis_storage(
        {"client": client},
        rate_limit_schema,
        {"prefix": f"{IMPLEMENTATION}:rl:", "busy_poll_us": spin},
    )
    limit = {"type": "fixed-window", "limit": 10**9, "period": "1h", "key": "api"}
    out = {
        "rate_limit_consume": _timed(lambda: rate_limit.consume(limiter, limit), count),
        "rate_limit_check_increment": _timed(
            lambda: (rate_limit.check(limiter, limit), rate_limit.increment(limiter, limit)),
            count // 3,
        ),
        "get": _timed(lambda: storage.get("k"), count),
        "set_ttl": _timed(lambda: storage.set("s", ITEM, ttl_ms=60_000), count),
        "update": _timed(lambda: storage.update("u", bump), count // 2),
        "get_many_100": _timed(lambda: storage.get_many(keys), count // 20, BATCH),
        "update_many_100": _timed(
            lambda: storage.update_many(keys, lambda k, c: bump(c)), count // 50, BATCH
        ),
    }
    storage.close()
    client.close()
    return out


def baseline_workloads(url: str, count: int) -> dict[str, float]:
    """What a careful developer writes by hand with redis-py + hiredis + pydantic-core."""
    import secrets

    client = redis.Redis.from_url(url)
    validator = Item.__pydantic_validator__
    serializer = Item.__pydantic_serializer__
    acquire = client.register_script(scripts.ACQUIRE.source)
    commit = client.register_script(scripts.COMMIT.source)
    keys = [f"base:many:{i}" for i in range(BATCH)]
    client.mset({k: serializer.to_json(validator.validate_python(ITEM)) for k in keys})
    client.set("base:k", serializer.to_json(validator.validate_python(ITEM)))

    def get() -> object:
        raw = client.get("base:k")
        return None if raw is None else validator.validate_json(raw)

    def set_ttl() -> None:
        client.set("base:s", serializer.to_json(validator.validate_python(ITEM)), px=60_000)

    def update() -> object:
        token = secrets.token_hex(16)
        while True:
            (entry,) = acquire(keys=["base:u", "base:u:lock"], args=[token, 10_000])
            if entry[0] == 1:
                break
            time.sleep(0.05)
        current = validator.validate_json(entry[1]) if len(entry) > 1 else None
        new = validator.validate_python(bump(current)["value"])
        data = serializer.to_json(new)
        commit(keys=["base:u", "base:u:lock"], args=[token, "keep", data, ""])
        return new

    def get_many() -> object:
        return [None if r is None else validator.validate_json(r) for r in client.mget(keys)]

    def update_many() -> object:
        token = secrets.token_hex(16)
        pipe = client.pipeline(transaction=False)
        for k in keys:
            acquire(keys=[k, k + ":lock"], args=[token, 10_000], client=pipe)
        entries = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for k, (entry,) in zip(keys, entries, strict=True):
            current = validator.validate_json(entry[1]) if len(entry) > 1 else None
            data = serializer.to_json(validator.validate_python(bump(current)["value"]))
            commit(keys=[k, k + ":lock"], args=[token, "keep", data, ""], client=pipe)
        return pipe.execute()

    out = {
        "get": _timed(get, count),
        "set_ttl": _timed(set_ttl, count),
        **_limits_library(url, count),
        "update": _timed(update, count // 2),
        "get_many_100": _timed(get_many, count // 20, BATCH),
        "update_many_100": _timed(update_many, count // 50, BATCH),
    }
    client.close()
    return out


async def _timed_tasks(fn: Callable[[int, int], Any], count: int, tasks: int) -> float:
    """`tasks` concurrent tasks share the work; task t's i-th call is fn(t, i)."""
    import asyncio

    per_task = max(1, count // tasks)

    async def worker(t: int, n: int) -> None:
        for i in range(n):
            await fn(t, i)

    await asyncio.gather(*(worker(t, max(1, per_task // 10)) for t in range(tasks)))  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(worker(t, per_task) for t in range(tasks)))
    return per_task * tasks / (time.perf_counter() - started)


ASYNC_SHAPES = ((1, "1 task"), (50, "50 tasks"))


async def bantai_async_workloads(url: str, count: int) -> dict[str, float]:
    import redis.asyncio

    from bantai import create_async_redis_storage

    client = redis.asyncio.Redis.from_url(url)
    storage = create_async_redis_storage({"client": client}, Item, {"prefix": "async:"})
    await storage.set_many({f"g{t}": ITEM for t in range(50)})
    out: dict[str, float] = {}
    for tasks, label in ASYNC_SHAPES:
        out[f"get {label}"] = await _timed_tasks(lambda t, i: storage.get(f"g{t}"), count, tasks)
        out[f"set {label}"] = await _timed_tasks(
            lambda t, i: storage.set(f"s{t}", ITEM, ttl_ms=60_000), count, tasks
        )
        out[f"update {label}"] = await _timed_tasks(
            lambda t, i: storage.update(f"u{t}", bump), count // 2, tasks
        )
    await storage.close()
    await client.aclose()
    return out


async def baseline_async_workloads(url: str, count: int) -> dict[str, float]:
    """50 tasks sharing one redis.asyncio.Redis, written the obvious way."""
    import secrets

    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, max_connections=1000)
    validator = Item.__pydantic_validator__
    serializer = Item.__pydantic_serializer__
    acquire = client.register_script(scripts.ACQUIRE.source)
    commit = client.register_script(scripts.COMMIT.source)
    data = serializer.to_json(validator.validate_python(ITEM))
    await client.mset({f"base:g{t}": data for t in range(50)})

    async def get(t: int, i: int) -> object:
        raw = await client.get(f"base:g{t}")
        return None if raw is None else validator.validate_json(raw)

    async def set_ttl(t: int, i: int) -> None:
        await client.set(
            f"base:s{t}", serializer.to_json(validator.validate_python(ITEM)), px=60_000
        )

    async def update(t: int, i: int) -> object:
        import asyncio

        key = f"base:u{t}"
        token = secrets.token_hex(16)
        while True:
            (entry,) = await acquire(keys=[key, key + ":lock"], args=[token, 10_000])
            if entry[0] == 1:
                break
            await asyncio.sleep(0.05)
        current = validator.validate_json(entry[1]) if len(entry) > 1 else None
        new = validator.validate_python(bump(current)["value"])
        await commit(keys=[key, key + ":lock"], args=[token, "keep", serializer.to_json(new), ""])
        return new

    out: dict[str, float] = {}
    for tasks, label in ASYNC_SHAPES:
        out[f"get {label}"] = await _timed_tasks(get, count, tasks)
        out[f"set {label}"] = await _timed_tasks(set_ttl, count, tasks)
        out[f"update {label}"] = await _timed_tasks(update, count // 2, tasks)
    await client.aclose()
    return out


def _limits_library(url: str, count: int) -> dict[str, float]:
    """The `limits` package's fixed window on the same server, when it is installed (its
    `redis` extra pins redis-py < 8, so the bench extra installs it without the extra)."""
    try:
        from limits import parse, storage, strategies
    except ImportError:
        return {}
    limiter = strategies.FixedWindowRateLimiter(storage.storage_from_string(url))
    item = parse("1000000000/hour")
    return {"rate_limit_consume": _timed(lambda: limiter.hit(item, "api"), count)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--impl", choices=["cython", "python", "baseline", "cython+busy-poll"], required=True
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--suite", choices=["sync", "async"], default="sync")
    args = parser.parse_args()
    if args.suite == "async":
        import asyncio

        if args.impl == "baseline":
            print(json.dumps(asyncio.run(baseline_async_workloads(args.url, args.count))))
        else:
            print(json.dumps(asyncio.run(bantai_async_workloads(args.url, args.count))))
        return
    if args.impl == "cython+busy-poll":
        os.environ["BANTAI_BENCH_BUSY_POLL_US"] = str(BUSY_POLL_US)
    if args.impl == "baseline":
        result = baseline_workloads(args.url, args.count)
    else:
        result = bantai_workloads(args.url, args.count)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
