"""`make bench` / `python -m benchmarks.run`: the benchmark suite.

Starts a throwaway redis-server, then runs interleaved rounds of every competitor — one
module each, with the same interface (`benchmarks/common.py`): `bench_bantai` (compiled,
pure, compiled with busy-polling), `bench_redispy` (the hand-written redis-py + hiredis +
pydantic-core baseline), `bench_limits` (the `limits` package), each in a child process of
its own, sync and asyncio; and `bench_redis_benchmark` on the same server as the ceiling.
Reports medians and the ratios with their targets (met / missed), writes
`benchmarks/results/bench-<time>.json` and, with matplotlib installed, a PNG chart.

`--smoke` runs one tiny round in seconds: CI uses it so the suite never rots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bantai.redis import scripts
from bantai.testing import LocalRedisServer
from benchmarks.bench_redis_benchmark import measure_server as redis_benchmark

RESULTS = Path(__file__).resolve().parent / "results"
# Competitor -> (module, environment). "baseline" is the hand-written redis-py code.
COMPETITORS: dict[str, tuple[str, dict[str, str]]] = {
    "cython": ("bench_bantai", {"BANTAI_BENCH_EXPECT": "cython"}),
    "python": ("bench_bantai", {"BANTAI_BENCH_EXPECT": "python", "BANTAI_NO_EXTENSIONS": "1"}),
    "baseline": ("bench_redispy", {}),
    "cython+busy-poll": (
        "bench_bantai",
        {"BANTAI_BENCH_EXPECT": "cython", "BANTAI_BENCH_BUSY_POLL_US": "100"},
    ),
    "limits": ("bench_limits", {}),
}
IMPLS = ("cython", "python", "baseline", "cython+busy-poll")
WORKLOADS = (
    "get",
    "set_ttl",
    "update",
    "get_many_100",
    "update_many_100",
    "rate_limit_consume",
    "rate_limit_check_increment",
)

# (name, target, numerator, denominator) — the ratios the report shows, with their targets.
TARGETS = [
    ("cython get / redis-benchmark GET c1 P1", 0.85, ("cython", "get"), ("rb", "GET c1 P1")),
    ("cython get / baseline get", 1.5, ("cython", "get"), ("baseline", "get")),
    (
        "cython update / (redis-benchmark EVALSHA acquire c1 / 2)",
        0.8,
        ("cython", "update"),
        ("rb", "EVALSHA acquire c1 / 2"),
    ),
    (
        "cython get_many(100) keys/s / redis-benchmark GET P16",
        0.7,
        ("cython", "get_many_100"),
        ("rb", "GET c1 P16"),
    ),
    ("cython get / python get", 1.5, ("cython", "get"), ("python", "get")),
    ("cython update / baseline update", None, ("cython", "update"), ("baseline", "update")),
    (
        "cython update_many(100) / baseline",
        None,
        ("cython", "update_many_100"),
        ("baseline", "update_many_100"),
    ),
    (
        "busy-poll get / redis-benchmark GET c1 P1",
        None,
        ("cython+busy-poll", "get"),
        ("rb", "GET c1 P1"),
    ),
    (
        "busy-poll update / (redis-benchmark EVALSHA c1 / 2)",
        None,
        ("cython+busy-poll", "update"),
        ("rb", "EVALSHA acquire c1 / 2"),
    ),
    (
        "rate-limit consume / redis-benchmark EVALSHA rate_limit c1",
        0.9,
        ("cython", "rate_limit_consume"),
        ("rb", "EVALSHA rate_limit c1"),
    ),
    (
        "rate-limit consume / original-style check + increment",
        3.0,
        ("cython", "rate_limit_consume"),
        ("cython", "rate_limit_check_increment"),
    ),
    (
        "rate-limit consume: cython / python",
        None,
        ("cython", "rate_limit_consume"),
        ("python", "rate_limit_consume"),
    ),
    (
        "rate-limit consume / `limits` FixedWindowRateLimiter.hit",
        None,
        ("cython", "rate_limit_consume"),
        ("limits", "rate_limit_consume"),
    ),
    (
        "async 50-task get / redis-benchmark GET c50 P1",
        0.8,
        ("async:cython", "get 50 tasks"),
        ("rb", "GET c50 P1"),
    ),
    (
        "async 50-task get / redis-py asyncio baseline",
        3.0,
        ("async:cython", "get 50 tasks"),
        ("async:baseline", "get 50 tasks"),
    ),
    (
        "async 50-task get: cython / python",
        2.0,
        ("async:cython", "get 50 tasks"),
        ("async:python", "get 50 tasks"),
    ),
    (
        "async 50-task update / baseline",
        None,
        ("async:cython", "update 50 tasks"),
        ("async:baseline", "update 50 tasks"),
    ),
]


ASYNC_IMPLS = ("cython", "python", "baseline")
ASYNC_WORKLOADS = (
    "get 1 task",
    "set 1 task",
    "update 1 task",
    "get 50 tasks",
    "set 50 tasks",
    "update 50 tasks",
)


def run_workloads(name: str, url: str, count: int, suite: str = "sync") -> dict[str, float]:
    """One competitor's round, in a child process (imported as a user would get it)."""
    module, extra = COMPETITORS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANTAI_")}
    env.update(extra)
    argv = [sys.executable, "-m", f"benchmarks.{module}", "--url", url, "--count", str(count)]
    out = subprocess.run(
        [*argv, "--suite", suite], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="one tiny round (CI)")
    args = parser.parse_args()
    rounds, count, rb_requests = args.rounds, args.count, 20_000
    if args.smoke:
        rounds, count, rb_requests = 1, 100, 1000
    names = (*IMPLS, "limits", *(f"async:{i}" for i in ASYNC_IMPLS), "rb")
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in names}
    with LocalRedisServer() as server:
        import redis

        client = redis.Redis.from_url(server.url)
        client.script_load(scripts.ACQUIRE.source)
        client.script_load(scripts.RATE_LIMIT.source)
        client.close()
        for round_no in range(rounds):
            # Interleave: every round measures everything, in a rotating order, so drift in
            # machine state (CPU frequency, idle states) hits all candidates alike.
            order = list(names)
            order = order[round_no % len(order) :] + order[: round_no % len(order)]
            for name in order:
                if name == "rb":
                    result = redis_benchmark(server.host, server.port, rb_requests)
                elif name.startswith("async:"):
                    result = run_workloads(name[6:], server.url, count * 3, "async")
                else:
                    result = run_workloads(name, server.url, count)
                for key, value in result.items():
                    samples[name].setdefault(key, []).append(value)
            print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
    medians = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
    report(medians, samples, smoke=args.smoke)


