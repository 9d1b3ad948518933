"""Redis Cluster under real faults, with real servers and no mocks: a slot migrated live (by
hand with a wide ASK / TRYAGAIN window, and by `redis-cli --cluster reshard`), a migration
aborted halfway, SCRIPT FLUSH on every node, a graceful `CLUSTER FAILOVER`, and a master
killed with SIGKILL, each while sync threads or asyncio tasks run `update(+1)`.

What the load proves is always the same: every call either returned (acked), raised
`WriteOutcomeUnknownError` (unknown), or raised a typed error (redis-py's or bantai's);
the final count of every key lies between its acked and its acked + unknown updates, and
where the cluster only redirects (MOVED / ASK / TRYAGAIN / NOSCRIPT) nothing raises at all.
Server-side `INFO commandstats` / `INFO errorstats` prove the redirects really happened.

Also: keys and prefixes with braces in the hash-tagged layout, a slot left mid-migration
(bounded TryAgainError), an update_many whose commit is split by a node dying between lock
and commit, and a node that comes back after many failed connects.
Run with `pytest -s` to see the numbers (redirect counts, failover time, latencies).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
from redis.cluster import RedisCluster
from redis.crc import key_slot

from bantai import (
    BantaiError,
    InvalidKeyError,
    InvalidOptionError,
    WriteOutcomeUnknownError,
    create_async_redis_storage,
    create_redis_storage,
)
from bantai.testing import (
    LocalRedisCluster,
    LocalRedisServer,
    RedisServerNotFound,
    find_redis_server,
)
from tests.conftest import unique_prefix
from tests.models import Counter, increment

HOST = "127.0.0.1"
# Hard cap on any load phase, whatever happens to the stop signal.
LOAD_CAP_S = 20.0
# Cap on the calls a single worker makes (the stop signal normally ends it much earlier).
MAX_CALLS = 20_000
# The failover tests' client and lock settings, and the latency bound they imply:
# lock_timeout_ms + 4 x socket_timeout + 3 s (the TRYAGAIN / CLUSTERDOWN budget), + 1 s.
SOCKET_TIMEOUT_S = 1.0
LOCK_MS = 2000
LATENCY_BOUND_S = LOCK_MS / 1000 + 4 * SOCKET_TIMEOUT_S + 3.0 + 1.0


def _report(*parts: object) -> None:
    """Numbers for the humans reading `pytest -s` output."""
    print("[cluster-faults]", *parts)


# --- fixtures ---------------------------------------------------------------------------


def _require_tools() -> None:
    try:
        find_redis_server()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli (from the redis-server package) is needed", pytrace=False)


def _cluster_port(taken: set[int]) -> int:
    """A port for a cluster node: Redis refuses cluster mode above 55535 (its bus listens on
    port + 10000), and `free_port()` hands out ephemeral ports up to 60999 here, retrying
    on a neighbour. Pick the port in 10000-22767, so that neither it nor its bus port
    (20000-32767) can be taken by an ephemeral client socket."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(10_000, 22_768)
        if port in taken or port + 10_000 in taken:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + 10_000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind((HOST, candidate))
            except OSError:
                continue
        taken.update((port, port + 10_000))
        return port
    raise AssertionError("no free port pair for a cluster node")


@contextlib.contextmanager
def _local_cluster(masters: int, **kwargs: Any) -> Iterator[LocalRedisCluster]:
    """A started `LocalRedisCluster` on safe ports, stopped afterwards, and also when it
    fails to start (`with LocalRedisCluster(...)` leaves the nodes that did start running
    when `start()` raises, since `__exit__` is never called then)."""
    local = LocalRedisCluster(masters, **kwargs)
    taken: set[int] = set()
    for node in local.nodes:
        node.port = _cluster_port(taken)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    """A 3-master cluster of this module's own: its slots are moved around."""
    _require_tools()
    with _local_cluster(3) as local:
        yield local


@pytest.fixture(scope="module")
def replicated() -> Iterator[LocalRedisCluster]:
    """3 masters with one replica each and a 1 s node timeout: failovers take ~1-3 s. Each
    test fails over a shard that still has a live replica, so the order does not matter."""
    _require_tools()
    with _local_cluster(3, replicas=1, node_timeout_ms=1000) as local:
        yield local


# --- talking to the nodes directly --------------------------------------------------------


def _admin(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=2)


def _call(port: int, *args: Any) -> Any:
    client = _admin(port)
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str
    slots: tuple[tuple[int, int], ...]

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?", "noaddr", "handshake"} & self.flags)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and not self.failed

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)

    def slot_list(self) -> list[int]:
        return [s for lo, hi in self.slots for s in range(lo, hi + 1)]


def _topology(port: int) -> list[NodeInfo]:
    text = _call(port, "CLUSTER", "NODES").decode()
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        flags = frozenset(f for f in parts[2].split(",") if f != "myself")
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # an open migration: [slot->-id] / [slot-<-id]
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append(NodeInfo(parts[0], node_port, flags, parts[3], tuple(slots)))
    return nodes


def _alive(local: LocalRedisCluster) -> list[LocalRedisServer]:
    return [n for n in local.nodes if n.process is not None and n.process.poll() is None]


def _masters(local: LocalRedisCluster) -> list[NodeInfo]:
    view = _topology(_alive(local)[0].port)
    return [n for n in view if n.is_master and n.slots]


def _owner(local: LocalRedisCluster, slot: int) -> NodeInfo:
    return next(n for n in _masters(local) if n.owns(slot))


def _stats(port: int) -> dict[str, int]:
    """ASKING calls and redirect / retry error replies this node has counted."""
    client = _admin(port)
    try:
        commands = client.info("commandstats")
        errors = client.info("errorstats")
    finally:
        client.close()
    out = {"asking": int(commands.get("cmdstat_asking", {}).get("calls", 0))}
    for name in ("ASK", "MOVED", "TRYAGAIN", "NOSCRIPT", "CLUSTERDOWN", "READONLY"):
        out[name] = int(errors.get(f"errorstat_{name}", {}).get("count", 0))
    return out


def _reset_stats(ports: Sequence[int]) -> None:
    for port in ports:
        _call(port, "CONFIG", "RESETSTAT")


