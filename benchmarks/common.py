"""What every benchmark module shares: the value measured, the timing loops, and the
command line each competitor module exposes (`python -m benchmarks.bench_<name> --url U
--count N --suite sync|async` prints one JSON object: workload -> ops/s, keys/s for
batches). Each competitor runs in a child process of its own, imported as a user would
get it."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel


class Item(BaseModel):
    id: int
    name: str
    score: float


ITEM = {"id": 7, "name": "widget", "score": 1.5}
BATCH = 100
ASYNC_SHAPES = ((1, "1 task"), (50, "50 tasks"))

Measure = Callable[[str, int, str], dict[str, float]]


def bump(current: Item | None) -> dict[str, Any]:
    """The updater every `update` workload runs."""
    base = current or Item(**ITEM)
    return {"value": base.model_copy(update={"id": base.id + 1})}


def timed(fn: Callable[[], object], count: int, per_call: int = 1) -> float:
    """Calls (or keys) per second of `fn`, after a warm-up of a tenth as many calls."""
    for _ in range(max(1, count // 10)):  # connections, script cache, caches
        fn()
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return count * per_call / (time.perf_counter() - started)


async def timed_tasks(fn: Callable[[int, int], Awaitable[Any]], count: int, tasks: int) -> float:
    """`tasks` concurrent tasks share the work; task t's i-th call is fn(t, i)."""
    per_task = max(1, count // tasks)

    async def worker(t: int, n: int) -> None:
        for i in range(n):
            await fn(t, i)

    await asyncio.gather(*(worker(t, max(1, per_task // 10)) for t in range(tasks)))  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(worker(t, per_task) for t in range(tasks)))
    return per_task * tasks / (time.perf_counter() - started)


def cli(measure: Measure) -> None:
    """The command line of a competitor module."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--suite", choices=["sync", "async"], default="sync")
    args = parser.parse_args()
    print(json.dumps(measure(args.url, args.count, args.suite)))
