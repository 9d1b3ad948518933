"""`make bench` / `python -m benchmarks.run`: the benchmark suite.

Starts a throwaway redis-server, then runs interleaved rounds of every competitor — one
module each, with the same interface (`benchmarks/common.py`): `bench_bantai` (compiled,
pure, compiled with busy-polling; asyncio on stdlib asyncio and uvloop; the contention
runs), `bench_redispy` (the hand-written redis-py + hiredis + pydantic-core baseline),
`bench_limits`, `bench_coredis`, `bench_glide` (peers, when installed), each in a child
process of its own; and `bench_redis_benchmark` on the same server as the ceiling.
Reports medians with the client's CPU per operation (getrusage) and the ratios with their
targets (met / MISSED), and writes `benchmarks/results/bench-<time>.json` (with the
provenance: Redis version, CPU model, package versions, git commit) and, with matplotlib
installed, a PNG chart.

`--smoke` runs one tiny round in seconds: CI uses it so the suite never rots.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
_COMPILED = {"BANTAI_BENCH_EXPECT": "cython"}
_PURE = {"BANTAI_BENCH_EXPECT": "python", "BANTAI_NO_EXTENSIONS": "1"}
_UVLOOP = {"BANTAI_BENCH_LOOP": "uvloop"}

# Competitor -> (suite, module, environment). "baseline" is the hand-written redis-py code.
COMPETITORS: dict[str, tuple[str, str, dict[str, str]]] = {
    "cython": ("sync", "bench_bantai", _COMPILED),
    "python": ("sync", "bench_bantai", _PURE),
    "baseline": ("sync", "bench_redispy", {}),
    "cython+busy-poll": ("sync", "bench_bantai", {**_COMPILED, "BANTAI_BENCH_BUSY_POLL_US": "100"}),
    "limits": ("sync", "bench_limits", {}),
    "async:cython": ("async", "bench_bantai", _COMPILED),
    "async:python": ("async", "bench_bantai", _PURE),
    "async:baseline": ("async", "bench_redispy", {}),
    "async:cython+uvloop": ("async", "bench_bantai", {**_COMPILED, **_UVLOOP}),
    "async:baseline+uvloop": ("async", "bench_redispy", _UVLOOP),
    "async:coredis": ("async", "bench_coredis", {}),
    "async:glide": ("async", "bench_glide", {}),
    "contention:cython": ("contention", "bench_bantai", _COMPILED),
    "contention:python": ("contention", "bench_bantai", _PURE),
}
IMPLS = ("cython", "python", "baseline", "cython+busy-poll")
ASYNC_IMPLS = (
    "cython",
    "python",
    "baseline",
    "cython+uvloop",
    "baseline+uvloop",
    "coredis",
    "glide",
)
WORKLOADS = (
    "get",
    "set_ttl",
    "update",
    "get_many_100",
    "update_many_100",
    "rate_limit_consume",
    "rate_limit_check_increment",
)
ASYNC_WORKLOADS = (
    "get 1 task",
    "set 1 task",
    "update 1 task",
    "get 50 tasks",
    "set 50 tasks",
    "update 50 tasks",
)
CONTENTION = (
    "update 50 tasks 1 key",
    "update 50 tasks 1 key p50 ms",
    "update 50 tasks 1 key p99 ms",
)
MULTI_PROCESS = ("update 8x8 1 key", "update 8x8 1 key p99 ms", "update 8x8 1 key lock timeouts")

# (name, target, numerator, denominator); `at most` targets are marked by a negative target.
TARGETS: list[tuple[str, float | None, tuple[str, str], tuple[str, str]]] = [
    ("sync get / redis-benchmark GET c1", 0.85, ("cython", "get"), ("rb", "GET c1 P1")),
    ("sync get / redis-py baseline", 1.5, ("cython", "get"), ("baseline", "get")),
    (
        "sync update / (redis-benchmark EVALSHA acquire c1 / 2)",
        0.8,
        ("cython", "update"),
        ("rb", "EVALSHA acquire c1 / 2"),
    ),
    ("sync update / redis-py baseline", None, ("cython", "update"), ("baseline", "update")),
    (
        "sync get_many(100) keys/s / redis-benchmark GET P16",
        0.7,
        ("cython", "get_many_100"),
        ("rb", "GET c1 P16"),
    ),
    (
        "sync update_many(100) / redis-py baseline",
        None,
        ("cython", "update_many_100"),
        ("baseline", "update_many_100"),
    ),
    ("compiled / pure: sync update ops/s", 1.5, ("cython", "update"), ("python", "update")),
    (
        "compiled / pure: asyncio 50-task update ops/s",
        1.5,
        ("async:cython", "update 50 tasks"),
        ("async:python", "update 50 tasks"),
    ),
    (
        "compiled / pure: sync update user CPU per op",
        -0.6,
        ("cython", "cpu:update"),
        ("python", "cpu:update"),
    ),
    (
        "compiled / pure: sync get user CPU per op",
        -0.7,
        ("cython", "cpu:get"),
        ("python", "cpu:get"),
    ),
    (
        "asyncio 50-task update / 50-task get (same adapter)",
        0.4,
        ("async:cython", "update 50 tasks"),
        ("async:cython", "get 50 tasks"),
    ),
    (
        "asyncio 1-task update / sync update",
        0.8,
        ("async:cython", "update 1 task"),
        ("cython", "update"),
    ),
    (
        "asyncio 50-task get / redis-benchmark GET c50",
        0.8,
        ("async:cython", "get 50 tasks"),
        ("rb", "GET c50 P1"),
    ),
    (
        "asyncio 50-task get / redis-py asyncio",
        3.0,
        ("async:cython", "get 50 tasks"),
        ("async:baseline", "get 50 tasks"),
    ),
    (
        "asyncio 50-task get / coredis",
        None,
        ("async:cython", "get 50 tasks"),
        ("async:coredis", "get 50 tasks"),
    ),
    (
        "asyncio 50-task get / valkey-glide",
        None,
        ("async:cython", "get 50 tasks"),
        ("async:glide", "get 50 tasks"),
    ),
    (
        "asyncio 50-task get: uvloop / stdlib",
        None,
        ("async:cython+uvloop", "get 50 tasks"),
        ("async:cython", "get 50 tasks"),
    ),
    (
        "contention 50 tasks, 1 key: throughput / serial bound (1-task update)",
        0.5,
        ("async:cython", "update 50 tasks 1 key"),
        ("async:cython", "update 1 task"),
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
        "rate-limit consume / `limits` FixedWindowRateLimiter.hit",
        None,
        ("cython", "rate_limit_consume"),
        ("limits", "rate_limit_consume"),
    ),
]
# Absolute targets: (name, bound, (competitor, workload), "<=" or "==").
ABSOLUTE = [
    ("contention 50 tasks, 1 key: p99 ms", 15.0, ("async:cython", "update 50 tasks 1 key p99 ms")),
    ("8 x 8 processes, 1 key: lock timeouts", 0.0, ("contention:cython", MULTI_PROCESS[2])),
]


def run_workloads(name: str, url: str, count: int) -> dict[str, float]:
    """One competitor's round, in a child process (imported as a user would get it)."""
    suite, module, extra = COMPETITORS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANTAI_")}
    env.update(extra)
    argv = [sys.executable, "-m", f"benchmarks.{module}", "--url", url, "--count", str(count)]
    out = subprocess.run(
        [*argv, "--suite", suite], env=env, capture_output=True, text=True, timeout=900
    )
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def provenance(server: LocalRedisServer) -> dict[str, Any]:
    """What the figures were measured on."""
    import redis

    client = redis.Redis.from_url(server.url)
    info = client.info("server")
    client.close()
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    versions = {}
    for package in ("bantai", "redis", "hiredis", "pydantic-core", "pydantic", "Cython",
                    "uvloop", "coredis", "valkey-glide", "limits"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "redis_version": info.get("redis_version"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="one tiny round (CI)")
    args = parser.parse_args()
    rounds, count, rb_requests = args.rounds, args.count, 20_000
    if args.smoke:
        rounds, count, rb_requests = 1, 100, 1000
    names = (*COMPETITORS, "rb")
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in names}
    with LocalRedisServer() as server:
        import redis

        client = redis.Redis.from_url(server.url)
        client.script_load(scripts.ACQUIRE.source)
        client.script_load(scripts.RATE_LIMIT.source)
        client.close()
        about = provenance(server)
        for round_no in range(rounds):
            # Interleave: every round measures everything, in a rotating order, so drift in
            # machine state (CPU frequency, idle states) hits all candidates alike.
            order = list(names)
            order = order[round_no % len(order) :] + order[: round_no % len(order)]
            for name in order:
                if name == "rb":
                    result = redis_benchmark(server.host, server.port, rb_requests)
                elif COMPETITORS[name][0] == "async":
                    result = run_workloads(name, server.url, count * 3)
                else:
                    result = run_workloads(name, server.url, count)
                for key, value in result.items():
                    samples[name].setdefault(key, []).append(value)
            print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
        costs = rate_limit_costs(server.url, *((50, "100") if args.smoke else (1000, "100,10000")))
        observing = instrumentation_costs(server.url, *((100, 1) if args.smoke else (3000, 7)))
        caching = local_cache_figures(server.url, 100 if args.smoke else 4000)
    medians = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
    report(medians, samples, about, costs, observing, caching, smoke=args.smoke)