def _total_stats(ports: Sequence[int]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for port in ports:
        total.update(_stats(port))
    return dict(total)


def _leftover_locks(ports: Sequence[int], prefix: str) -> list[bytes]:
    found: list[bytes] = []
    for port in ports:
        client = _admin(port)
        try:
            found += list(client.scan_iter(match=f"{prefix}*:lock", count=1000))
        finally:
            client.close()
    return found


def _stored(prefix: str, name: str) -> bytes:
    """The Redis key of `name` in the cluster layout."""
    return f"{prefix}{{{name}}}".encode()


def _names_in_slots(prefix: str, stem: str, slots: set[int], count: int) -> list[str]:
    """`count` key names whose stored key hashes into `slots` (a bounded brute force)."""
    names: list[str] = []
    if count <= 0:
        return names
    for i in range(3_000_000):
        name = f"{stem}{i}"
        if key_slot(_stored(prefix, name)) in slots:
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError(f"no {count} names found in {len(slots)} slots")


def _names_outside(prefix: str, stem: str, slots: set[int], count: int) -> list[str]:
    names = [f"{stem}{i}" for i in range(count * 3)]
    return [n for n in names if key_slot(_stored(prefix, n)) not in slots][:count]


def _add_fillers(port: int, prefix: str, tags: Sequence[str], per_tag: int) -> list[bytes]:
    """Plain keys in the slots of `tags` (hash-tagged), written straight to their owner at
    `port`: they make a migration of those slots take several MIGRATE batches."""
    keys = [f"{prefix}fill{{{tag}}}:{i}".encode() for tag in tags for i in range(per_tag)]
    client = _admin(port)
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, b"x" * 64, px=120_000)
        pipe.execute()
    finally:
        client.close()
    return keys


# --- a slot migration by hand -------------------------------------------------------------


