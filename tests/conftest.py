"""Fixtures: real `redis-server` processes on free loopback ports, started and stopped by
the tests themselves. A missing redis-server is a failure with install instructions, never
a silent skip. No test uses or flushes a server it did not start."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from bantai import (
    create_async_memory_storage,
    create_async_redis_storage,
    create_memory_storage,
    create_redis_storage,
)
from bantai.redis import _speedups_pure
from bantai.testing import (
    LocalRedisCluster,
    LocalRedisServer,
    RedisServerNotFound,
    find_redis_server,
)

try:
    from bantai.redis import _speedups as _compiled
except ImportError:  # only where the extension was not built
    _compiled = None  # type: ignore[assignment]

_prefix_counter = itertools.count()


def unique_prefix() -> str:
    """Tests share a server; a prefix per storage keeps their keys apart."""
    return f"t{next(_prefix_counter)}:"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedisServer]:
    try:
        find_redis_server()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    with LocalRedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A local 3-master Redis Cluster for the whole session."""
    try:
        find_redis_server()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    with LocalRedisCluster(3) as cluster:
        yield cluster


@pytest.fixture
def own_redis_server() -> Iterator[Callable[..., LocalRedisServer]]:
    """A dedicated server for tests that kill, pause, restart or reconfigure it."""
    servers: list[LocalRedisServer] = []

    def start(*args: str) -> LocalRedisServer:
        server = LocalRedisServer(*args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def raw(redis_server: LocalRedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared test server, to look behind the adapter.
    The server is ours (started by the session fixture), so it starts the test empty."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


StorageFactory = Callable[..., Any]


class LoopThread:
    """An event loop in a thread of its own, so blocking tests can drive asyncio storages."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class BlockingShim:
    """Presents an asyncio storage through the blocking API by running every call on the
    loop thread: the whole conformance suite then exercises the asyncio adapters too,
    including many threads issuing calls concurrently onto one event loop."""

    def __init__(self, storage: Any, loop: LoopThread) -> None:
        self._storage = storage
        self._loop = loop
        self.options = storage.options

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._storage, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self._loop.run(attr(*args, **kwargs))


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def _factory(
    kind: str, url: str, loop: LoopThread | None = None, cluster: Any = None
) -> tuple[StorageFactory, list[Any]]:
    created: list[Any] = []

    def make(schema: object, **options: Any) -> Any:
        options.setdefault("prefix", unique_prefix())
        if kind == "memory":
            storage: Any = create_memory_storage(schema, options)
        elif kind == "redis":
            storage = create_redis_storage({"url": url}, schema, options)
        elif kind == "cluster":
            host, port = cluster.startup_nodes[0]
            client = redis.cluster.RedisCluster(host=host, port=port)
            storage = create_redis_storage({"client": client}, schema, options)
            created.append(client)
        else:
            assert loop is not None
            if kind == "async-memory":
                inner: Any = create_async_memory_storage(schema, options)
            elif kind == "async-cluster":
                host, port = cluster.startup_nodes[0]
                inner = create_async_redis_storage(
                    {"client": redis.asyncio.cluster.RedisCluster(host=host, port=port)},
                    schema,
                    options,
                )
            else:
                inner = create_async_redis_storage({"url": url}, schema, options)
            storage = BlockingShim(inner, loop)
        created.append(storage)
        return storage

    return make, created


@pytest.fixture(
    params=["memory", "redis", "async-memory", "async-redis", "cluster", "async-cluster"]
)
def make_storage(
    request: pytest.FixtureRequest, redis_server: LocalRedisServer, loop_thread: LoopThread
) -> Iterator[StorageFactory]:
    """The conformance suite runs every test against every storage: memory and Redis,
    sync and asyncio, and the sync adapter on a local 3-master Redis Cluster."""
    uses_cluster = request.param in ("cluster", "async-cluster")
    cluster = request.getfixturevalue("redis_cluster") if uses_cluster else None
    make, created = _factory(request.param, redis_server.url, loop_thread, cluster)
    yield make
    for storage in created:
        storage.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_blocking_storage(
    request: pytest.FixtureRequest, redis_server: LocalRedisServer
) -> Iterator[StorageFactory]:
    """For tests whose updaters block (sleep, wait on threads, nest calls): they would stall
    an event loop; `test_async.py` has their asyncio counterparts."""
    cluster = request.getfixturevalue("redis_cluster") if request.param == "cluster" else None
    make, created = _factory(request.param, redis_server.url, cluster=cluster)
    yield make
    for storage in created:
        storage.close()


@pytest.fixture
def make_redis_storage(redis_server: LocalRedisServer) -> Iterator[StorageFactory]:
    make, created = _factory("redis", redis_server.url)
    yield make
    for storage in created:
        storage.close()


# --- the compiled hot path and its pure twin, side by side in one process ------------------


@pytest.fixture(params=["python", "cython"])
def twin(request: pytest.FixtureRequest) -> Any:
    """Each twin of the hot path (as multidict's and yarl's suites do), whichever one the
    process uses: tests taking this fixture run against both in every build."""
    if request.param == "python":
        return _speedups_pure
    if _compiled is None:
        if os.environ.get("BANTAI_EXPECT_IMPLEMENTATION") == "cython":
            pytest.fail("the compiled extension was expected but does not import")
        pytest.skip("the compiled extension is not built here")
    return _compiled
