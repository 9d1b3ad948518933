"""Type-checked, never run: the storage factories carry the schema's type through every
method, in mypy --strict and in pyright (strict). A line marked with both ignore comments
must be an error in both checkers (each is told to report an ignore that is not needed)."""

from __future__ import annotations

import datetime
from typing import Any, TypedDict

from pydantic import BaseModel, TypeAdapter
from typing_extensions import assert_type

from bantai import (
    AsyncMemoryStorage,
    AsyncRedisStorage,
    CacheStats,
    LocalCacheOptions,
    MemoryStorage,
    RedisStorage,
    UpdateResult,
    create_async_memory_storage,
    create_async_redis_storage,
    create_memory_storage,
    create_redis_storage,
    rate_limit_schema,
)
from bantai.storage import AsyncStorageAdapter, StorageAdapter


class User(BaseModel):
    name: str
    visits: int = 0


class Point(TypedDict):
    x: int
    y: int


URL = {"url": "redis://127.0.0.1:1"}


def factories_keep_the_schema_type() -> None:
    assert_type(create_redis_storage(URL, User), RedisStorage[User])
    assert_type(create_memory_storage(User), MemoryStorage[User])
    assert_type(create_async_redis_storage(URL, User), AsyncRedisStorage[User])
    assert_type(create_async_memory_storage(User), AsyncMemoryStorage[User])
    assert_type(create_redis_storage(URL, TypeAdapter(list[int])), RedisStorage[list[int]])
    assert_type(create_memory_storage(list[str]), MemoryStorage[list[str]])
    assert_type(create_memory_storage(dict[str, int]), MemoryStorage[dict[str, int]])
    # a raw pydantic-core CoreSchema says nothing about the type
    assert_type(create_redis_storage(URL, rate_limit_schema), RedisStorage[Any])


def sync_methods(users: RedisStorage[User]) -> None:
    assert_type(users.get("u"), User | None)
    users.set("u", User(name="a"))
    users.set("u", {"name": "a"}, ttl_ms=datetime.timedelta(seconds=1))  # validated at run time
    users.set("u", 42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    users.set("u", User(name="a"), ttl_ms="1s")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    def visit(current: User | None) -> UpdateResult[User] | None:
        if current is None:
            return None
        return UpdateResult(User(name=current.name, visits=current.visits + 1), ttl_ms=60_000)

    assert_type(users.update("u", visit), User | None)
    users.update("u", lambda current: {"value": {"name": "b"}})

    def wrong(current: int | None) -> None:
        return None

    users.update("u", wrong)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def batches_are_generic_in_the_key_type(users: MemoryStorage[User]) -> None:
    by_name: dict[str, User] = {"a": User(name="a")}
    users.set_many(by_name)
    users.set_many([("b", User(name="b")), ("c", User(name="c"))], ttl_ms=1000)
    users.set_many({b"d": {"name": "d"}})
    found: dict[str, User | None] = users.get_many(["a", "b"])
    assert_type(users.get_many([b"a"]), dict[bytes, User | None])
    assert_type(found, dict[str, User | None])

    def keyed(key: str, current: User | None) -> dict[str, Any]:
        return {"value": {"name": key}}

    assert_type(users.update_many(["a"], keyed), dict[str, User | None])


async def asyncio_methods(
    users: AsyncRedisStorage[User], points: AsyncMemoryStorage[Point]
) -> None:
    assert_type(await users.get("u"), User | None)

    async def visit(current: User | None) -> UpdateResult[User]:
        return UpdateResult(current or User(name="new"))

    assert_type(await users.update("u", visit), User | None)
    await points.set("p", {"x": 1, "y": 2})
    point = await points.get("p")
    if point is not None:
        assert_type(point["x"], int)


def protocols_are_met() -> None:
    sync: StorageAdapter[User] = create_redis_storage(URL, User)
    memory: StorageAdapter[User] = create_memory_storage(User)
    asynchronous: AsyncStorageAdapter[User] = create_async_redis_storage(URL, User)
    async_memory: AsyncStorageAdapter[User] = create_async_memory_storage(User)
    wrong: StorageAdapter[int] = memory  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del sync, asynchronous, async_memory, wrong


def rate_limits_are_typed(users: RedisStorage[User]) -> None:
    from bantai import RateLimitConfigDict, rate_limit
    from bantai.ratelimit import RateLimitResult

    limits = create_redis_storage(URL, rate_limit_schema)
    good: RateLimitConfigDict = {"type": "gcra", "limit": 5, "period": "1m", "key": "k"}
    assert_type(rate_limit.consume(limits, good), RateLimitResult)
    rate_limit.consume(limits, {"type": "gcra", "limit": 5, "period": datetime.timedelta(1)})
    rate_limit.consume(limits, {"type": "gcrb", "limit": 5, "period": "1m"})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    rate_limit.consume(limits, {"type": "gcra", "limt": 5, "period": "1m"})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    rate_limit.consume(object(), good)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def async_rate_limits(limits: AsyncRedisStorage[Any]) -> None:
    from bantai import rate_limit

    result = await rate_limit.consume_async(
        limits, {"type": "fixed-window", "limit": 1, "period": 1000}
    )
    assert_type(result.retry_after_ms, int | None)


def local_cache_is_typed(users: RedisStorage[User]) -> None:
    cached = create_redis_storage(URL, User, {"local_cache": LocalCacheOptions(max_entries=10)})
    assert_type(cached, RedisStorage[User])
    assert_type(cached.get("u", use_cache=False), User | None)
    assert_type(cached.get_many(["a"], use_cache=False), dict[str, User | None])
    assert_type(users.local_cache_stats(), CacheStats | None)
    stats = users.local_cache_stats()
    if stats is not None:
        assert_type(stats.hits, int)
    users.get("u", use_cache="no")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