@dataclass
class Migration:
    slot: int
    source: int
    target: int
    others: list[int]
    source_id: str = ""
    target_id: str = ""
    batches: int = 0
    keys: int = 0
    seconds: float = 0.0

    def open(self) -> None:
        self.source_id = _call(self.source, "CLUSTER", "MYID").decode()
        self.target_id = _call(self.target, "CLUSTER", "MYID").decode()
        _call(self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        _call(self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)

    def move_keys(self, keys: Sequence[bytes]) -> None:
        reply = _call(self.source, "MIGRATE", HOST, self.target, "", 0, 5000, "KEYS", *keys)
        assert reply in (b"OK", b"NOKEY", "OK", "NOKEY"), reply
        self.batches += 1
        self.keys += len(keys)

    def drain(self, batch: int = 5, pause: float = 0.03, budget_s: float = 10.0) -> None:
        """GETKEYSINSLOT + MIGRATE `batch` keys at a time, pausing between batches so that
        the slot stays split (ASK / TRYAGAIN) for a while."""
        started = time.monotonic()
        for _ in range(5000):
            keys = _call(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, batch)
            if not keys:
                return
            self.move_keys(keys)
            assert time.monotonic() - started < budget_s, "the slot never emptied"
            time.sleep(pause)
        raise AssertionError("the slot never emptied")

    def finish(self) -> None:
        """CLUSTER SETSLOT NODE on the target first, then the source, then the rest."""
        for port in (self.target, self.source, *self.others):
            _call(port, "CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)

    def run(self, batch: int = 5, pause: float = 0.03) -> Migration:
        started = time.monotonic()
        self.open()
        self.drain(batch, pause)
        self.finish()
        self.seconds = time.monotonic() - started
        return self


def _plan_migration(local: LocalRedisCluster, slot: int) -> Migration:
    masters = _masters(local)
    source = next(n for n in masters if n.owns(slot))
    rest = [n.port for n in masters if n is not source]
    return Migration(slot, source.port, rest[0], rest[1:])


# --- the load and its tally ---------------------------------------------------------------


@dataclass
class Tally:
    """What a load did: per key, acked and outcome-unknown updates; every other failure."""

    acked: collections.Counter[str] = field(default_factory=collections.Counter)
    unknown: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: list[BaseException] = field(default_factory=list)
    failed_keys: list[tuple[str, ...]] = field(default_factory=list)
    calls: int = 0
    max_latency: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def record(self, keys: Sequence[str], started: float, error: BaseException | None) -> None:
        self.calls += 1
        self.max_latency = max(self.max_latency, time.monotonic() - started)
        if error is None:
            self.acked.update(keys)
        elif isinstance(error, WriteOutcomeUnknownError):
            self.unknown.update(keys)
        else:
            self.failed.append(error)
            self.failed_keys.append(tuple(keys))

    def merge(self, others: Sequence[Tally]) -> Tally:
        for other in others:
            self.acked.update(other.acked)
            self.unknown.update(other.unknown)
            self.failed += other.failed
            self.failed_keys += other.failed_keys
            self.calls += other.calls
            self.max_latency = max(self.max_latency, other.max_latency)
            self.mismatches += other.mismatches
        return self

    def failure_types(self) -> dict[str, int]:
        return dict(collections.Counter(type(e).__name__ for e in self.failed))

    def untyped(self) -> list[BaseException]:
        """Failures that are neither redis-py's exceptions nor bantai's."""
        return [
            e
            for e in self.failed
            if not isinstance(e, BantaiError)
            and not type(e).__module__.startswith("redis.exceptions")
        ]


def _bump_many(key: str | bytes, current: Counter | None) -> dict[str, Any]:
    return increment(current)


def _sync_updater(
    storage: Any, keys: Sequence[str], stop: threading.Event, seed: int, many: bool
) -> Tally:
    """update(+1) on random keys (and, with `many`, update_many on 3 random keys) until
    `stop`; every call classified."""
    tally = Tally()
    rng = random.Random(seed)
    deadline = time.monotonic() + LOAD_CAP_S
    while not stop.is_set() and tally.calls < MAX_CALLS and time.monotonic() < deadline:
        batch = rng.sample(list(keys), 3) if many and rng.random() < 0.25 else [rng.choice(keys)]
        started = time.monotonic()
        try:
            if len(batch) == 1:
                storage.update(batch[0], increment)
            else:
                storage.update_many(batch, _bump_many)
        except Exception as exc:
            tally.record(batch, started, exc)
        else:
            tally.record(batch, started, None)
    return tally


def _sync_getset(storage: Any, keys: Sequence[str], absent: str, stop: threading.Event) -> Tally:
    """One writer per key: `set(n)` then `get` must read n back, wherever the key lives
    mid-migration; `get(absent)` must be None. Counts nothing in `acked`."""
    tally = Tally()
    deadline = time.monotonic() + LOAD_CAP_S
    n = 0
    while not stop.is_set() and tally.calls < MAX_CALLS and time.monotonic() < deadline:
        for key in keys:
            n += 1
            started = time.monotonic()
            try:
                storage.set(key, {"count": n}, ttl_ms=120_000)
                got = storage.get(key)
                if got != Counter(count=n):
                    tally.mismatches.append(f"{key}: set {n}, got {got!r}")
                if storage.get(absent) is not None:
                    tally.mismatches.append(f"{absent}: expected None")
            except Exception as exc:
                tally.failed.append(exc)
            tally.calls += 1
            tally.max_latency = max(tally.max_latency, time.monotonic() - started)
    return tally


def _run_threads(targets: Sequence[Callable[[], Tally]]) -> tuple[Callable[[], Tally], float]:
    """Start one thread per target; returns `join()` (-> merged tally) and the start time."""
    results: list[Tally] = []
    lock = threading.Lock()

    def wrap(target: Callable[[], Tally]) -> None:
        tally = target()
        with lock:
            results.append(tally)

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()

    def join() -> Tally:
        for thread in threads:
            thread.join(LOAD_CAP_S + 30)
            assert not thread.is_alive(), "a load thread is stuck"
        assert len(results) == len(threads), "a load thread died"
        return Tally().merge(results)

    return join, time.monotonic()


async def _async_updater(
    storage: Any, keys: Sequence[str], stop: threading.Event, seed: int, many: bool
) -> Tally:
    tally = Tally()
    rng = random.Random(seed)
    deadline = time.monotonic() + LOAD_CAP_S
    while not stop.is_set() and tally.calls < MAX_CALLS and time.monotonic() < deadline:
        batch = rng.sample(list(keys), 3) if many and rng.random() < 0.25 else [rng.choice(keys)]
        started = time.monotonic()
        try:
            if len(batch) == 1:
                await storage.update(batch[0], increment)
            else:
                await storage.update_many(batch, _bump_many)
        except Exception as exc:
            tally.record(batch, started, exc)
        else:
            tally.record(batch, started, None)
    return tally


async def _async_getset(
    storage: Any, keys: Sequence[str], absent: str, stop: threading.Event
) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + LOAD_CAP_S
    n = 0
    while not stop.is_set() and tally.calls < MAX_CALLS and time.monotonic() < deadline:
        for key in keys:
            n += 1
            started = time.monotonic()
            try:
                await storage.set(key, {"count": n}, ttl_ms=120_000)
                got = await storage.get(key)
                if got != Counter(count=n):
                    tally.mismatches.append(f"{key}: set {n}, got {got!r}")
                if await storage.get(absent) is not None:
                    tally.mismatches.append(f"{absent}: expected None")
            except Exception as exc:
                tally.failed.append(exc)
            tally.calls += 1
            tally.max_latency = max(tally.max_latency, time.monotonic() - started)
    return tally


def _final_counts(local: LocalRedisCluster, prefix: str, keys: Sequence[str]) -> dict[Any, int]:
    """Read every counter through a fresh client (no state shared with the load)."""
    host, port = HOST, _alive(local)[0].port
    client = RedisCluster(host=host, port=port)
    try:
        storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
        values = storage.get_many(keys)
    finally:
        client.close()
    return {k: (v.count if v is not None else 0) for k, v in values.items()}


def _assert_exact(tally: Tally, finals: dict[Any, int]) -> None:
    assert not tally.failed, f"calls raised: {tally.failure_types()} e.g. {tally.failed[:3]!r}"
    assert not tally.mismatches, tally.mismatches[:5]
    wrong = {k: (finals[k], tally.acked[k]) for k in finals if finals[k] != tally.acked[k]}
    assert not wrong, f"final != acked (final, acked): {wrong}"


# --- 1. live resharding under load ----------------------------------------------------------


@dataclass
class SlotPlan:
    prefix: str
    slot: int
    hot: list[str]  # updated, in the migrating slot
    getset: list[str]  # set / get, in the migrating slot
    absent: str  # never written, in the migrating slot: every get of it is ASKed
    cold: list[str]  # updated, elsewhere

    @property
    def updated(self) -> list[str]:
        return self.hot + self.cold


def _slot_plan(local: LocalRedisCluster, stem: str) -> SlotPlan:
    prefix = f"{stem}-{unique_prefix()}"
    slot = key_slot(_stored(prefix, stem))  # a slot per stem (the prefix is not hashed)
    names = _names_in_slots(prefix, "s", {slot}, 10)
    cold = _names_outside(prefix, "c", {slot}, 14)
    owners = {_owner(local, key_slot(_stored(prefix, n))).port for n in cold}
    assert len(owners) == 3, "the cold keys should span every master"
    return SlotPlan(prefix, slot, names[:6], names[6:9], names[9], cold)


def _check_migration_stats(migration: Migration, stats: dict[int, dict[str, int]]) -> None:
    source, target = stats[migration.source], stats[migration.target]
    _report(
        f"slot {migration.slot}: {migration.keys} keys in {migration.batches} MIGRATE batches,"
        f" {migration.seconds:.2f} s; source {source}; target {target}"
    )
    assert source["ASK"] > 0, "no ASK redirect happened: the migration window was not hit"
    assert target["asking"] > 0, "ASKING never reached the target"
    assert source["TRYAGAIN"] + target["TRYAGAIN"] > 0, "no TRYAGAIN was hit"


def test_live_migration_under_sync_load(cluster: LocalRedisCluster) -> None:
    """A slot holding 6 hot counters, 3 set/get keys and ~70 filler keys is migrated by hand
    (5 keys per MIGRATE, 30 ms apart) while 4 threads run update / update_many over 20 keys
    on all masters and a fifth does set-then-get on the slot: every call returns (ASK with
    ASKING, TRYAGAIN backoff, the final MOVED are all absorbed), every set is read back,
    every counter equals its acked updates, no lock is left behind."""
    plan = _slot_plan(cluster, "mig-sync")
    migration = _plan_migration(cluster, plan.slot)
    _add_fillers(migration.source, plan.prefix, plan.hot[:2], 30)
    client = RedisCluster(host=HOST, port=migration.source)
    storage = create_redis_storage(
        {"client": client}, Counter, {"prefix": plan.prefix, "lock_retry_ms": 5}
    )
    stop = threading.Event()
    workers: list[Callable[[], Tally]] = [
        functools.partial(_sync_updater, storage, plan.updated, stop, i, i == 0) for i in range(4)
    ]
    workers.append(lambda: _sync_getset(storage, plan.getset, plan.absent, stop))
    join, started = _run_threads(workers)
    try:
        time.sleep(0.3)
        masters = [migration.source, migration.target, *migration.others]
        _reset_stats(masters)
        migration.run(batch=5, pause=0.03)
        time.sleep(0.3)
    finally:
        stop.set()
        tally = join()
    stats = {port: _stats(port) for port in masters}
    _report(
        f"sync migration: {tally.calls} calls in {time.monotonic() - started:.1f} s, "
        f"max latency {tally.max_latency:.3f} s"
    )
    _check_migration_stats(migration, stats)
    _assert_exact(tally, _final_counts(cluster, plan.prefix, plan.updated))
    assert all(tally.acked[k] > 0 for k in plan.hot)
    assert _leftover_locks(masters, plan.prefix) == []
    storage.close()
    client.close()


def test_live_migration_under_asyncio_load(cluster: LocalRedisCluster) -> None:
    """The same live migration against the asyncio adapter: 16 tasks share one
    auto-pipelined channel per node (ASKING must stay glued to its command in the shared
    stream), a 17th does set-then-get on the migrating slot. No call raises; counts exact."""
    plan = _slot_plan(cluster, "mig-async")
    migration = _plan_migration(cluster, plan.slot)
    _add_fillers(migration.source, plan.prefix, plan.hot[:2], 30)
    stop = threading.Event()
    masters = [migration.source, migration.target, *migration.others]

    async def main() -> tuple[Tally, float]:
        client = redis.asyncio.cluster.RedisCluster(host=HOST, port=migration.source)
        storage = create_async_redis_storage(
            {"client": client}, Counter, {"prefix": plan.prefix, "lock_retry_ms": 5}
        )
        started = time.monotonic()
        tasks = [
            asyncio.create_task(_async_updater(storage, plan.updated, stop, i, many=i < 2))
            for i in range(16)
        ]
        tasks.append(asyncio.create_task(_async_getset(storage, plan.getset, plan.absent, stop)))
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(_reset_stats, masters)
            await asyncio.to_thread(migration.run, 5, 0.03)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), LOAD_CAP_S + 30)
        await storage.close()
        await client.aclose()
        return Tally().merge(results), time.monotonic() - started

    tally, seconds = asyncio.run(main())
    stats = {port: _stats(port) for port in masters}
    _report(
        f"asyncio migration: {tally.calls} calls in {seconds:.1f} s, "
        f"max latency {tally.max_latency:.3f} s"
    )
    _check_migration_stats(migration, stats)
    _assert_exact(tally, _final_counts(cluster, plan.prefix, plan.updated))
    assert all(tally.acked[k] > 0 for k in plan.hot)
    assert _leftover_locks(masters, plan.prefix) == []


