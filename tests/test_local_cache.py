"""The local cache (`local_cache` option) against real Redis servers, blocking and asyncio,
per-key tracking and broadcast: hits and misses, TTLs, another client's SET / DEL /
EXPIRE / FLUSHDB / eviction, this client's own writes, the fill/invalidation race, a
killed invalidation connection, the LRU bound, a server that refuses tracking, and a
Hypothesis model of two clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import core_schema
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from bantai import (
    InvalidKeyError,
    InvalidOptionError,
    StorageClosedError,
    create_async_redis_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from bantai.testing import LocalRedisCluster, LocalRedisServer
from tests import test_sentinel
from tests.conftest import BlockingShim, LoopThread, unique_prefix
from tests.test_cluster_faults import _local_cluster, _masters, _plan_migration

Make = Callable[..., Any]
sentinel_set = test_sentinel.sentinel_set  # the fixture: a master, a replica, a sentinel
MODES = ["sync", "sync-broadcast", "async", "async-broadcast"]


def _maker(mode: str, url: str, loop: LoopThread, created: list[Any]) -> Make:
    def make(schema: object = dict[str, int], **options: Any) -> Any:
        options.setdefault("prefix", unique_prefix())
        cache = dict(options.pop("cache", {}))
        cache.setdefault("broadcast", mode.endswith("broadcast"))
        options["local_cache"] = cache
        if mode.startswith("async"):
            storage: Any = BlockingShim(
                create_async_redis_storage({"url": url}, schema, options), loop
            )
        else:
            storage = create_redis_storage({"url": url}, schema, options)
        created.append(storage)
        return storage

    return make


@pytest.fixture(params=MODES)
def make(
    request: pytest.FixtureRequest, redis_server: LocalRedisServer, loop_thread: LoopThread
) -> Iterator[Make]:
    created: list[Any] = []
    yield _maker(request.param, redis_server.url, loop_thread, created)
    for storage in created:
        storage.close()


@pytest.fixture(params=["sync", "async"])
def make_own(
    request: pytest.FixtureRequest,
    own_redis_server: Callable[..., LocalRedisServer],
    loop_thread: LoopThread,
) -> Iterator[tuple[Make, redis.Redis]]:
    """A cached storage on a server of its own (for FLUSHDB, CLIENT KILL, maxmemory)."""
    server = own_redis_server()
    created: list[Any] = []
    other = redis.Redis.from_url(server.url)
    yield _maker(request.param, server.url, loop_thread, created), other
    other.close()
    for storage in created:
        storage.close()


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def other_client(storage: Any) -> redis.Redis:
    client = redis.Redis.from_url(_url_of(storage))
    return client


def _url_of(storage: Any) -> str:
    kwargs = storage.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}"


def key_of(storage: Any, key: str) -> str:
    return f"{storage.options.prefix}{key}"


# --- hits, misses, TTLs ------------------------------------------------------------------------


def test_hits_are_served_locally_and_counted(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    assert storage.get("a") == {"x": 1}  # miss: read from Redis, then cached
    assert storage.get("a") == {"x": 1}  # hit
    assert storage.get_many(["a", "nope"]) == {"a": {"x": 1}, "nope": None}
    assert storage.get_many(["a", "nope"]) == {"a": {"x": 1}, "nope": None}
    stats = storage.local_cache_stats()
    assert stats.hits == 4 and stats.misses == 2 and stats.entries == 2


def test_a_hit_does_not_touch_redis(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    storage.get("a")
    other = other_client(storage)
    try:
        before = int(other.info("stats")["total_commands_processed"])
        for _ in range(50):
            assert storage.get("a") == {"x": 1}
        after = int(other.info("stats")["total_commands_processed"])
        assert after - before == 1  # only the INFO itself
    finally:
        other.close()


def test_returned_values_are_not_shared(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    first = storage.get("a")
    first["x"] = 99  # the caller's own copy
    assert storage.get("a") == {"x": 1}
    second = storage.get("a")
    second["y"] = 2
    assert storage.get("a") == {"x": 1}


def test_an_entry_never_outlives_the_keys_ttl(make: Make) -> None:
    storage = make()
    storage.set("short", {"x": 1}, ttl_ms=150)
    assert storage.get("short") == {"x": 1}
    assert storage.get("short") == {"x": 1}
    time.sleep(0.2)
    assert storage.get("short") is None


def test_max_ttl_ms_bounds_an_entry_without_any_invalidation(make: Make) -> None:
    storage = make(cache={"max_ttl_ms": 100})
    storage.set("a", {"x": 1})
    storage.get("a")
    assert storage.get("a") == {"x": 1}
    time.sleep(0.15)
    misses = storage.local_cache_stats().misses
    assert storage.get("a") == {"x": 1}
    assert storage.local_cache_stats().misses == misses + 1


def test_lru_bound(make: Make) -> None:
    storage = make(cache={"max_entries": 2})
    storage.set_many({"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}})
    storage.get("a")
    storage.get("b")
    storage.get("a")  # b is now the least recently used
    storage.get("c")
    stats = storage.local_cache_stats()
    assert stats.entries == 2 and stats.evictions == 1
    hits = stats.hits
    storage.get("a")
    assert storage.local_cache_stats().hits == hits + 1  # a stayed
    storage.get("b")
    assert storage.local_cache_stats().hits == hits + 1  # b was evicted


def test_use_cache_false_reads_redis_and_leaves_the_cache(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    storage.get("a")
    before = storage.local_cache_stats()
    assert storage.get("a", use_cache=False) == {"x": 1}
    assert storage.get_many(["a"], use_cache=False) == {"a": {"x": 1}}
    assert storage.local_cache_stats() == before


# --- another client's changes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r, k: r.set(k, b'{"x":2}'), {"x": 2}),
        (lambda r, k: r.delete(k), None),
        (lambda r, k: r.pexpire(k, 1), None),
        (lambda r, k: r.getdel(k), None),
    ],
    ids=["SET", "DEL", "EXPIRE", "GETDEL"],
)
def test_another_clients_change_is_seen_by_the_next_read(
    make: Make, change: Callable[[redis.Redis, str], object], expected: object
) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    assert storage.get("a") == {"x": 1}
    assert storage.get("a") == {"x": 1}
    other = other_client(storage)
    try:
        change(other, key_of(storage, "a"))
        time.sleep(0.005)  # EXPIRE: let the millisecond pass
        # As soon as the invalidation is in (at once, unless the machine is very busy:
        # the server may write the writer's acknowledgement just before it).
        eventually(lambda: _old_or(storage.get("a"), {"x": 1}, expected), timeout=1.0)
    finally:
        other.close()


def _old_or(value: object, old: object, expected: object) -> bool:
    assert value in (old, expected), value  # never anything else
    return value == expected


def test_flushdb_drops_everything(make_own: tuple[Make, redis.Redis]) -> None:
    make_, other = make_own
    storage = make_()
    storage.set_many({"a": {"x": 1}, "b": {"x": 2}})
    storage.get_many(["a", "b"])
    other.flushdb()
    assert storage.get_many(["a", "b"]) == {"a": None, "b": None}
    assert storage.local_cache_stats().flushes >= 1


def test_an_evicted_key_is_not_served(make_own: tuple[Make, redis.Redis]) -> None:
    make_, other = make_own
    storage = make_(schema=str)
    storage.set("victim", "v" * 1000)
    assert storage.get("victim") == "v" * 1000
    other.config_set("maxmemory-policy", "allkeys-random")
    used = int(other.info("memory")["used_memory"])
    other.config_set("maxmemory", used + 200_000)
    try:
        for i in range(2000):  # fill until the server evicts (bounded)
            other.set(f"filler:{i}", "f" * 1000)
            if not other.exists(key_of(storage, "victim")):
                break
        else:
            pytest.fail("the server never evicted the key")
    finally:
        other.config_set("maxmemory", 0)
    assert storage.get("victim") is None


def test_a_killed_invalidation_connection_empties_the_cache(
    make_own: tuple[Make, redis.Redis],
) -> None:
    make_, other = make_own
    storage = make_()
    storage.set("a", {"x": 1})
    storage.get("a")
    other.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    other.set(key_of(storage, "a"), b'{"x":2}')  # nobody is told
    eventually(lambda: storage.get("a") == {"x": 2})
    assert storage.local_cache_stats().flushes >= 1
    # A new stream serves and invalidates again.
    assert storage.get("a") == {"x": 2}
    other.set(key_of(storage, "a"), b'{"x":3}')
    assert storage.get("a") == {"x": 3}


def test_a_restarted_server_empties_the_cache(own_redis_server: Any) -> None:
    server = own_redis_server()
    storage = create_redis_storage(
        {"url": server.url}, dict[str, int], {"prefix": "p:", "local_cache": True}
    )
    try:
        storage.set("a", {"x": 1})
        storage.get("a")
        server.restart()  # nothing persisted: the key is gone
        eventually(lambda: _reads_none(storage))
    finally:
        storage.close()


def _reads_none(storage: Any) -> bool:
    try:
        return storage.get("a") is None
    except Exception:
        return False


# --- this client's own writes ----------------------------------------------------------------


def test_own_writes_are_read_at_once(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    assert storage.get("a") == {"x": 1}
    storage.set("a", {"x": 2})
    assert storage.get("a") == {"x": 2}
    storage.update("a", lambda v: {"value": {"x": v["x"] + 1}})
    assert storage.get("a") == {"x": 3}
    storage.set_many({"a": {"x": 4}, "b": {"x": 5}})
    assert storage.get_many(["a", "b"]) == {"a": {"x": 4}, "b": {"x": 5}}
    storage.update_many(["a", "b"], lambda k, v: {"value": {"x": v["x"] * 10}})
    assert storage.get_many(["a", "b"]) == {"a": {"x": 40}, "b": {"x": 50}}
    storage.delete("a")
    assert storage.get("a") is None
    storage.delete_many(["b"])
    assert storage.get("b") is None
    storage.set_many([("c", {"x": 6})])
    assert storage.get("c") == {"x": 6}


def test_own_appends_and_rate_limits_are_read_at_once(make: Make) -> None:
    events = make(schema=list[str])
    events.append("log", "a")
    assert events.get("log") == ["a"]
    events.append("log", "b")
    assert events.get("log") == ["a", "b"]
    limits = make(schema=rate_limit_schema)
    config: Any = {"type": "token-bucket", "limit": 5, "period": "1h", "key": "u"}
    rate_limit.consume(limits, config)
    other = other_client(limits)
    try:
        (stored,) = other.keys(f"{limits.options.prefix}*")
    finally:
        other.close()
    state_key = stored.decode().removeprefix(limits.options.prefix)
    first = limits.get(state_key)
    assert first is not None and limits.get(state_key) == first
    rate_limit.consume(limits, config)
    assert limits.get(state_key) != first


# --- the fill / invalidation race -----------------------------------------------------------------


def test_an_invalidation_during_a_fill_discards_it(redis_server: LocalRedisServer) -> None:
    """The value read, then the key changes and its invalidation is applied, then the fill
    completes: the value read must not be cached (the server will not announce the key
    again). A validator that blocks on a marker value holds the fill between its reply
    and its insertion."""
    reply_in = threading.Event()
    go_on = threading.Event()

    def hold(value: str) -> str:
        if value == "old":
            reply_in.set()
            assert go_on.wait(10)
        return value

    schema = core_schema.no_info_after_validator_function(hold, core_schema.str_schema())
    storage = create_redis_storage(
        {"url": redis_server.url}, schema, {"prefix": unique_prefix(), "local_cache": True}
    )
    other = redis.Redis.from_url(redis_server.url)
    try:
        other.set(key_of(storage, "k"), b'"old"')
        storage.get("warm-up")  # opens the invalidation stream
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.append(storage.get("k")))
        reader.start()
        assert reply_in.wait(10)  # the fill has its reply ("old"), not yet inserted
        other.set(key_of(storage, "k"), b'"new"')  # acknowledged: the invalidation is sent
        time.sleep(0.05)
        storage.get("warm-up")  # a lookup applies the invalidation: the fill is poisoned
        go_on.set()
        reader.join(10)
        assert result == ["old"]  # current when it was read
        assert storage.get("k") == "new"  # and not cached
        assert storage.get("k") == "new"
    finally:
        go_on.set()
        other.close()
        storage.close()


def test_concurrent_readers_and_a_writer_never_go_back(make: Make) -> None:
    """Threads read while another client counts up: a reader never sees a value older than
    one it saw before, and after the last write everybody reads the last value."""
    storage = make(schema=int)
    other = other_client(storage)
    redis_key = key_of(storage, "n")
    other.set(redis_key, 0)
    failures: list[str] = []
    done = threading.Event()

    def read() -> None:
        last = -1
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            value = storage.get("n")
            if value < last:
                failures.append(f"went back from {last} to {value}")
            last = value

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for i in range(1, 201):
            other.set(redis_key, i)
        eventually(lambda: storage.get("n") == 200)
    finally:
        done.set()
        for thread in readers:
            thread.join(10)
        other.close()
    assert not failures


# --- what is refused, and what degrades --------------------------------------------------------


# --- Redis Cluster: a stream per node, slots that move -------------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalRedisCluster]:
    """A 3-master cluster of this module's own: a slot is moved."""
    with _local_cluster(3) as local:
        yield local


