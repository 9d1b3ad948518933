"""Fixtures: real `redis-server` processes on free loopback ports, started and stopped by
the tests themselves. A missing redis-server is a failure with install instructions, never
a silent skip. No test uses or flushes a server it did not start."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bantai import create_memory_storage, create_redis_storage
from bantai.testing import LocalRedisServer, RedisServerNotFound, find_redis_server

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


def _factory(kind: str, url: str) -> tuple[StorageFactory, list[Any]]:
    created: list[Any] = []

    def make(schema: object, **options: Any) -> Any:
        options.setdefault("prefix", unique_prefix())
        if kind == "memory":
            storage = create_memory_storage(schema, options)
        else:
            storage = create_redis_storage({"url": url}, schema, options)
        created.append(storage)
        return storage

    return make, created


@pytest.fixture(params=["memory", "redis"])
def make_storage(
    request: pytest.FixtureRequest, redis_server: LocalRedisServer
) -> Iterator[StorageFactory]:
    """The conformance suite runs every test against both storages."""
    make, created = _factory(request.param, redis_server.url)
    yield make
    for storage in created:
        storage.close()


@pytest.fixture
def make_redis_storage(redis_server: LocalRedisServer) -> Iterator[StorageFactory]:
    make, created = _factory("redis", redis_server.url)
    yield make
    for storage in created:
        storage.close()