def test_redis_cli_reshard_under_load(cluster: LocalRedisCluster) -> None:
    """`redis-cli --cluster reshard` moves 100 slots (holding 8 hot counters and 160 filler
    keys) from one master to another while 4 threads run update / update_many: no call
    raises and every counter equals its acked updates."""
    masters = _masters(cluster)
    source = max(masters, key=lambda n: len(n.slot_list()))
    target = next(n for n in masters if n is not source)
    moving = set(source.slot_list()[:100])  # redis-cli takes the source's lowest slots
    prefix = f"reshard-{unique_prefix()}"
    hot = _names_in_slots(prefix, "r", moving, 8)
    cold = _names_outside(prefix, "c", moving, 8)
    _add_fillers(source.port, prefix, hot, 20)
    client = RedisCluster(host=HOST, port=source.port)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    stop = threading.Event()
    keys = hot + cold
    join, _ = _run_threads(
        [functools.partial(_sync_updater, storage, keys, stop, i, i == 0) for i in range(4)]
    )
    ports = [n.port for n in masters]
    try:
        time.sleep(0.3)
        _reset_stats(ports)
        started = time.monotonic()
        done = subprocess.run(
            [
                "redis-cli", "--cluster", "reshard", f"{HOST}:{source.port}",
                "--cluster-from", source.id, "--cluster-to", target.id,
                "--cluster-slots", "100", "--cluster-yes", "--cluster-pipeline", "5",
            ],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        time.sleep(0.3)
    finally:
        stop.set()
        tally = join()
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    assert all(_owner(cluster, key_slot(_stored(prefix, k))).id == target.id for k in hot)
    _report(
        f"redis-cli reshard of 100 slots: {seconds:.2f} s; {tally.calls} calls, "
        f"max latency {tally.max_latency:.3f} s; stats {_total_stats(ports)}"
    )
    _assert_exact(tally, _final_counts(cluster, prefix, keys))
    assert _leftover_locks(ports, prefix) == []
    storage.close()
    client.close()


# --- 3. more adversarial cluster events ----------------------------------------------------


def test_migration_aborted_halfway(cluster: LocalRedisCluster) -> None:
    """A migration is opened, half of the slot's (filler) keys are MIGRATEd, then it is
    aborted with CLUSTER SETSLOT STABLE on both sides while 3 threads update the slot's
    counters and a fourth does set / get on it. Requests the policy had pinned to the
    target with ASK now get MOVED back: no call raises, counts are exact, no lock left."""
    plan = _slot_plan(cluster, "abort")
    migration = _plan_migration(cluster, plan.slot)
    fillers = _add_fillers(migration.source, plan.prefix, plan.hot[:1], 20)
    client = RedisCluster(host=HOST, port=migration.source)
    storage = create_redis_storage(
        {"client": client}, Counter, {"prefix": plan.prefix, "lock_retry_ms": 5}
    )
    stop = threading.Event()
    workers: list[Callable[[], Tally]] = [
        functools.partial(_sync_updater, storage, plan.updated, stop, i, i == 0) for i in range(3)
    ]
    workers.append(lambda: _sync_getset(storage, plan.getset[:1], plan.absent, stop))
    masters = [migration.source, migration.target, *migration.others]
    join, _ = _run_threads(workers)
    try:
        time.sleep(0.3)
        _reset_stats(masters)
        migration.open()
        for i in range(0, 10, 2):
            migration.move_keys(fillers[i : i + 2])
            time.sleep(0.05)
        time.sleep(0.3)
        _call(migration.target, "CLUSTER", "SETSLOT", plan.slot, "STABLE")
        _call(migration.source, "CLUSTER", "SETSLOT", plan.slot, "STABLE")
        time.sleep(0.4)
    finally:
        stop.set()
        tally = join()
        _drop_orphans(migration, fillers[:10])
    stats = {port: _stats(port) for port in masters}
    _report(f"aborted migration: {tally.calls} calls; source/target stats {stats}")
    assert stats[migration.source]["ASK"] > 0 and stats[migration.target]["asking"] > 0
    _assert_exact(tally, _final_counts(cluster, plan.prefix, plan.updated))
    assert _owner(cluster, plan.slot).port == migration.source
    assert _leftover_locks(masters, plan.prefix) == []
    storage.close()
    client.close()


def _drop_orphans(migration: Migration, keys: Sequence[bytes]) -> None:
    """After an abort the migrated keys sit on a node that does not own their slot: open
    an import there just long enough to delete them with ASKING, then close it again."""
    with contextlib.suppress(redis.ResponseError):
        _call(
            migration.target, "CLUSTER", "SETSLOT", migration.slot, "IMPORTING", migration.source_id
        )
        client = _admin(migration.target)
        try:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
                pipe.execute_command("DEL", key)  # type: ignore[no-untyped-call]
            pipe.execute()
        finally:
            client.close()
    _call(migration.target, "CLUSTER", "SETSLOT", migration.slot, "STABLE")


def test_update_on_a_slot_left_mid_migration_fails_within_the_budget(
    cluster: LocalRedisCluster,
) -> None:
    """A migration opened and left open before any key moved: the value still lives on the
    source, but the lock key exists on neither side, and Redis runs a multi-key command on
    a migrating slot only where all of its keys are, so every lock-acquire script gets
    TRYAGAIN. `update` must fail with redis-py's TryAgainError within the documented budget
    (README: 14 rounds, ~2.8 s), not hang; `get` still works; nothing is written; once the
    migration is closed (STABLE) the same update succeeds."""
    plan = _slot_plan(cluster, "stuck")
    migration = _plan_migration(cluster, plan.slot)
    client = RedisCluster(host=HOST, port=migration.source)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": plan.prefix})
    key = plan.hot[0]
    storage.set(key, {"count": 1})
    migration.open()
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TryAgainError):
            storage.update(key, increment)
        waited = time.monotonic() - started
        assert storage.get(key) == Counter(count=1)
    finally:
        _call(migration.target, "CLUSTER", "SETSLOT", plan.slot, "STABLE")
        _call(migration.source, "CLUSTER", "SETSLOT", plan.slot, "STABLE")
    _report(f"update on a slot left mid-migration: TryAgainError after {waited:.2f} s")
    assert 1.0 < waited < 3.5
    assert storage.update(key, increment) == Counter(count=2)
    assert _leftover_locks([n.port for n in _masters(cluster)], plan.prefix) == []
    storage.close()
    client.close()