@pytest.fixture(params=["sync", "async"])
def cluster_storage(
    request: pytest.FixtureRequest, own_cluster: LocalRedisCluster, loop_thread: LoopThread
) -> Iterator[Callable[..., tuple[Any, RedisCluster]]]:
    """A cached storage on the module's cluster (blocking, or asyncio behind the blocking
    API), and a plain cluster client for the other side."""
    created: list[Any] = []
    host, port = own_cluster.startup_nodes[0]

    def make(**cache: Any) -> tuple[Any, RedisCluster]:
        options = {"prefix": unique_prefix(), "local_cache": cache or True}
        if request.param == "async":
            client: Any = redis.asyncio.cluster.RedisCluster(host=host, port=port)
            storage: Any = BlockingShim(
                create_async_redis_storage({"client": client}, int, options), loop_thread
            )
        else:
            storage = create_redis_storage(
                {"client": RedisCluster(host=host, port=port)}, int, options
            )
        other = RedisCluster(host=host, port=port)
        created.extend((storage, other))
        return storage, other

    yield make
    for thing in created:
        thing.close()


def _one_key_per_master(local: LocalRedisCluster, stem: str) -> list[str]:
    owners = {node.port: node for node in _masters(local)}
    found: dict[int, str] = {}
    for i in range(10_000):
        name = f"{stem}{i}"
        owner = next(n for n in owners.values() if n.owns(key_slot(name.encode())))
        found.setdefault(owner.port, name)
        if len(found) == len(owners):
            return list(found.values())
    raise AssertionError("no key for every master")