def _row(label: str, values: list[str], width: int = 13) -> str:
    return f"{label:<24}" + "".join(f"{v:>{width}}" for v in values)


def _fmt(value: float | None, cpu: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" + ("" if cpu is None else f" ({cpu:.0f})")


def rate_limit_costs(url: str, decisions: int, sizes: str) -> dict[str, dict[str, float]]:
    """Server time and stored bytes per rate-limit decision (`bench_ratelimit_cost`)."""
    argv = [sys.executable, "-m", "benchmarks.bench_ratelimit_cost", url, str(decisions), sizes]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"rate-limit costs failed:\n{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def instrumentation_costs(url: str, count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Sync get / update ops/s without, with no-op and with OpenTelemetry instrumentation
    (`bench_instrumentation`, interleaved rounds in one process)."""
    argv = [sys.executable, "-m", "benchmarks.bench_instrumentation", url, str(count), str(rounds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"instrumentation costs failed:\n{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# The local cache's targets (issue 13): figure of `bench_local_cache`, and its bound.
CACHE_TARGETS = (
    ("local cache: hit get / redis-benchmark GET -c 1", "hit get / redis-benchmark GET c1", 20),
    ("local cache: hit get p99 (us)", "hit p99 us", -20),
    ("local cache: miss / plain get (wall time)", "miss / plain get time", -1.1),
    ("local cache: invalidation delay p99 (us)", "invalidation p99 us", -1000),
)


def local_cache_figures(url: str, count: int) -> dict[str, float]:
    """The local cache's hit / miss / invalidation figures (`bench_local_cache`)."""
    argv = [sys.executable, "-m", "benchmarks.bench_local_cache", url, str(count)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"local cache figures failed:\n{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def report(
    medians: dict[str, dict[str, float]],
    samples: dict[str, Any],
    about: dict[str, Any],
    costs: dict[str, dict[str, float]],
    observing: dict[str, dict[str, float]],
    caching: dict[str, float],
    *,
    smoke: bool,
) -> None:
    print(
        f"\nRedis {about['redis_version']}, {about['cpu']} x{about['cpus']}, "
        f"Python {about['python']}, commit {(about['git_commit'] or '?')[:10]}"
    )
    print("\nsync, one connection: median ops/s (keys/s for batches), (user CPU us/op)")
    print(_row("workload", list(IMPLS), 20))
    for w in WORKLOADS:
        cells = [_fmt(medians[i].get(w), medians[i].get(f"cpu:{w}")) for i in IMPLS]
        print(_row(w, cells, 20))
    print("\nasyncio, one adapter (or client) shared by all tasks: median ops/s, (user CPU us/op)")
    print(_row("workload", list(ASYNC_IMPLS), 17))
    for w in ASYNC_WORKLOADS:
        group = [medians[f"async:{i}"] for i in ASYNC_IMPLS]
        print(_row(w, [_fmt(g.get(w), g.get(f"cpu:{w}")) for g in group], 17))
    print("\ncontention (compiled / pure):")
    for w in CONTENTION:
        print(_row(w, [f"{medians[f'async:{i}'].get(w, 0):,.1f}" for i in ("cython", "python")]))
    for w in MULTI_PROCESS:
        print(
            _row(w, [f"{medians[f'contention:{i}'].get(w, 0):,.1f}" for i in ("cython", "python")])
        )
    print("\nrate limiting, server time and stored state per decision (window full):")
    for name, cost in costs.items():
        print(f"  {name:<40}{cost['server_us']:>10.1f} us{cost['bytes']:>10,.0f} B")
    print("\ninstrumentation (sync, compiled; median ops/s, and / off):")
    off = observing.get("off", {})
    for name, by_workload in observing.items():
        cells = [
            f"{by_workload[w]:,.0f} ({by_workload[w] / off[w]:.2f})" if off.get(w) else "-"
            for w in ("get", "update")
        ]
        print(_row(name, cells, 20))
    print("\nlocal cache (sync unless named; ops/s, us):")
    for name, value in caching.items():
        print(f"  {name:<40}{value:>14,.2f}")
    rb_get = medians["rb"].get("GET c1 P1")
    if rb_get:
        caching["hit get / redis-benchmark GET c1"] = caching["hit get (model)"] / rb_get
    print("\nredis-benchmark on the same server:")
    for k, v in medians["rb"].items():
        print(f"  {k:<24}{v:>12,.0f}")
    print("\ntargets (met / MISSED):")
    ratios: dict[str, Any] = {}
    for name, target, (na, ka), (nb, kb) in TARGETS:
        if ka not in medians[na] or kb not in medians[nb] or not medians[nb][kb]:
            print(f"  {name:<64}   n/a (not measured here)")
            continue
        value = medians[na][ka] / medians[nb][kb]
        ratios[name] = {"value": value, "target": target}
        if target is None:
            print(f"  {name:<64}{value:6.2f}")
            continue
        met = value <= -target if target < 0 else value >= target
        bound = f"<= {-target}" if target < 0 else f">= {target}"
        print(f"  {name:<64}{value:6.2f} [{bound}]  {'met' if met else 'MISSED'}")
    for name, bound, (competitor, workload) in ABSOLUTE:
        if workload not in medians[competitor]:
            print(f"  {name:<64}   n/a (not measured here)")
            continue
        value = medians[competitor][workload]
        ratios[name] = {"value": value, "target": bound}
        met = value <= bound
        print(f"  {name:<64}{value:6.1f} [<= {bound}]  {'met' if met else 'MISSED'}")
    for name, key, bound in CACHE_TARGETS:  # (name, figure, bound: > 0 at least, < 0 at most)
        if key not in caching:
            print(f"  {name:<64}   n/a (not measured here)")
            continue
        value = caching[key]
        ratios[name] = {"value": value, "target": bound}
        met = value <= -bound if bound < 0 else value >= bound
        shown = f"<= {-bound:g}" if bound < 0 else f">= {bound:g}"
        print(f"  {name:<64}{value:6.2f} [{shown}]  {'met' if met else 'MISSED'}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "smoke" if smoke else "bench"
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "provenance": about,
                "medians": medians,
                "rate_limit_costs": costs,
                "instrumentation": observing,
                "local_cache": caching,
                "samples": samples,
                "ratios": ratios,
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
    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    for ax, (w, impls, group) in zip(axes.flat, panels, strict=False):
        names = [i for i in impls if w in medians[group + i]]
        values = [medians[group + i][w] for i in names]
        if w in ceilings:
            names.append("redis-benchmark")
            values.append(medians["rb"][ceilings[w]])
        ax.bar(names, values)
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