def test_script_flush_on_every_node_under_load(cluster: LocalRedisCluster) -> None:
    """SCRIPT FLUSH on every master, 6 times, 150 ms apart, while 4 threads run update /
    update_many across all masters: each NOSCRIPT (the script did not run, commits
    included) loads the script on that node and resends only what failed. No call
    raises; counts exact."""
    prefix = f"flush-{unique_prefix()}"
    keys = [f"k{i}" for i in range(20)]
    client = RedisCluster(host=HOST, port=cluster.nodes[0].port)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    ports = [n.port for n in _masters(cluster)]
    stop = threading.Event()
    join, _ = _run_threads(
        [functools.partial(_sync_updater, storage, keys, stop, i, i < 2) for i in range(4)]
    )
    try:
        time.sleep(0.2)
        _reset_stats(ports)
        for round_ in range(6):
            for port in ports:
                _call(port, "SCRIPT", "FLUSH", "ASYNC" if round_ % 2 else "SYNC")
            time.sleep(0.15)
    finally:
        stop.set()
        tally = join()
    stats = _total_stats(ports)
    _report(f"script flush: {tally.calls} calls; stats {stats}")
    assert stats["NOSCRIPT"] > 0
    _assert_exact(tally, _final_counts(cluster, prefix, keys))
    storage.close()
    client.close()


def test_script_flush_under_asyncio_load(cluster: LocalRedisCluster) -> None:
    """SCRIPT FLUSH on every master while 16 asyncio tasks update: NOSCRIPT replies arrive
    in the middle of auto-pipelined batches; only the failed commands are resent."""
    prefix = f"aflush-{unique_prefix()}"
    keys = [f"k{i}" for i in range(20)]
    ports = [n.port for n in _masters(cluster)]
    stop = threading.Event()

    async def main() -> Tally:
        client = redis.asyncio.cluster.RedisCluster(host=HOST, port=cluster.nodes[0].port)
        storage = create_async_redis_storage({"client": client}, Counter, {"prefix": prefix})
        tasks = [
            asyncio.create_task(_async_updater(storage, keys, stop, i, many=i < 4))
            for i in range(16)
        ]
        try:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_reset_stats, ports)
            for _ in range(6):
                for port in ports:
                    await asyncio.to_thread(_call, port, "SCRIPT", "FLUSH")
                await asyncio.sleep(0.15)
        finally:
            stop.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), LOAD_CAP_S + 30)
        await storage.close()
        await client.aclose()
        return Tally().merge(results)

    tally = asyncio.run(main())
    stats = _total_stats(ports)
    _report(f"asyncio script flush: {tally.calls} calls; stats {stats}")
    assert stats["NOSCRIPT"] > 0
    _assert_exact(tally, _final_counts(cluster, prefix, keys))


def test_hash_tag_layout_refuses_empty_tags(cluster: LocalRedisCluster) -> None:
    """The cluster layout promises that a value and its lock share one slot, so no script
    ever gets CROSSSLOT. Redis ignores an EMPTY hash tag (`{}`) and then hashes the whole
    key: a key that starts with `}` (value `prefix{}x}`) or a prefix whose first `{` is
    followed by `}` would put the value and its lock in different slots. They are refused
    before anything is sent; braces elsewhere (and a prefix with a tag of its own) work."""
    client = RedisCluster(host=HOST, port=cluster.nodes[0].port)
    with pytest.raises(InvalidOptionError, match="empty hash tag"):
        create_redis_storage({"client": client}, Counter, {"prefix": "hb{}:"})
    storage = create_redis_storage({"client": client}, Counter, {"prefix": "hb:"})
    tagged = create_redis_storage({"client": client}, Counter, {"prefix": "hb{t}:"})
    try:
        for key in ("}x", "}"):
            with pytest.raises(InvalidKeyError, match="hash tag"):
                storage.update(key, increment)
            with pytest.raises(InvalidKeyError, match="hash tag"):
                storage.update_many([key], _bump_many)
            with pytest.raises(InvalidKeyError, match="hash tag"):
                storage.set(key, {"count": 1})
        for key in ("a}b", "{x}", "x{", "}"):  # fine: non-empty tags
            target = tagged if key == "}" else storage
            target.delete(key)
            assert target.update(key, increment) == Counter(count=1)
            assert target.update_many([key], _bump_many) == {key: Counter(count=2)}
            assert target.get(key) == Counter(count=2)
    finally:
        storage.close()
        tagged.close()
        client.close()