@pytest.mark.parametrize("broadcast", [False, True])
def test_cluster_keys_on_three_masters(
    own_cluster: LocalRedisCluster, cluster_storage: Any, broadcast: bool
) -> None:
    storage, other = cluster_storage(broadcast=broadcast)
    keys = _one_key_per_master(own_cluster, "k")
    storage.set_many({k: i for i, k in enumerate(keys)})
    assert storage.get_many(keys) == {k: i for i, k in enumerate(keys)}  # fills
    for i, k in enumerate(keys):
        assert storage.get(k) == i  # hits
    assert storage.local_cache_stats().hits == 3
    assert len(storage._stream.streams) == 3  # one invalidation stream per master
    for i, k in enumerate(keys):  # another client changes each key on its own master
        other.set(storage._setup.layout.value_key(k.encode()), 100 + i)
    for i, k in enumerate(keys):
        eventually(lambda k=k, i=i: _old_or(storage.get(k), i, 100 + i), timeout=1.0)
    assert storage.get_many(keys) == {k: 100 + i for i, k in enumerate(keys)}


def test_cluster_slot_migration(own_cluster: LocalRedisCluster, cluster_storage: Any) -> None:
    """A cached key whose slot moves to another master: reads stay right throughout (the
    move deletes the key on the source, which the source's stream announces; a read that
    is redirected is read again where the key is, uncached), and afterwards the key is
    cached from its new master and invalidated by that master's stream."""
    storage, other = cluster_storage()
    key = "moving"
    redis_key = storage._setup.layout.value_key(key.encode())
    storage.set(key, 1)
    assert storage.get(key) == 1
    assert storage.get(key) == 1
    migration = _plan_migration(own_cluster, key_slot(key.encode()))
    migration.open()
    assert storage.get(key) == 1
    migration.move_keys([redis_key])  # the key lives on the target now (ASK)
    assert storage.get(key) == 1
    migration.finish()  # the slot belongs to the target (MOVED)
    for _ in range(3):
        assert storage.get(key) == 1
    other.set(redis_key, 2)  # on the new owner
    eventually(lambda: _old_or(storage.get(key), 1, 2), timeout=1.0)
    hits = storage.local_cache_stats().hits
    assert storage.get(key) == 2
    assert storage.local_cache_stats().hits == hits + 1  # cached again, from the target
    storage.set(key, 3)
    assert storage.get(key) == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"max_ttl_ms": -1}, "max_ttl_ms"),
        ({"broadcast": "yes"}, "broadcast"),
        ({"size": 3}, "unknown local_cache option"),
        ("big", "local_cache must be"),
    ],
)
def test_bad_cache_options_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        create_redis_storage({"url": "redis://127.0.0.1:1"}, int, {"local_cache": value})


