"""Chaos: sync and asyncio clients hammer one Redis server while a controller breaks it
in every way a production server breaks — connections killed, script cache flushed, the
process frozen (SIGSTOP), blocked (DEBUG SLEEP), writes paused (CLIENT PAUSE WRITE), and
the process killed with SIGKILL then restarted from its append-only file — and what the
clients were told is checked against what Redis holds at the end.

What is proved, for every call the adapter answered:

1. counters (`update` / `update_many`, +1 each): acked <= final <= acked + unknown for
   every key — no acked increment was lost (not even by a SIGKILL), none was applied
   twice, and no failed call (any error other than `WriteOutcomeUnknownError`) landed;
2. `set`: the final value is the last acked one, or one whose outcome was reported unknown
   issued after it (a failed write never landed, an acked one was never overwritten by an
   older one);
3. every call returned or raised within its bound: lock_timeout_ms + 4 x socket_timeout
   + 3 s (+ 1 s of slack for a loaded machine);
4. no lock key and no limiter key is left without a TTL;
5. `rate_limit.consume` never admitted more than the limit of a window, and the stored
   count agrees with what was acked (acked <= stored <= acked + unknown);
6. every failure is a typed error (redis-py's or a bantai error);
7. the run really did something: acked calls of every kind, admitted requests, faults of
   every kind when it lasts 30 s or more (at least 3 faults in a shorter run); and after
   the last fault every kind of call succeeds again.

`BANTAI_CHAOS_SECONDS` (default 8) sets the length; `BANTAI_CHAOS_SEED` replays a fault
schedule; the figures are printed and repeated in any assertion message.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
from collections import Counter as Tally
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis

from bantai import create_redis_storage
from bantai.testing import LocalRedisServer, RedisServerNotFound, find_redis_server
from tests.chaos_workers import KINDS, ChaosConfig, Log, async_worker, sync_worker
from tests.models import Counter

fork = multiprocessing.get_context("fork")

SECONDS = float(os.environ.get("BANTAI_CHAOS_SECONDS", "8"))
SYNC_PROCESSES = 3
THREADS_PER_PROCESS = 2
ASYNC_TASKS = 24
CALM_SECONDS = 2.0  # fault-free time at the end: every kind of call must succeed again
WARMUP_SECONDS = 0.3
FAULT_KINDS = ("client-kill", "script-flush", "sigstop", "debug-sleep", "client-pause", "kill-9")
# The longest a fault (with its recovery) may take: none starts unless it ends before the
# calm period.
_FAULT_MAX_S = {
    "client-kill": 0.1,
    "script-flush": 0.1,
    "sigstop": 1.5,
    "debug-sleep": 0.8,
    "client-pause": 0.8,
    "kill-9": 1.5,
}


class CrashableRedisServer(LocalRedisServer):
    """A LocalRedisServer that can be killed with SIGKILL and started again on the same
    port and directory, so it replays its append-only file."""

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def revive(self, timeout: float = 10.0) -> None:
        # Not `start()`: it moves to another port when the first attempt fails.
        self.process = subprocess.Popen(
            self._command(find_redis_server()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not self._wait_ready(timeout):  # waits through LOADING
            raise RuntimeError(f"redis-server did not come back; see {self._dir}/redis.log")


class Controller:
    """Applies random faults, one at a time, each bounded and followed by its recovery,
    with a gap of normal operation before the next."""

    def __init__(self, server: CrashableRedisServer, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.admin = redis.Redis(
            host=server.host, port=server.port, socket_timeout=5, socket_connect_timeout=2
        )
        self.applied: Tally[str] = Tally()
        self.timeline: list[str] = []
        self.errors: list[str] = []

    def run(self, started: float, until: float) -> None:
        """Faults from now until `until` (monotonic); none starts that could overrun it."""
        schedule: list[str] = []
        for _ in range(10_000):  # bounded; the clock ends it long before
            if not schedule:
                schedule = list(FAULT_KINDS)
                self.rng.shuffle(schedule)
            kind = schedule[0]
            if time.monotonic() + _FAULT_MAX_S[kind] > until:
                # Too long for the time left: try a shorter one, else stop.
                shorter = [k for k in schedule if time.monotonic() + _FAULT_MAX_S[k] <= until]
                if not shorter:
                    return
                kind = shorter[0]
            schedule.remove(kind)
            at = time.monotonic() - started
            try:
                detail = self.apply(kind)
                self.applied[kind] += 1
            except Exception as exc:  # reported as a violation; the run goes on
                self.errors.append(f"{kind} at {at:.2f}s: {exc!r}")
                detail = "FAILED"
            took = time.monotonic() - started - at
            self.timeline.append(f"{at:6.2f}s {kind} {detail} ({took:.2f}s)")
            gap = self.rng.uniform(0.3, 0.6) if SECONDS < 30 else self.rng.uniform(0.4, 1.2)
            time.sleep(max(0.0, min(gap, until - time.monotonic())))

    def apply(self, kind: str) -> str:
        if kind == "client-kill":
            killed = self.admin.client_kill_filter(_type="normal", skipme=True)
            return f"{killed} connections"
        if kind == "script-flush":
            self.admin.script_flush()
            return ""
        if kind == "sigstop":
            pause = self.rng.uniform(0.3, 1.5)
            self.server.signal(signal.SIGSTOP)
            try:
                time.sleep(pause)
            finally:
                self.server.signal(signal.SIGCONT)
            return f"{pause:.2f}s"
        if kind == "debug-sleep":
            self.admin.execute_command("DEBUG", "SLEEP", "0.7")  # type: ignore[no-untyped-call]
            return "0.7s"
        if kind == "client-pause":
            self.admin.client_pause(700, all=False)
            time.sleep(0.7)
            return "700ms WRITE"
        assert kind == "kill-9"
        self.server.crash()
        self.server.revive()
        keys = self.admin.dbsize()  # reconnects; the AOF was replayed
        return f"{keys} keys after replay"


def _collect(readers: list[Connection], deadline: float) -> tuple[list[Log], list[str]]:
    logs: list[Log] = []
    crashes: list[str] = []
    for index, reader in enumerate(readers):
        if not reader.poll(max(0.0, deadline - time.monotonic())):
            crashes.append(f"worker {index} sent nothing in time")
            continue
        try:
            message = reader.recv()
        except EOFError:
            crashes.append(f"worker {index} died without a report")
            continue
        if "crash" in message:
            crashes.append(message["crash"])
        else:
            logs += message["logs"]
    return logs, crashes


def _stop_processes(processes: list[Any]) -> list[str]:
    problems = []
    for process in processes:
        process.join(10)
        if process.is_alive():
            problems.append(f"{process.name} still alive: terminated")
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        elif process.exitcode != 0:
            problems.append(f"{process.name} exited with {process.exitcode}")
    return problems


def _figures(
    cfg: ChaosConfig,
    log: Log,
    by_client: dict[str, Log],
    finals: dict[str, int | None],
    seq_finals: dict[str, int | None],
    stored_limits: dict[str, int],
    controller: Controller,
    seed: int,
    elapsed: float,
) -> str:
    lines = [
        f"chaos run: {SECONDS:g}s requested, {elapsed:.1f}s total, seed {seed}, "
        f"{SYNC_PROCESSES} sync processes x {THREADS_PER_PROCESS} threads + "
        f"{ASYNC_TASKS} asyncio tasks",
        f"{'operation':<12} {'calls':>7} {'acked':>7} {'unknown':>7} {'calm ok':>7} "
        f"{'max s':>6}  failed by type",
    ]
    for kind in KINDS:
        s = log.ops[kind]
        failed = ", ".join(f"{name} {n}" for name, n in s.failed.most_common()) or "-"
        lines.append(
            f"{kind:<12} {s.calls:>7} {s.acked:>7} {s.unknown:>7} {s.acked_when_calm:>7} "
            f"{s.max_s:>6.2f}  {failed}"
        )
    for client, part in sorted(by_client.items()):
        ops = part.ops.values()
        failures = sum(sum(s.failed.values()) for s in ops)
        lines.append(
            f"  {client:<10} {sum(s.calls for s in ops):>7} {sum(s.acked for s in ops):>7} "
            f"{sum(s.unknown for s in ops):>7} {sum(s.acked_when_calm for s in ops):>7} "
            f"{max(s.max_s for s in ops):>6.2f}  failed {failures}"
        )
    slow = log.slowest
    lines.append(
        f"longest call: {slow.seconds:.2f}s, {slow.kind} {list(slow.keys)} -> {slow.outcome}, "
        f"started at {slow.at:.2f}s"
    )
    lines.append("counters:  key acked unknown final")
    for key in cfg.counter_keys:
        acked, unknown = log.counters.get(key, [0, 0])
        lines.append(f"  {key:<6} {acked:>6} {unknown:>6} {finals.get(key)!s:>6}")
    unknown_sets = sum(len(s.unknown_after) for s in log.sets.values())
    lines.append(
        f"set keys: {len(log.sets)}, {sum(s.issued for s in log.sets.values())} issued, "
        f"{sum(1 for k, s in log.sets.items() if seq_finals.get(k) == s.last_acked)} end on "
        f"their last acked value, {unknown_sets} unknown after the last ack"
    )
    allowed = sum(sum(w.values()) for w in log.allowed.values())
    lines.append(
        f"rate limit: {allowed} allowed + {log.denied} denied acked, "
        f"{sum(log.limiter_unknown.values())} unknown, over {len(stored_limits)} limiter keys "
        f"(limit {cfg.rate_limit} per window); stored counts total "
        f"{sum(stored_limits.values())}"
    )
    lines.append(
        "faults applied: "
        + ", ".join(f"{k} {controller.applied[k]}" for k in FAULT_KINDS)
        + f" (total {sum(controller.applied.values())})"
    )
    lines += [f"  {entry}" for entry in controller.timeline]
    return "\n".join(lines)


def _check(
    cfg: ChaosConfig,
    log: Log,
    finals: dict[str, int | None],
    seq_finals: dict[str, int | None],
    stored_limits: dict[str, int],
    untimed: list[str],
    controller: Controller,
) -> list[str]:
    """Every invariant of the module docstring; returns the violations."""
    bad: list[str] = []
    # 1. counters
    for key in cfg.counter_keys:
        acked, unknown = log.counters.get(key, [0, 0])
        count = finals.get(key) or 0
        if not acked <= count <= acked + unknown:
            bad.append(f"counter {key}: final {count} outside [{acked}, {acked + unknown}]")
    # 2. set keys
    for key, entry in sorted(log.sets.items()):
        final = seq_finals.get(key)
        if final != entry.last_acked and final not in entry.unknown_after:
            bad.append(
                f"set key {key}: final {final}, last acked {entry.last_acked}, "
                f"unknown after it {entry.unknown_after[:10]}"
            )
    # 3. call durations
    bound = cfg.lock_timeout_ms / 1000 + 4 * cfg.socket_timeout + 3 + 1
    for kind in KINDS:
        if log.ops[kind].max_s > bound:
            bad.append(f"{kind}: a call took {log.ops[kind].max_s:.2f}s > {bound:.1f}s")
    # 4. TTLs
    bad += untimed
    # 5. rate limit
    for key, windows in sorted(log.allowed.items()):
        for reset_at, n in windows.items():
            if n > cfg.rate_limit:
                bad.append(f"limiter {key} window {reset_at}: {n} admitted > {cfg.rate_limit}")
    for key in sorted(set(log.allowed) | set(stored_limits) | set(log.limiter_unknown)):
        acked = sum(log.allowed.get(key, {}).values())
        unknown = log.limiter_unknown.get(key, 0)
        stored = stored_limits.get(key, 0)
        if not acked <= stored <= acked + unknown:
            bad.append(f"limiter {key}: stored count {stored} outside [{acked}, {acked + unknown}]")
    # 6. typed failures
    bad += [f"untyped failure: {trace}" for trace in log.untyped]
    # 7. activity, faults, recovery
    least = max(20, int(5 * SECONDS))
    for kind in KINDS:
        stats = log.ops[kind]
        if stats.acked < least:
            bad.append(f"{kind}: only {stats.acked} acked calls (want >= {least})")
        if stats.acked_when_calm == 0:
            bad.append(f"{kind}: no acked call in the {CALM_SECONDS:g}s after the last fault")
    if sum(sum(w.values()) for w in log.allowed.values()) == 0:
        bad.append("rate limit: no request was ever admitted")
    if SECONDS >= 30:
        bad += [f"fault {k} never applied" for k in FAULT_KINDS if not controller.applied[k]]
    elif sum(controller.applied.values()) < 3:
        bad.append(f"only {sum(controller.applied.values())} faults applied (want >= 3)")
    bad += [f"fault could not be applied: {e}" for e in controller.errors]
    return bad


def _final_state(
    cfg: ChaosConfig, server: LocalRedisServer, log: Log
) -> tuple[dict[str, int | None], dict[str, int | None], dict[str, int], list[str]]:
    """Counters and set keys through the adapter; TTLs and limiter state with plain
    redis-py."""
    raw = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    try:
        counters = create_redis_storage({"client": raw}, Counter, cfg.options(cfg.counter_prefix))
        seqs = create_redis_storage({"client": raw}, Counter, cfg.options(cfg.seq_prefix))
        finals: dict[str, int | None] = {}
        for key in cfg.counter_keys:
            value = counters.get(key)
            finals[key] = value.count if value else None
        seq_finals: dict[str, int | None] = {}
        for key in sorted(log.sets):
            value = seqs.get(key)
            seq_finals[key] = value.count if value else None
        untimed: list[str] = []
        stored: dict[str, int] = {}
        for raw_key in raw.scan_iter(match="chaos:*", count=1000):
            key = raw_key.decode()
            is_lock = key.endswith(":lock")
            is_limiter = key.startswith(cfg.rate_prefix)
            if is_lock or is_limiter:
                pttl = raw.pttl(key)
                if pttl == -1:
                    untimed.append(f"{key} has no TTL")
            if is_limiter and not is_lock:
                value = raw.get(key)
                if value is not None:
                    base = key[len(cfg.rate_prefix) :].rsplit(":", 1)[0]
                    stored[base] = stored.get(base, 0) + int(json.loads(value)["count"])
            elif not is_lock and not key.startswith((cfg.counter_prefix, cfg.seq_prefix)):
                untimed.append(f"unexpected key {key}")
        counters.close()
        seqs.close()
        return finals, seq_finals, stored, untimed
    finally:
        raw.close()


def test_chaos(capsys: pytest.CaptureFixture[str]) -> None:
    """Sync processes and asyncio tasks against a server under random faults; the
    invariants of the module docstring hold at the end."""
    try:
        find_redis_server()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    seed = int(os.environ.get("BANTAI_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    server = CrashableRedisServer(
        "--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local"
    )  # fmt: skip
    server.start()
    try:
        _run(server, seed, rng, capsys)
    finally:
        server.stop()  # SIGCONT first if frozen; removes its directory


def _run(
    server: CrashableRedisServer, seed: int, rng: random.Random, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ChaosConfig(host=server.host, port=server.port)
    ready = [fork.Event() for _ in range(SYNC_PROCESSES + 1)]
    go, stop = fork.Event(), fork.Event()
    timing = fork.Array("d", 3)
    readers: list[Connection] = []
    processes: list[Any] = []
    controller = Controller(server, rng)
    logs: list[Log] = []
    crashes: list[str] = []
    began = time.monotonic()
    try:
        targets: list[tuple[Callable[..., None], int]] = [
            (sync_worker, THREADS_PER_PROCESS) for _ in range(SYNC_PROCESSES)
        ]
        targets.append((async_worker, ASYNC_TASKS))
        for index, (target, agents) in enumerate(targets):
            reader, writer = fork.Pipe(duplex=False)
            name = f"w{index}" if target is sync_worker else "aio"
            process = fork.Process(
                target=target,
                args=(cfg, name, agents, seed + index, ready[index], go, stop, timing, writer),
                name=f"chaos-{name}",
                daemon=True,
            )
            process.start()
            writer.close()
            readers.append(reader)
            processes.append(process)
        if not all(event.wait(30) for event in ready):
            _, crashes = _collect(readers, time.monotonic() + 2)
            pytest.fail("a chaos worker did not start:\n" + "\n".join(crashes))
        started = time.monotonic()
        stop_at = started + SECONDS
        calm_from = stop_at - CALM_SECONDS
        timing[:] = [started, calm_from, stop_at]
        go.set()
        time.sleep(WARMUP_SECONDS)
        try:
            controller.run(started, calm_from)
        finally:
            server.signal(signal.SIGCONT)  # whatever happened, never leave it frozen
        logs, crashes = _collect(readers, stop_at + 40)
    finally:
        stop.set()
        crashes += _stop_processes(processes)
        controller.admin.close()
    log = Log()
    by_client: dict[str, Log] = {}
    for one in logs:
        log.merge(one)
        by_client.setdefault(one.client, Log(one.client)).merge(one)
    time.sleep(0.1)  # a short quiet period: background lock releases land
    finals, seq_finals, stored, untimed = _final_state(cfg, server, log)
    figures = _figures(
        cfg, log, by_client, finals, seq_finals, stored, controller, seed, time.monotonic() - began
    )
    with capsys.disabled():
        print("\n" + figures)
    violations = crashes + _check(cfg, log, finals, seq_finals, stored, untimed, controller)
    assert not violations, figures + "\n\nVIOLATIONS:\n" + "\n".join(violations)