# --- 3b. a node that dies between lock and commit, or comes back -------------------------------


@pytest.fixture(scope="module")
def fragile() -> Iterator[LocalRedisCluster]:
    """A 3-master cluster whose nodes the tests kill and restart on the same port (they
    come back with their nodes.conf, i.e. their slots, before the 5 s node timeout)."""
    _require_tools()
    with _local_cluster(3) as local:
        yield local


@contextlib.contextmanager
def _restarted_after(local: LocalRedisCluster, port: int) -> Iterator[LocalRedisServer]:
    """Yields the server at `port`; if the test killed it, start it again on the same port
    and wait (bounded) until every node reports cluster_state:ok."""
    server = _server(local, port)
    try:
        yield server
    finally:
        assert server.process is not None
        if server.process.poll() is not None:
            _restart_and_heal(local, server)


def _keys_on_two_masters(local: LocalRedisCluster, prefix: str) -> tuple[str, str, int, int]:
    """Two key names owned by different masters, and those masters' ports."""
    masters = _masters(local)
    first, second = masters[0], masters[1]
    ka = _names_in_slots(prefix, "a", set(first.slot_list()), 1)[0]
    kb = _names_in_slots(prefix, "b", set(second.slot_list()), 1)[0]
    return ka, kb, first.port, second.port


def _killing_updater(
    server: LocalRedisServer,
) -> Callable[[str | bytes, Counter | None], dict[str, Any]]:
    """An update_many updater that kills `server` (once) before returning +1: the locks
    are held on every node, and the commit will find one of them dead."""

    def updater(key: str | bytes, current: Counter | None) -> dict[str, Any]:
        process = server.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
        return increment(current)

    return updater


def test_update_many_commit_split_by_a_dead_node_sync(fragile: LocalRedisCluster) -> None:
    """update_many on two keys of two masters; the second master is killed after the locks
    were taken. The first slot group's commit still runs; the second cannot be sent. An
    error that reads as 'nothing was written' (anything but WriteOutcomeUnknownError) must
    then mean the first key is unchanged: the caller must not be told less than the truth.
    """
    prefix = f"split-sync-{unique_prefix()}"
    ka, kb, pa, pb = _keys_on_two_masters(fragile, prefix)
    client = RedisCluster(host=HOST, port=pa, socket_timeout=2, socket_connect_timeout=1)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    try:
        with _restarted_after(fragile, pb) as server:
            storage.update_many([ka, kb], _bump_many)  # both at 1, connections warm
            try:
                storage.update_many([ka, kb], _killing_updater(server))
            except WriteOutcomeUnknownError:
                pass  # the honest answer: part of it may have been written
            except Exception as exc:
                after = storage.get(ka)
                assert after == Counter(count=1), (
                    f"update_many raised {_describe(exc)}, which says nothing was written, "
                    f"yet {ka!r} (on the live master) went from 1 to {after}"
                )
    finally:
        storage.close()
        client.close()


def test_update_many_commit_split_by_a_dead_node_asyncio(fragile: LocalRedisCluster) -> None:
    """The asyncio twin of the split commit: same expectation."""
    prefix = f"split-async-{unique_prefix()}"
    ka, kb, pa, pb = _keys_on_two_masters(fragile, prefix)

    async def main(server: LocalRedisServer) -> None:
        client = redis.asyncio.cluster.RedisCluster(
            host=HOST, port=pa, socket_timeout=2, socket_connect_timeout=1
        )
        storage = create_async_redis_storage({"client": client}, Counter, {"prefix": prefix})
        try:
            await storage.update_many([ka, kb], _bump_many)
            try:
                await storage.update_many([ka, kb], _killing_updater(server))
            except WriteOutcomeUnknownError:
                pass
            except Exception as exc:
                after = await storage.get(ka)
                assert after == Counter(count=1), (
                    f"update_many raised {_describe(exc)}, which says nothing was written, "
                    f"yet {ka!r} (on the live master) went from 1 to {after}"
                )
        finally:
            await storage.close()
            await client.aclose()

    with _restarted_after(fragile, pb) as server:
        asyncio.run(main(server))


def test_asyncio_adapter_uses_a_node_again_after_it_came_back(fragile: LocalRedisCluster) -> None:
    """A master is down for a while (60 calls to one of its keys fail with redis-py's
    ConnectionError), then comes back on the same port with its slots. The asyncio
    adapter must use it again: each failed (re)connect must hand its connection back to
    redis-py's per-node pool (100 connections by default), or the node stays unusable
    (MaxConnectionsError) for the life of the client."""
    prefix = f"back-{unique_prefix()}"
    _, kb, pa, pb = _keys_on_two_masters(fragile, prefix)

    async def main(server: LocalRedisServer) -> None:
        client = redis.asyncio.cluster.RedisCluster(
            host=HOST, port=pa, socket_timeout=2, socket_connect_timeout=1
        )
        storage = create_async_redis_storage({"client": client}, Counter, {"prefix": prefix})
        try:
            await storage.set(kb, {"count": 1})
            assert server.process is not None
            server.process.kill()
            server.process.wait(5)
            for _ in range(60):
                with contextlib.suppress(redis.ConnectionError):
                    await storage.get(kb)
                    raise AssertionError("a get on a dead node returned")
            await asyncio.to_thread(_restart_and_heal, fragile, server)
            started = time.monotonic()
            while True:
                try:
                    assert await storage.get(kb) is None  # no persistence: it came back empty
                    break
                except redis.ConnectionError as exc:
                    assert time.monotonic() - started < 5, (
                        f"the node is back but the adapter still fails: {_describe(exc)}"
                    )
                    await asyncio.sleep(0.1)
            await storage.set(kb, {"count": 2})
            assert await storage.get(kb) == Counter(count=2)
        finally:
            await storage.close()
            await client.aclose()

    with _restarted_after(fragile, pb) as server:
        asyncio.run(main(server))