def test_broadcast_needs_a_prefix() -> None:
    with pytest.raises(InvalidOptionError, match="prefix"):
        create_redis_storage(
            {"url": "redis://127.0.0.1:1"}, int, {"local_cache": {"broadcast": True}}
        )


def test_a_user_without_tracking_rights_reads_uncached(
    own_redis_server: Callable[..., LocalRedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_redis_server()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-client", "-subscribe"
    )
    storage = create_redis_storage(
        {"client": redis.Redis.from_url(server.url, username="app", password="pw")},
        int,
        {"prefix": "p:", "local_cache": True},
    )
    try:
        storage.set("a", 1)
        assert storage.get("a") == 1
        admin.set("p:a", 2)
        assert storage.get("a") == 2  # never cached: always read from Redis
        assert storage.local_cache_stats().entries == 0
        for _ in range(5):
            assert storage.get("a") == 2
        # One warning, and no new connection per miss: a refusal is not retried at once.
        assert caplog.text.count("local cache unavailable") == 1
        clients = admin.client_list()
        assert len([c for c in clients if c.get("user") == "app"]) <= 2
    finally:
        storage.close()
        admin.close()


# --- a model of two clients ---------------------------------------------------------------

_operations = st.lists(
    st.tuples(
        st.sampled_from(["read", "read_many", "write_here", "write_there", "delete_there"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module")
def model_storages(
    redis_server: LocalRedisServer, loop_thread: LoopThread
) -> Iterator[list[tuple[Any, redis.Redis]]]:
    pairs = []
    for mode in MODES:
        created: list[Any] = []
        storage = _maker(mode, redis_server.url, loop_thread, created)(schema=int)
        pairs.append((storage, redis.Redis.from_url(redis_server.url)))
    yield pairs
    for storage, other in pairs:
        storage.close()
        other.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=_operations)
def test_model_of_two_clients(
    model_storages: list[tuple[Any, redis.Redis]], operations: list[tuple[str, str, int]]
) -> None:
    """Reads against a model of two clients. This client's own writes are read at once.
    Another client's acknowledged write becomes visible as soon as its invalidation has
    reached this process (the server may write the acknowledgement a moment before the
    invalidation, on another socket): until then a read may still return the value this
    client last knew, never anything else, and once the new value was read the old one
    never comes back."""
    for storage, other in model_storages:
        _run_model(storage, other, operations)


def _run_model(storage: Any, other: redis.Redis, operations: list[tuple[str, str, int]]) -> None:
    model: dict[str, int | None] = {}
    unseen: dict[str, int | None] = {}  # key -> its value before another client's write
    storage.delete_many(["a", "b", "c"])

    def check(key: str, value: int | None, read_again: Callable[[], int | None]) -> None:
        deadline = time.monotonic() + 2.0
        while value != model.get(key):
            assert key in unseen and value == unseen[key], (key, value, model, unseen)
            assert time.monotonic() < deadline, f"{key}: the invalidation never came"
            time.sleep(0.001)
            value = read_again()
        unseen.pop(key, None)

    for operation, key, value in operations:
        if operation == "read":
            check(key, storage.get(key), lambda k=key: storage.get(k))  # type: ignore[misc]
        elif operation == "read_many":
            got = storage.get_many(["a", "b", "c"])
            for k in "abc":
                check(k, got[k], lambda k=k: storage.get_many(["a", "b", "c"])[k])  # type: ignore[misc]
        elif operation == "write_here":
            storage.set(key, value)
            model[key] = value
            unseen.pop(key, None)  # read at once: no grace
        else:
            unseen.setdefault(key, model.get(key))
            if operation == "write_there":
                other.set(key_of(storage, key), value)
                model[key] = value
            else:
                other.delete(key_of(storage, key))
                model[key] = None


# --- Sentinel ----------------------------------------------------------------------------------


def test_sentinel_failover_after_the_master_died(
    sentinel_set: tuple[LocalRedisServer, LocalRedisServer, Any],
) -> None:
    """The master dies: its invalidation stream breaks, so everything cached from it is
    dropped at once; once the sentinel has promoted the replica, reads reach it and are
    cached from it, checked (the stream's name behind its client id) and invalidated by
    a stream on the new master."""
    master, replica, sentinel = sentinel_set
    sentinels = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2)
    client = sentinels.master_for("mymaster", socket_timeout=2)
    storage = create_redis_storage({"client": client}, int, {"prefix": "sc:", "local_cache": True})
    new_master = redis.Redis(port=replica.port)
    try:
        storage.set("k", 1)
        assert storage.get("k") == 1
        assert storage.get("k") == 1
        assert redis.Redis(port=master.port).wait(1, 2000) == 1
        master.stop()
        _reads(storage, "k")  # a lookup finds the stream closed: everything is dropped
        assert storage.local_cache_stats().flushes >= 1
        eventually(lambda: _master_port(sentinels) == replica.port, timeout=20)
        eventually(lambda: _reads(storage, "k") == 1, timeout=10)
        new_master.set("sc:k", 2)  # written on the new master
        eventually(lambda: _old_or(storage.get("k"), 1, 2), timeout=1.0)
        hits = storage.local_cache_stats().hits
        assert storage.get("k") == 2
        assert storage.local_cache_stats().hits == hits + 1  # cached from the new master
        new_master.set("sc:k", 3)  # and invalidated by the new master's stream
        eventually(lambda: _old_or(storage.get("k"), 2, 3), timeout=1.0)
    finally:
        storage.close()
        client.close()
        new_master.close()


def _master_port(sentinels: Sentinel) -> int | None:
    try:
        return int(sentinels.discover_master("mymaster")[1])
    except redis.exceptions.ConnectionError:  # no master while the sentinel fails over
        return None


def _reads(storage: Any, key: str) -> Any:
    try:
        return storage.get(key)
    except redis.exceptions.ConnectionError:  # the switch: the pool reconnects
        return None


# --- found by an adversarial run -------------------------------------------------------------


def test_overlapping_fills_never_leave_the_older_value() -> None:
    """Two reads of a key overlap; the one that read the older value completes first and
    is cached, which poisons the other; the newer one, completing, must still drop the
    older entry: its caller got the newer value (no I/O: the cache's own rules)."""
    from bantai.redis.local_cache import LocalCache
    from bantai.storage.options import LocalCacheOptions

    cache = LocalCache(LocalCacheOptions())
    older, newer = cache.begin_fill(b"k"), cache.begin_fill(b"k")
    assert cache.end_fill(older, b"1", 1, -1)  # cached, and the other read is poisoned
    assert not cache.end_fill(newer, b"2", 2, -1)
    assert cache.lookup(b"k") is None  # the older value is gone: the next read refills


def test_the_first_read_of_a_fresh_asyncio_cluster_client(
    own_cluster: LocalRedisCluster, loop_thread: LoopThread
) -> None:
    host, port = own_cluster.startup_nodes[0]
    client = redis.asyncio.cluster.RedisCluster(host=host, port=port)
    storage = BlockingShim(
        create_async_redis_storage(
            {"client": client}, int, {"prefix": unique_prefix(), "local_cache": True}
        ),
        loop_thread,
    )
    try:
        assert storage.get("k") is None  # the slot map is loaded first, not a KeyError
        storage.set("k", 1)
        assert storage.get("k") == 1
        assert storage.get("k") == 1
        assert storage.local_cache_stats().hits == 1
    finally:
        storage.close()


def test_cluster_an_absent_key_whose_slot_moved(
    own_cluster: LocalRedisCluster, cluster_storage: Any
) -> None:
    """Absence is not cached on a cluster: a migration moves nothing for a key that does
    not exist, so nothing would announce its creation on the new master."""
    storage, other = cluster_storage()
    key = "absent"
    redis_key = storage._setup.layout.value_key(key.encode())
    assert storage.get(key) is None
    assert storage.get(key) is None
    _plan_migration(own_cluster, key_slot(key.encode())).run(batch=5, pause=0.0)
    other.set(redis_key, 42)  # created on the new master
    assert storage.get(key) == 42


def test_killed_data_connections_do_not_lose_invalidations(
    make_own: tuple[Make, redis.Redis],
) -> None:
    """Redis files a tracked key under the connection that read it and silently forgets
    it when that connection closes: the reads that fill the cache go over a connection
    the cache watches, and its loss drops everything."""
    make_, other = make_own
    storage = make_()
    storage.set("k", {"x": 1})
    assert storage.get("k") == {"x": 1}
    assert storage.get("k") == {"x": 1}
    other.execute_command("CLIENT", "KILL", "TYPE", "normal")  # every data connection
    other.set(key_of(storage, "k"), b'{"x":2}')
    eventually(lambda: _old_or(storage.get("k"), {"x": 1}, {"x": 2}), timeout=1.0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_idle_timeout_does_not_lose_invalidations(
    mode: str, own_redis_server: Callable[..., LocalRedisServer], loop_thread: LoopThread
) -> None:
    """A server `timeout` closes connections idle for that long: a hot key read only from
    the cache leaves the reading connection idle."""
    server = own_redis_server("--timeout", "1")
    created: list[Any] = []
    storage = _maker(mode, server.url, loop_thread, created)()
    other = redis.Redis.from_url(server.url)
    try:
        storage.set("k", {"x": 1})
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # hits only, for longer than the timeout
            assert storage.get("k") == {"x": 1}
            time.sleep(0.01)
        other.set(key_of(storage, "k"), b'{"x":2}')
        eventually(lambda: _old_or(storage.get("k"), {"x": 1}, {"x": 2}), timeout=1.0)
    finally:
        other.close()
        for each in created:
            each.close()


def test_a_read_timing_out_elsewhere_does_not_lose_invalidations(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    """A timeout on the driver's connections drops them all; the cache's reads did not go
    over them."""
    server = own_redis_server("--enable-debug-command", "yes")
    client = redis.Redis.from_url(server.url, socket_timeout=0.3)
    storage = create_redis_storage({"client": client}, int, {"prefix": "p:", "local_cache": True})
    other = redis.Redis.from_url(server.url)
    try:
        storage.set("k", 1)
        assert storage.get("k") == 1
        assert storage.get("k") == 1
        sleeper = threading.Thread(target=lambda: other.execute_command("DEBUG", "SLEEP", "0.8"))
        sleeper.start()
        time.sleep(0.05)
        with pytest.raises(redis.exceptions.TimeoutError):
            storage.get("other", use_cache=False)
        sleeper.join(5)
        other.set("p:k", 2)
        eventually(lambda: _old_or(storage.get("k"), 1, 2), timeout=1.0)
    finally:
        storage.close()
        other.close()


@pytest.mark.parametrize("socket_timeout", [None, 5.0])
def test_concurrent_misses_do_not_mistake_the_fill_connection_for_closed(
    redis_server: LocalRedisServer, socket_timeout: float | None
) -> None:
    """Lookups check whether the idle fill connection was closed; with fills in flight on
    other threads (and a socket timeout set) that check must neither wait nor see a close
    that did not happen."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=socket_timeout)
    storage = create_redis_storage(
        {"client": client}, int, {"prefix": unique_prefix(), "local_cache": {"max_entries": 1}}
    )
    try:
        storage.set_many({"a": 1, "b": 2})
        errors: list[BaseException] = []

        def misses(i: int) -> None:
            try:
                for j in range(600):  # one entry, two keys in turn: (nearly) all misses
                    key = "ab"[(i + j) % 2]
                    assert storage.get(key) == (1 if key == "a" else 2)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=misses, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert storage.local_cache_stats().flushes == 0
    finally:
        storage.close()


# --- found by a review -----------------------------------------------------------------------


def test_a_closed_cached_storage_refuses_calls(make: Make) -> None:
    storage = make()
    storage.set("a", {"x": 1})
    assert storage.get("a") == {"x": 1}
    assert storage.get("a") == {"x": 1}
    storage.close()
    with pytest.raises(StorageClosedError):
        storage.get("a")
    with pytest.raises(StorageClosedError):
        storage.get_many(["a"])


def test_fixed_window_decisions_are_read_back_at_once(make: Make) -> None:
    limits = make(schema=rate_limit_schema)
    config: Any = {"type": "fixed-window", "limit": 100, "period": "1h", "key": "u"}
    first = rate_limit.consume(limits, config)
    other = other_client(limits)
    try:
        (stored,) = other.keys(f"{limits.options.prefix}*")
    finally:
        other.close()
    window_key = stored.decode().removeprefix(limits.options.prefix)
    assert window_key.startswith("u:")  # the window's own key
    for _ in range(5):
        limits.get(window_key)  # cached
        rate_limit.consume(limits, config)
        assert limits.get(window_key) == limits.get(window_key, use_cache=False)
    assert first.allowed


def test_batch_writes_in_every_form_are_read_back_at_once(make: Make) -> None:
    storage = make()
    storage.set_many({"a": {"x": 1}, "b": {"x": 1}})
    storage.get_many(["a", "b"])
    storage.set_many(items={"a": {"x": 2}})
    assert storage.get("a") == {"x": 2}
    storage.set_many([["b", {"x": 3}]])  # pairs as lists
    assert storage.get("b") == {"x": 3}
    storage.delete_many(keys=["a"])
    assert storage.get("a") is None
    storage.update_many(keys=iter(["b"]), updater=lambda k, v: {"value": {"x": 4}})
    assert storage.get("b") == {"x": 4}


def test_a_single_key_is_not_taken_for_a_batch(make: Make) -> None:
    storage = make()
    storage.set_many({"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1}})
    with pytest.raises(InvalidKeyError):
        storage.delete_many("abc")
    assert storage.get_many(["a", "b", "c"]) == {k: {"x": 1} for k in "abc"}
