"""What every benchmark module shares: the value measured, the timing loops, and the
command line each competitor module exposes (`python -m benchmarks.bench_<name> --url U
--count N --suite sync|async` prints one JSON object: workload -> ops/s, keys/s for
batches). Each competitor runs in a child process of its own, imported as a user would
get it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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


class Results(dict[str, float]):
    """Workload -> ops/s (keys/s for batches), plus `cpu:<workload>` / `sys:<workload>`:
    this client's user and system CPU per operation, in microseconds (getrusage)."""

    def timed(self, name: str, fn: Callable[[], object], count: int, per_call: int = 1) -> None:
        """Time `count` calls of `fn` after a warm-up of a tenth as many."""
        for _ in range(max(1, count // 10)):  # connections, script cache, caches
            fn()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(count):
            fn()
        self._record(name, count, per_call, started, before)

    async def timed_tasks(
        self, name: str, fn: Callable[[int, int], Awaitable[Any]], count: int, tasks: int
    ) -> None:
        """`tasks` concurrent tasks share the work; task t's i-th call is fn(t, i)."""
        per_task = max(1, count // tasks)

        async def worker(t: int, n: int) -> None:
            for i in range(n):
                await fn(t, i)

        await asyncio.gather(*(worker(t, max(1, per_task // 10)) for t in range(tasks)))
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.gather(*(worker(t, per_task) for t in range(tasks)))
        self._record(name, per_task * tasks, 1, started, before)

    def _record(self, name: str, calls: int, per_call: int, started: float, before: Any) -> None:
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        self[name] = calls * per_call / elapsed
        self[f"cpu:{name}"] = (after.ru_utime - before.ru_utime) / calls * 1e6
        self[f"sys:{name}"] = (after.ru_stime - before.ru_stime) / calls * 1e6


def run_loop(main: Awaitable[Any]) -> Any:
    """Run on stdlib asyncio, or on uvloop when `BANTAI_BENCH_LOOP=uvloop`."""
    if os.environ.get("BANTAI_BENCH_LOOP") == "uvloop":
        try:
            import uvloop
        except ImportError:  # not installed (the bench extra brings it): nothing measured
            main.close()  # type: ignore[attr-defined]
            return {}
        return uvloop.run(main)  # type: ignore[arg-type]
    return asyncio.run(main)  # type: ignore[arg-type]


def cli(measure: Measure) -> None:
    """The command line of a competitor module."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--suite", choices=["sync", "async", "contention"], default="sync")
    args = parser.parse_args()
    print(json.dumps(measure(args.url, args.count, args.suite)))