def test_sync_adapter_uses_a_node_again_after_it_came_back(fragile: LocalRedisCluster) -> None:
    """The sync twin: a master down for 60 failed calls, then back on its port, is used
    again within a few seconds (no connection of its pool leaks on a failed connect)."""
    prefix = f"back-sync-{unique_prefix()}"
    _, kb, pa, pb = _keys_on_two_masters(fragile, prefix)
    client = RedisCluster(host=HOST, port=pa, socket_timeout=2, socket_connect_timeout=1)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    try:
        with _restarted_after(fragile, pb) as server:
            storage.set(kb, {"count": 1})
            assert server.process is not None
            server.process.kill()
            server.process.wait(5)
            for _ in range(60):
                with pytest.raises(redis.ConnectionError):
                    storage.get(kb)
            _restart_and_heal(fragile, server)
            started = time.monotonic()
            while True:
                try:
                    assert storage.get(kb) is None  # no persistence: it came back empty
                    break
                except redis.ConnectionError as exc:
                    assert time.monotonic() - started < 5, (
                        f"the node is back but the adapter still fails: {_describe(exc)}"
                    )
                    time.sleep(0.1)
            storage.set(kb, {"count": 2})
            assert storage.get(kb) == Counter(count=2)
    finally:
        storage.close()
        client.close()


def test_updates_work_while_the_default_node_is_down(fragile: LocalRedisCluster) -> None:
    """A fresh adapter's first update checks the eviction policy (a key-less CONFIG GET,
    sent to the client's default node). With that node down, updates of keys on healthy
    masters must still work: the check is skipped on a connection error and made later."""
    prefix = f"defdown-{unique_prefix()}"
    probe = RedisCluster(host=HOST, port=fragile.nodes[0].port)
    default_port = int(probe.get_default_node().port)
    probe.close()
    other = next(m for m in _masters(fragile) if m.port != default_port)
    key = _names_in_slots(prefix, "k", set(other.slot_list()), 1)[0]
    with _restarted_after(fragile, default_port) as server:
        client = RedisCluster(host=HOST, port=other.port, socket_timeout=2)
        if int(client.get_default_node().port) != default_port:
            client.nodes_manager.default_node = client.get_node(HOST, default_port)
        storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
        try:
            assert server.process is not None
            server.process.kill()
            server.process.wait(5)
            assert storage.update(key, increment) == Counter(count=1)
            assert storage.update(key, increment) == Counter(count=2)
        finally:
            storage.close()
            client.close()


def _restart_and_heal(local: LocalRedisCluster, server: LocalRedisServer) -> None:
    """Start a killed node again on its port (it rejoins from its nodes.conf) and wait,
    bounded, until every node reports cluster_state:ok."""
    port = server.port
    server.start()
    assert server.port == port, "the restarted node lost its port"
    started = time.monotonic()
    while not all(b"cluster_state:ok" in _call(n.port, "CLUSTER", "INFO") for n in local.nodes):
        assert time.monotonic() - started < 15, "the cluster did not heal"
        time.sleep(0.05)


# --- 2. failover under load -------------------------------------------------------------------


def _shard_with_replica(local: LocalRedisCluster) -> tuple[NodeInfo, NodeInfo]:
    """A master (with slots) and one of its replicas, both alive and in sync."""
    alive = {n.port for n in _alive(local)}
    view = _topology(next(iter(alive)))
    for master in (n for n in view if n.is_master and n.slots and n.port in alive):
        for replica in view:
            if replica.master_id != master.id or replica.failed or replica.port not in alive:
                continue
            if _call(replica.port, "INFO", "replication").get("master_link_status") == "up":
                return master, replica
    raise AssertionError("no shard with a live, synced replica is left")


def _server(local: LocalRedisCluster, port: int) -> LocalRedisServer:
    return next(n for n in local.nodes if n.port == port)


