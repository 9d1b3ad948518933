"""What the local cache (`local_cache` option) buys and costs, on one server:

- a cached hot-key `get` (sync and asyncio): ops/s, and the per-call p50 / p99 latency;
- a miss (every `get` a miss: a one-entry cache read with two keys in turn) against the
  same `get` on the plain adapter: the median of nine interleaved rounds' ratios, in
  wall time and in this process's CPU time;
- the invalidation delay: from another client's acknowledged SET until the entry is gone
  here (applied by a lookup's catch-up), p50 / p99;
- how a hit hands out a value that nobody else holds: validating again from the cached
  bytes (what the adapter does) against `copy.deepcopy` and pydantic's `model_copy`.

`python -m benchmarks.bench_local_cache URL COUNT` prints one JSON object."""

from __future__ import annotations

import asyncio
import copy
import json
import statistics
import sys
import time
from typing import Any

import redis

from bantai import create_async_redis_storage, create_redis_storage
from benchmarks.common import ITEM, Item


def _rate(count: int, call: Any, *args: Any) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call(*args)
    return count / (time.perf_counter() - started)


def _timed(call: Any, keys: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per call over `keys`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for key in keys:
        call(key)
    return (time.perf_counter() - wall) / len(keys), (time.process_time() - cpu) / len(keys)


def _latencies_us(count: int, call: Any, *args: Any) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        call(*args)
        out.append((clock() - started) / 1000)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sync_figures(url: str, count: int) -> dict[str, float]:
    out: dict[str, float] = {}
    cached = create_redis_storage({"url": url}, Item, {"prefix": "lc:", "local_cache": True})
    plain = create_redis_storage({"url": url}, Item, {"prefix": "lc:"})
    one_entry = create_redis_storage(
        {"url": url}, Item, {"prefix": "lc:", "local_cache": {"max_entries": 1}}
    )
    numbers = create_redis_storage({"url": url}, int, {"prefix": "lc:", "local_cache": True})
    try:
        cached.set_many({"k": ITEM, "k2": ITEM})
        numbers.set("n", 7)
        for _ in range(100):  # warm
            cached.get("k")
            numbers.get("n")
            plain.get("k")
        hits = count * 20
        out["hit get (model)"] = _rate(hits, cached.get, "k")
        out["hit get (int)"] = _rate(hits, numbers.get, "n")
        latencies = _latencies_us(hits, cached.get, "k")
        out["hit p50 us"] = _pct(latencies, 0.50)
        out["hit p99 us"] = _pct(latencies, 0.99)
        # Miss against plain, interleaved so drift hits both alike.
        misses: list[tuple[float, float]] = []
        uncached: list[tuple[float, float]] = []
        keys = ["k2", "k"] * (count // 4)  # the other key was just evicted: all misses
        for _ in range(9):
            misses.append(_timed(one_entry.get, keys))
            uncached.append(_timed(plain.get, keys))
        out["miss get"] = statistics.median(1 / wall for wall, _ in misses)
        out["plain get"] = statistics.median(1 / wall for wall, _ in uncached)
        out["miss / plain get time"] = statistics.median(
            m[0] / u[0] for m, u in zip(misses, uncached, strict=True)
        )
        out["miss / plain get CPU"] = statistics.median(
            m[1] / u[1] for m, u in zip(misses, uncached, strict=True)
        )
        out.update(_invalidation_delay(url, cached, max(50, count // 4)))
        out.update(_copy_strategies(cached, hits // 4))
    finally:
        for storage in (cached, plain, one_entry, numbers):
            storage.close()
    return out


def _invalidation_delay(url: str, cached: Any, rounds: int) -> dict[str, float]:
    """From the writer's acknowledged SET to the entry being gone here."""
    writer = redis.Redis.from_url(url)
    redis_key = b"lc:k"
    entries = cached._cache.entries
    catch_up = cached._stream.catch_up
    delays: list[float] = []
    try:
        for i in range(rounds):
            cached.get("k")
            assert redis_key in entries
            writer.set(redis_key, json.dumps({**ITEM, "id": i}))
            acked = time.perf_counter_ns()
            deadline = acked + 1_000_000_000
            while redis_key in entries and time.perf_counter_ns() < deadline:
                catch_up()
            delays.append((time.perf_counter_ns() - acked) / 1000)
    finally:
        writer.close()
    return {
        "invalidation p50 us": _pct(delays, 0.50),
        "invalidation p99 us": _pct(delays, 0.99),
        "invalidation max us": max(delays),
    }


def _copy_strategies(cached: Any, count: int) -> dict[str, float]:
    """us per hit for each way of handing out an unshared value."""
    cached.get("k")
    cached.get("k")
    entry = cached._cache.entries[b"lc:k"]
    decode = cached._setup.codec.decode
    model = decode(entry.raw, "k")
    out = {}
    for name, call in (
        ("copy: validate from bytes us", lambda: decode(entry.raw, "k")),
        ("copy: deepcopy us", lambda: copy.deepcopy(model)),
        ("copy: model_copy(deep) us", lambda: model.model_copy(deep=True)),
    ):
        out[name] = 1e6 / _rate(count, call)
    return out


def async_figures(url: str, count: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        cached = create_async_redis_storage(
            {"url": url}, Item, {"prefix": "lc:", "local_cache": True}
        )
        try:
            await cached.set("k", ITEM)
            for _ in range(100):
                await cached.get("k")
            hits = count * 20
            started = time.perf_counter()
            for _ in range(hits):
                await cached.get("k")
            return {"async hit get (model)": hits / (time.perf_counter() - started)}
        finally:
            await cached.close()

    return asyncio.run(run())


def measure(url: str, count: int) -> dict[str, float]:
    return {**sync_figures(url, count), **async_figures(url, count)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
