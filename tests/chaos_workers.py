"""Workers of the chaos test (`tests/test_chaos.py`), in a module of their own so forked
processes run plain importable functions.

Every worker loops over a random mix of `update` (+1 on a shared counter), `set` (the next
sequence number on a key of its own), `update_many` (+1 on 2-3 counters at once) and
`rate_limit.consume` until told to stop, and logs what it learnt of each call: acked (the
call returned), unknown (`WriteOutcomeUnknownError` or a subclass: it may or may not have
happened), or failed (any other exception, by type; it must not have happened). The test
process merges the logs and checks them against what Redis holds at the end.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import traceback
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from bantai import (
    BantaiError,
    InvalidInputError,
    StorageClosedError,
    StoredValueError,
    WriteOutcomeUnknownError,
    create_async_redis_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from tests.models import Counter, increment

KINDS = ("update", "set", "update_many", "consume")
_WEIGHTS = (3, 2, 2, 2)
# Bounds on every loop, whatever the clock says.
_MAX_CALLS_PER_AGENT = 1_000_000
_PAUSE_AFTER_FAILURE = 0.02  # a failed call is not retried in a hot loop
_MAX_TRACES = 10


@dataclass(frozen=True)
class ChaosConfig:
    """What every worker needs to know; fixed for a run."""

    host: str
    port: int
    counter_keys: tuple[str, ...] = ("c0", "c1", "c2", "c3")
    socket_timeout: float = 0.5
    lock_timeout_ms: int = 2000
    lock_ttl_ms: int = 3000
    lock_retry_ms: int = 20
    rate_limit: int = 50
    rate_period: str = "1h"
    # A new limiter key every `rate_slot_s` seconds, so admissions (and their limit) are
    # exercised during the whole run, faults included, not only in its first second.
    rate_slot_s: float = 2.0
    counter_prefix: str = "chaos:c:"
    seq_prefix: str = "chaos:s:"
    rate_prefix: str = "chaos:rl:"

    def options(self, prefix: str) -> dict[str, Any]:
        return {
            "prefix": prefix,
            "lock_timeout_ms": self.lock_timeout_ms,
            "lock_ttl_ms": self.lock_ttl_ms,
            "lock_retry_ms": self.lock_retry_ms,
        }

    def limiter(self, key: str) -> dict[str, Any]:
        return {
            "type": "fixed-window",
            "limit": self.rate_limit,
            "period": self.rate_period,
            "key": key,
        }


@dataclass(frozen=True)
class Timing:
    """Shared instants on the monotonic clock (system-wide on Linux, so comparable across
    forked processes): when the run started, when faults stop, when workers stop."""

    started: float
    calm_from: float
    stop_at: float


@dataclass
class OpStats:
    calls: int = 0
    acked: int = 0
    unknown: int = 0
    failed: Tally[str] = field(default_factory=Tally)
    max_s: float = 0.0
    acked_when_calm: int = 0  # acked calls started after the last fault


@dataclass
class SetLog:
    """One `set` key, written only by its agent with increasing sequence numbers."""

    issued: int = 0
    last_acked: int | None = None
    unknown_after: list[int] = field(default_factory=list)  # unknowns since last_acked


@dataclass
class Slowest:
    seconds: float = 0.0
    kind: str = ""
    keys: tuple[str, ...] = ()
    outcome: str = ""
    at: float = 0.0  # start, seconds into the run


@dataclass
class Log:
    """What one agent (a thread or an asyncio task) observed."""

    client: str = ""  # "sync" or "asyncio"
    ops: dict[str, OpStats] = field(default_factory=lambda: {k: OpStats() for k in KINDS})
    counters: dict[str, list[int]] = field(default_factory=dict)  # key -> [acked, unknown]
    sets: dict[str, SetLog] = field(default_factory=dict)
    # limiter key -> window (reset_at) -> acked allowed decisions
    allowed: dict[str, Tally[int]] = field(default_factory=dict)
    denied: int = 0
    limiter_unknown: Tally[str] = field(default_factory=Tally)
    untyped: list[str] = field(default_factory=list)  # tracebacks of untyped failures
    slowest: Slowest = field(default_factory=Slowest)

    def merge(self, other: Log) -> None:
        for kind, theirs in other.ops.items():
            mine = self.ops[kind]
            mine.calls += theirs.calls
            mine.acked += theirs.acked
            mine.unknown += theirs.unknown
            mine.failed.update(theirs.failed)
            mine.max_s = max(mine.max_s, theirs.max_s)
            mine.acked_when_calm += theirs.acked_when_calm
        for key, (acked, unknown) in other.counters.items():
            entry = self.counters.setdefault(key, [0, 0])
            entry[0] += acked
            entry[1] += unknown
        self.sets.update(other.sets)  # every set key has one writer
        for key, windows in other.allowed.items():
            self.allowed.setdefault(key, Tally()).update(windows)
        self.denied += other.denied
        self.limiter_unknown.update(other.limiter_unknown)
        self.untyped += other.untyped[: max(0, _MAX_TRACES - len(self.untyped))]
        if other.slowest.seconds > self.slowest.seconds:
            self.slowest = other.slowest


def is_typed(exc: BaseException) -> bool:
    """A failure the adapter documents: redis-py's errors (connection, timeout, error
    replies) or a bantai error. Input, stored-value and closed-storage errors are bantai's
    own but mean a bug here (every input is valid, nothing else writes these keys)."""
    if isinstance(exc, (InvalidInputError, StoredValueError, StorageClosedError)):
        return False
    return isinstance(exc, (redis.exceptions.RedisError, BantaiError))


def type_name(exc: BaseException) -> str:
    module = type(exc).__module__
    return type(exc).__qualname__ if module == "builtins" else f"{module}.{type(exc).__qualname__}"


class Agent:
    """Chooses the calls of one thread or task and records their outcomes in its `log`."""

    def __init__(self, cfg: ChaosConfig, name: str, client: str, timing: Timing, seed: int) -> None:
        self.cfg = cfg
        self.name = name
        self.timing = timing
        self.random = random.Random(seed)
        self.log = Log(client)
        self.seq_key = name
        self.log.sets[name] = SetLog()

    def next_call(self) -> tuple[str, tuple[str, ...], Any]:
        """The next call: its kind, the keys it concerns, and its argument."""
        kind = self.random.choices(KINDS, _WEIGHTS)[0]
        keys = self.cfg.counter_keys
        if kind == "update":
            return kind, (self.random.choice(keys),), None
        if kind == "update_many":
            return kind, tuple(self.random.sample(keys, self.random.choice((2, 3)))), None
        if kind == "set":
            entry = self.log.sets[self.seq_key]
            entry.issued += 1
            return kind, (self.seq_key,), entry.issued
        slot = int((time.monotonic() - self.timing.started) // self.cfg.rate_slot_s)
        return kind, (f"k{slot}",), None

    def record(
        self,
        kind: str,
        keys: Sequence[str],
        arg: Any,
        result: Any,
        error: BaseException | None,
        started: float,
    ) -> None:
        elapsed = time.monotonic() - started
        stats = self.log.ops[kind]
        stats.calls += 1
        stats.max_s = max(stats.max_s, elapsed)
        if error is None:
            outcome = "acked"
            stats.acked += 1
            if started >= self.timing.calm_from:
                stats.acked_when_calm += 1
        elif isinstance(error, WriteOutcomeUnknownError):
            outcome = "unknown"
            stats.unknown += 1
        else:
            outcome = type_name(error)
            stats.failed[outcome] += 1
            if not is_typed(error) and len(self.log.untyped) < _MAX_TRACES:
                trace = "".join(traceback.format_exception(error))
                self.log.untyped.append(f"{self.name} {kind} {list(keys)}:\n{trace}")
        if elapsed > self.log.slowest.seconds:
            at = started - self.timing.started
            self.log.slowest = Slowest(elapsed, kind, tuple(keys), outcome, at)
        if kind in ("update", "update_many"):
            for key in keys:
                entry = self.log.counters.setdefault(key, [0, 0])
                if outcome == "acked":
                    entry[0] += 1
                elif outcome == "unknown":
                    entry[1] += 1
        elif kind == "set":
            seq = self.log.sets[keys[0]]
            if outcome == "acked":
                seq.last_acked = arg
                seq.unknown_after = []
            elif outcome == "unknown":
                seq.unknown_after.append(arg)
        elif outcome == "acked":
            if result.allowed:
                self.log.allowed.setdefault(keys[0], Tally())[result.reset_at] += 1
            else:
                self.log.denied += 1
        elif outcome == "unknown":
            self.log.limiter_unknown[keys[0]] += 1

    def running(self, stop: Event, calls: int) -> bool:
        return (
            calls < _MAX_CALLS_PER_AGENT
            and time.monotonic() < self.timing.stop_at
            and not stop.is_set()
        )


def _bump(key: str, current: Counter | None) -> dict[str, object]:
    return increment(current)


# --- blocking workers ---------------------------------------------------------------------


def _sync_agent(agent: Agent, storages: dict[str, Any], stop: Event) -> None:
    counters, seqs, limits = storages["counters"], storages["seqs"], storages["limits"]
    calls = 0
    while agent.running(stop, calls):
        calls += 1
        kind, keys, arg = agent.next_call()
        result: Any = None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            if kind == "update":
                result = counters.update(keys[0], increment)
            elif kind == "update_many":
                result = counters.update_many(keys, _bump)
            elif kind == "set":
                seqs.set(keys[0], {"count": arg})
            else:
                result = rate_limit.consume(limits, agent.cfg.limiter(keys[0]))
        except Exception as exc:
            error = exc
        agent.record(kind, keys, arg, result, error, started)
        if error is not None:
            time.sleep(_PAUSE_AFTER_FAILURE)


def sync_worker(
    cfg: ChaosConfig,
    name: str,
    threads: int,
    seed: int,
    ready: Event,
    go: Event,
    stop: Event,
    timing_box: Any,
    out: Connection,
) -> None:
    """A forked process: `threads` threads sharing one blocking adapter per schema (so
    they also share its connection stack). Sends a list of logs, or a crash report."""
    try:
        client = redis.Redis(
            host=cfg.host,
            port=cfg.port,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.socket_timeout,
        )
        storages = {
            "counters": create_redis_storage(
                {"client": client}, Counter, cfg.options(cfg.counter_prefix)
            ),
            "seqs": create_redis_storage({"client": client}, Counter, cfg.options(cfg.seq_prefix)),
            "limits": create_redis_storage(
                {"client": client}, rate_limit_schema, cfg.options(cfg.rate_prefix)
            ),
        }
        ready.set()
        if not go.wait(60):
            raise RuntimeError("never told to start")
        timing = Timing(*timing_box[:])
        agents = [
            Agent(cfg, f"{name}.t{i}", "sync", timing, seed * 1000 + i) for i in range(threads)
        ]
        workers = [
            threading.Thread(target=_sync_agent, args=(a, storages, stop), daemon=True)
            for a in agents
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join(max(1.0, timing.stop_at - time.monotonic()) + 30)
            if t.is_alive():
                raise RuntimeError(f"{t.name} did not finish 30 s after the run")
        for storage in storages.values():
            storage.close()
        client.close()
        out.send({"logs": [a.log for a in agents]})
    except BaseException:
        out.send({"crash": f"{name}:\n{traceback.format_exc()}"})
    finally:
        out.close()


# --- the asyncio worker -------------------------------------------------------------------


async def _async_agent(agent: Agent, storages: dict[str, Any], stop: Event) -> None:
    counters, seqs, limits = storages["counters"], storages["seqs"], storages["limits"]
    calls = 0
    while agent.running(stop, calls):
        calls += 1
        kind, keys, arg = agent.next_call()
        result: Any = None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            if kind == "update":
                result = await counters.update(keys[0], increment)
            elif kind == "update_many":
                result = await counters.update_many(keys, _bump)
            elif kind == "set":
                await seqs.set(keys[0], {"count": arg})
            else:
                result = await rate_limit.consume_async(limits, agent.cfg.limiter(keys[0]))
        except (Exception, asyncio.CancelledError) as exc:  # nobody cancels these tasks
            error = exc
        agent.record(kind, keys, arg, result, error, started)
        await asyncio.sleep(_PAUSE_AFTER_FAILURE if error is not None else 0)


async def _async_main(
    cfg: ChaosConfig, name: str, tasks: int, seed: int, ready: Event, go: Event, stop: Event,
    timing_box: Any,
) -> list[Log]:  # fmt: skip
    client = redis.asyncio.Redis(
        host=cfg.host,
        port=cfg.port,
        socket_timeout=cfg.socket_timeout,
        socket_connect_timeout=cfg.socket_timeout,
    )
    make: Callable[..., Any] = create_async_redis_storage
    storages = {
        "counters": make({"client": client}, Counter, cfg.options(cfg.counter_prefix)),
        "seqs": make({"client": client}, Counter, cfg.options(cfg.seq_prefix)),
        "limits": make({"client": client}, rate_limit_schema, cfg.options(cfg.rate_prefix)),
    }
    ready.set()
    if not go.wait(60):  # blocks the loop, which has nothing else to do yet
        raise RuntimeError("never told to start")
    timing = Timing(*timing_box[:])
    agents = [Agent(cfg, f"{name}.a{i}", "asyncio", timing, seed * 1000 + i) for i in range(tasks)]
    budget = max(1.0, timing.stop_at - time.monotonic()) + 30
    await asyncio.wait_for(
        asyncio.gather(*(_async_agent(a, storages, stop) for a in agents)), budget
    )
    for storage in storages.values():
        await storage.close()
    await client.aclose()
    return [a.log for a in agents]


def async_worker(
    cfg: ChaosConfig,
    name: str,
    tasks: int,
    seed: int,
    ready: Event,
    go: Event,
    stop: Event,
    timing_box: Any,
    out: Connection,
) -> None:
    """A forked process: `tasks` asyncio tasks sharing one asyncio adapter per schema
    (so one auto-pipelined connection each)."""
    try:
        logs = asyncio.run(_async_main(cfg, name, tasks, seed, ready, go, stop, timing_box))
        out.send({"logs": logs})
    except BaseException:
        out.send({"crash": f"{name}:\n{traceback.format_exc()}"})
    finally:
        out.close()