def _wait_promoted(local: LocalRedisCluster, replica: NodeInfo, slot: int) -> float:
    """Wait (bounded) until `replica` is a master that owns `slot` and every live master
    reports cluster_state:ok; returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < 20:
        with contextlib.suppress(redis.RedisError, StopIteration):
            owner = _owner(local, slot)
            masters = _masters(local)
            states = [b"cluster_state:ok" in _call(n.port, "CLUSTER", "INFO") for n in masters]
            if owner.id == replica.id and all(states):
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("the replica was not promoted within 20 s")


def _failover_keys(local: LocalRedisCluster, prefix: str, victim: NodeInfo) -> list[str]:
    keys = [f"f{i}" for i in range(24)]
    on_victim = [k for k in keys if victim.owns(key_slot(_stored(prefix, k)))]
    extra = _names_in_slots(prefix, "v", set(victim.slot_list()), max(0, 6 - len(on_victim)))
    return keys + extra


def _final_round_sync(storage: Any, keys: Sequence[str], tally: Tally) -> float:
    """After the failover every key must take an update again within a few seconds (a lock
    stranded on the dead master's replica expires after lock_ttl_ms)."""
    started = time.monotonic()
    deadline = started + LOCK_MS / 1000 + 3.0
    for key in keys:
        while True:
            t0 = time.monotonic()
            try:
                storage.update(key, increment)
            except WriteOutcomeUnknownError:
                tally.unknown[key] += 1
            except Exception as exc:
                assert time.monotonic() < deadline, f"{key} still failing: {exc!r}"
                time.sleep(0.05)
                continue
            else:
                tally.acked[key] += 1
                break
            finally:
                tally.max_latency = max(tally.max_latency, time.monotonic() - t0)
    return time.monotonic() - started


def _check_failover(
    what: str, tally: Tally, finals: dict[Any, int], failover_s: float, final_s: float
) -> None:
    lost = {k: (finals[k], tally.acked[k]) for k in finals if finals[k] < tally.acked[k]}
    extra = {
        k: (finals[k], tally.acked[k], tally.unknown[k])
        for k in finals
        if finals[k] > tally.acked[k] + tally.unknown[k]
    }
    _report(
        f"{what}: failover {failover_s:.2f} s, final round {final_s:.2f} s, "
        f"{tally.calls} calls: acked {sum(tally.acked.values())}, "
        f"unknown {sum(tally.unknown.values())}, failed {len(tally.failed)} "
        f"{tally.failure_types()}, max latency {tally.max_latency:.2f} s; "
        f"acked writes lost by the failover: {lost or 'none'}"
    )
    assert not tally.untyped(), f"untyped errors: {tally.untyped()[:3]!r}"
    assert tally.max_latency <= LATENCY_BOUND_S, tally.max_latency
    suspects = [
        f"{keys}: {_describe(error)}"
        for keys, error in zip(tally.failed_keys, tally.failed, strict=True)
        if set(keys) & set(extra)
    ]
    assert not extra, (
        f"more writes than acked + unknown (final, acked, unknown): {extra}; "
        f"failed calls on those keys: {suspects}"
    )
    # Asynchronous replication may lose a write acked just before the kill (README); this
    # checks that it did not happen in this run, and says how much if it did.
    assert not lost, f"acked updates lost by the failover (final, acked): {lost}"


def _describe(error: BaseException) -> str:
    """An error and its chain of causes, with where each was raised."""
    parts = []
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        tb = seen.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
        parts.append(f"{type(seen).__name__}({seen}) at {where}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def _cluster_client_kwargs(port: int) -> dict[str, Any]:
    return {
        "host": HOST,
        "port": port,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
    }


FAILOVER_OPTIONS = {"lock_timeout_ms": LOCK_MS, "lock_ttl_ms": LOCK_MS, "lock_retry_ms": 10}


def test_master_killed_under_sync_load(replicated: LocalRedisCluster) -> None:
    """kill -9 of a master while 4 threads run update / update_many on keys of every master:
    each call is acked, outcome-unknown, or a typed error; acked <= final <= acked +
    unknown for every key; no call outlives the latency bound; once the replica is promoted
    every key takes an update again within lock_ttl_ms + 3 s."""
    victim, replica = _shard_with_replica(replicated)
    prefix = f"kill-sync-{unique_prefix()}"
    keys = _failover_keys(replicated, prefix, victim)
    entry = next(n.port for n in _alive(replicated) if n.port != victim.port)
    client = RedisCluster(**_cluster_client_kwargs(entry))
    storage = create_redis_storage(
        {"client": client}, Counter, {"prefix": prefix, **FAILOVER_OPTIONS}
    )
    stop = threading.Event()
    join, _ = _run_threads(
        [functools.partial(_sync_updater, storage, keys, stop, i, i == 0) for i in range(4)]
    )
    try:
        time.sleep(0.5)
        process = _server(replicated, victim.port).process
        assert process is not None
        process.kill()
        process.wait(5)
        failover_s = _wait_promoted(replicated, replica, victim.slots[0][0])
        time.sleep(1.0)
    finally:
        stop.set()
        tally = join()
    final_s = _final_round_sync(storage, keys, tally)
    storage.close()
    client.close()
    _check_failover(
        "sync kill -9", tally, _final_counts(replicated, prefix, keys), failover_s, final_s
    )


def test_master_killed_under_asyncio_load(replicated: LocalRedisCluster) -> None:
    """The same kill -9 against the asyncio adapter with 16 tasks: the dead node's channel
    fails every waiter at once (reads resent once, commits reported outcome-unknown), the
    slot map is reloaded, and the promoted replica takes over."""
    victim, replica = _shard_with_replica(replicated)
    prefix = f"kill-async-{unique_prefix()}"
    keys = _failover_keys(replicated, prefix, victim)
    entry = next(n.port for n in _alive(replicated) if n.port != victim.port)
    stop = threading.Event()
    process = _server(replicated, victim.port).process
    assert process is not None

    def kill_and_wait() -> float:
        process.kill()
        process.wait(5)
        return _wait_promoted(replicated, replica, victim.slots[0][0])

    async def main() -> tuple[Tally, float, float]:
        client = redis.asyncio.cluster.RedisCluster(**_cluster_client_kwargs(entry))
        storage = create_async_redis_storage(
            {"client": client}, Counter, {"prefix": prefix, **FAILOVER_OPTIONS}
        )
        tasks = [
            asyncio.create_task(_async_updater(storage, keys, stop, i, many=i < 2))
            for i in range(16)
        ]
        try:
            await asyncio.sleep(0.5)
            failover_s = await asyncio.to_thread(kill_and_wait)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), LOAD_CAP_S + 30)
        tally = Tally().merge(results)
        final_s = await _final_round_async(storage, keys, tally)
        await storage.close()
        await client.aclose()
        return tally, failover_s, final_s

    tally, failover_s, final_s = asyncio.run(main())
    finals = _final_counts(replicated, prefix, keys)
    _check_failover("asyncio kill -9", tally, finals, failover_s, final_s)


async def _final_round_async(storage: Any, keys: Sequence[str], tally: Tally) -> float:
    started = time.monotonic()
    deadline = started + LOCK_MS / 1000 + 3.0

    async def one(key: str) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await storage.update(key, increment)
            except WriteOutcomeUnknownError:
                tally.unknown[key] += 1
            except Exception as exc:
                assert time.monotonic() < deadline, f"{key} still failing: {exc!r}"
                await asyncio.sleep(0.05)
                continue
            else:
                tally.acked[key] += 1
                return
            finally:
                tally.max_latency = max(tally.max_latency, time.monotonic() - t0)

    await asyncio.gather(*(one(k) for k in keys))
    return time.monotonic() - started


def test_graceful_failover_under_load(replicated: LocalRedisCluster) -> None:
    """CLUSTER FAILOVER on a replica (the master pauses writes until the replica has caught
    up, then they swap roles) while 4 threads update keys on every master: the old master
    answers MOVED, the new one NOSCRIPT (scripts are not replicated), both proofs that
    nothing ran. No call raises, counts are exact: a graceful failover loses nothing."""
    master, replica = _shard_with_replica(replicated)
    prefix = f"graceful-{unique_prefix()}"
    keys = _failover_keys(replicated, prefix, master)
    client = RedisCluster(host=HOST, port=master.port)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": prefix})
    ports = [n.port for n in _alive(replicated)]
    stop = threading.Event()
    join, _ = _run_threads(
        [functools.partial(_sync_updater, storage, keys, stop, i, i == 0) for i in range(4)]
    )
    try:
        time.sleep(0.4)
        _reset_stats(ports)
        _call(replica.port, "CLUSTER", "FAILOVER")
        seconds = _wait_promoted(replicated, replica, master.slots[0][0])
        time.sleep(0.5)
    finally:
        stop.set()
        tally = join()
    stats = _total_stats(ports)
    _report(
        f"graceful failover: {seconds:.2f} s, {tally.calls} calls, max latency "
        f"{tally.max_latency:.3f} s; stats {stats}"
    )
    _assert_exact(tally, _final_counts(replicated, prefix, keys))
    assert stats["MOVED"] > 0
    storage.close()
    client.close()