def report(medians: dict[str, dict[str, float]], samples: dict[str, Any], *, smoke: bool) -> None:
    print(
        f"\nsync, one connection, median ops/s (keys/s for batches); {platform.node()}, "
        f"Python {platform.python_version()}"
    )
    print(f"{'workload':<18}" + "".join(f"{i:>18}" for i in IMPLS))
    for w in WORKLOADS:
        print(f"{w:<18}" + "".join(f"{medians[i].get(w, 0):>18,.0f}" for i in IMPLS))
    print("\nasyncio, one adapter shared by all tasks, median ops/s")
    print(f"{'workload':<18}" + "".join(f"{i:>18}" for i in ASYNC_IMPLS))
    for w in ASYNC_WORKLOADS:
        print(
            f"{w:<18}" + "".join(f"{medians['async:' + i].get(w, 0):>18,.0f}" for i in ASYNC_IMPLS)
        )
    print("\nredis-benchmark on the same server:")
    for k, v in medians["rb"].items():
        print(f"  {k:<24}{v:>12,.0f}")
    print("\nratios (target in brackets):")
    ratios = {}
    for name, target, (na, ka), (nb, kb) in TARGETS:
        if ka not in medians[na] or kb not in medians[nb]:
            print(f"  {name:<58}   n/a (not measured: is the `limits` package installed?)")
            continue
        value = medians[na][ka] / medians[nb][kb]
        ratios[name] = {"value": value, "target": target}
        verdict = "" if target is None else ("  met" if value >= target else "  MISSED")
        shown = "" if target is None else f" [>= {target}]"
        print(f"  {name:<58}{value:6.2f}{shown}{verdict}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "smoke" if smoke else "bench"
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "medians": medians,
                "samples": samples,
                "ratios": ratios,
                "python": platform.python_version(),
                "time": stamp,
            },
            indent=2,
        )
    )
    print(f"\nwrote {path}")
    chart(medians, RESULTS / f"{kind}-{stamp}.png")


def chart(medians: dict[str, dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'bantai[bench]'): no chart")
        return
    ceilings = {
        "get": "GET c1 P1",
        "set_ttl": "SET c1 P1",
        "update": "EVALSHA acquire c1 / 2",
        "get_many_100": "GET c1 P16",
        "get 50 tasks": "GET c50 P1",
        "set 50 tasks": "SET c50 P1",
        "rate_limit_consume": "EVALSHA rate_limit c1",
    }
    panels = [(w, IMPLS, "") for w in WORKLOADS[:6]] + [
        (w, ASYNC_IMPLS, "async:") for w in ("get 50 tasks", "set 50 tasks", "update 50 tasks")
    ]
    fig, axes = plt.subplots(3, 3, figsize=(12, 10))
    palette = {
        "cython": "#2a7",
        "python": "#7a2",
        "baseline": "#888",
        "cython+busy-poll": "#a5d",
        "redis-benchmark": "#49c",
    }
    for ax, (w, impls, group) in zip(axes.flat, panels, strict=False):
        names = [i for i in impls] + (["redis-benchmark"] if w in ceilings else [])
        values = [medians[group + i].get(w, 0) for i in impls]
        if w in ceilings:
            values.append(medians["rb"][ceilings[w]])
        ax.bar(names, values, color=[palette[n] for n in names])
        ax.set_title(("asyncio " if group else "sync ") + w)
        ax.tick_params(axis="x", rotation=45)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.supylabel("ops/s (keys/s for batches)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
