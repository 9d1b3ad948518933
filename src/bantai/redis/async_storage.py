"""The public asyncio Redis adapter: the same operations as `RedisStorage`, awaited."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar, cast, overload

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from bantai.codec import ValidatorOf
from bantai.errors import InvalidOptionError
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult
from bantai.redis import operations as ops
from bantai.redis.async_driver import AsyncDriver
from bantai.redis.keys import ClusterKeyLayout, KeyLayout
from bantai.redis.local_cache import CacheStats
from bantai.redis.local_line import GOT_TURN, TIMED_OUT, KeyQueue
from bantai.redis.observed import build
from bantai.redis.speedups import append_one, consume_one, new_token, update_one
from bantai.redis.storage import connection_source
from bantai.steps import Operation, run_async
from bantai.storage.inputs import TTL, Key, encode_key
from bantai.storage.locking import lock_timeout_error
from bantai.storage.options import RedisStorageOptions, StorageOptions
from bantai.storage.protocol import AsyncKeyedUpdater, AsyncUpdater, Items, K, ValueIn

T = TypeVar("T")


class AsyncRedisStorage(Generic[T]):
    """Schema-validated values in Redis for asyncio. Every task sharing one instance sends
    through one auto-pipelined connection. Create it with `create_async_redis_storage`;
    use it from one event loop. Updaters may be plain or coroutine functions."""

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        schema: object,
        options: StorageOptions | Mapping[str, Any] | None = None,
        *,
        owns_client: bool = False,
    ) -> None:
        self.options = RedisStorageOptions.coerce(options)
        if self.options.busy_poll_us:
            raise InvalidOptionError(
                "busy_poll_us applies to the blocking adapter only (asyncio never spins)"
            )
        self._client = client
        self._owns_client = owns_client
        self._driver = AsyncDriver(client)
        if isinstance(client, AsyncRedisCluster):
            # Cluster: one channel per node, the hash-tagged layout (see RedisStorage).
            layout: KeyLayout = ClusterKeyLayout(self.options.prefix_bytes)
        else:
            layout = KeyLayout(self.options.prefix_bytes)
        self._setup: ops.Setup[T] = ops.Setup(layout, self.options.codec(schema), self.options)
        # Updates of one key through this adapter line up here before the Redis lock.
        self._in_line = KeyQueue(self.options.lock_ttl_ms)

    @property
    def client(self) -> redis.asyncio.Redis | AsyncRedisCluster:
        """The redis-py asyncio client this adapter sends through."""
        return self._client

    async def get(self, key: Key, *, use_cache: bool = True) -> T | None:
        """See `StorageAdapter.get` (`use_cache=False`: past the `local_cache`)."""
        setup = self._setup
        return ops.get_reply(setup, key, await self._driver.call(ops.get_request(setup, key)))

    async def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set`."""
        setup = self._setup
        request = ops.set_request(setup, key, value, ttl_ms)
        ops.written_reply(setup, key, await self._driver.call(request, write=True))

    async def delete(self, key: Key) -> None:
        """See `StorageAdapter.delete`."""
        setup = self._setup
        request = ops.delete_request(setup, key)
        ops.written_reply(setup, key, await self._driver.call(request, write=True))

    async def append(self, key: Key, item: Any) -> None:
        """See `StorageAdapter.append`."""
        setup = self._setup
        if setup.codec.item_codec is not None:  # a plain list: the single-script hot path
            await run_async(append_one(setup, key, item), self._driver.round_trip)
        else:
            await run_async(ops.append(setup, key, item), self._driver.round_trip)

    async def update(self, key: Key, updater: AsyncUpdater[T]) -> T | None:
        """See `StorageAdapter.update`; the updater may be a coroutine function. Tasks
        updating the same key through this adapter line up in-process (FIFO): only the
        first competes for the Redis lock, the next goes as soon as it is done."""
        raw = encode_key(key)
        deadline = time.monotonic() + self.options.lock_timeout_ms / 1000.0
        turn = await self._in_line.acquire_async(raw, deadline)
        if turn == TIMED_OUT:
            raise lock_timeout_error(self.options, (key,))
        setup = self._setup
        op: Operation[Any]
        if "eviction-policy" in setup.done:  # the single-key hot path (after the first)
            op = update_one(setup, key, updater, new_token(), deadline)
        else:
            op = ops.update(setup, key, updater, deadline=deadline)
        failure: BaseException | None = None
        try:
            return cast("T | None", await run_async(op, self._driver.round_trip))
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if turn == GOT_TURN:
                self._in_line.release(raw, failure)

    async def get_many(self, keys: Iterable[K], *, use_cache: bool = True) -> dict[K, T | None]:
        """See `StorageAdapter.get_many` (`use_cache=False`: past the `local_cache`)."""
        return await self._driver.run(ops.get_many(self._setup, keys))

    async def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set_many`."""
        await self._driver.run(ops.set_many(self._setup, items, ttl_ms))

    async def delete_many(self, keys: Iterable[Key]) -> None:
        """See `StorageAdapter.delete_many`."""
        await self._driver.run(ops.delete_many(self._setup, keys))

    async def update_many(
        self, keys: Iterable[K], updater: AsyncKeyedUpdater[K, T]
    ) -> dict[K, T | None]:
        """See `StorageAdapter.update_many`; the updater may be a coroutine function."""
        return await self._driver.run(ops.update_many(self._setup, keys, updater))

    async def ping(self) -> float:
        """See `RedisStorage.ping`."""
        started = time.perf_counter()
        reply = await self._driver.call((b"PING",))
        if isinstance(reply, Exception):
            raise reply
        return time.perf_counter() - started

    def local_cache_stats(self) -> CacheStats | None:
        """The `local_cache`'s counters, or None when it is off."""
        return None

    async def _bantai_consume(
        self, config: RateLimitConfig, key: str, cost: int, now: int
    ) -> RateLimitResult:
        """Internal hook of `rate_limit.consume_async`: one Lua script, one round trip."""
        op = consume_one(self._setup, config, key, cost, now, time.time_ns() // 1_000_000)
        return await run_async(op, self._driver.round_trip)

    async def close(self) -> None:
        """Close the shared connection, and the client if the adapter created it. Later
        calls raise `StorageClosedError`."""
        await self._driver.close()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisStorage[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@overload
def create_async_redis_storage(
    redis_options: Mapping[str, Any] | redis.asyncio.Redis | AsyncRedisCluster,
    schema: type[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncRedisStorage[T]: ...
@overload
def create_async_redis_storage(
    redis_options: Mapping[str, Any] | redis.asyncio.Redis | AsyncRedisCluster,
    schema: ValidatorOf[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncRedisStorage[T]: ...
@overload
def create_async_redis_storage(
    redis_options: Mapping[str, Any] | redis.asyncio.Redis | AsyncRedisCluster,
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncRedisStorage[Any]: ...
def create_async_redis_storage(
    redis_options: Mapping[str, Any] | redis.asyncio.Redis | AsyncRedisCluster,
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncRedisStorage[Any]:
    """Create the asyncio Redis adapter: ``{"url": ...}``, ``{"client":
    redis.asyncio.Redis(...)}`` or a `redis.asyncio.Redis`; schema and options as for
    `create_redis_storage`."""
    client, url = connection_source(
        redis_options, (redis.asyncio.Redis, AsyncRedisCluster), asyncio_api=True
    )
    storage_options = RedisStorageOptions.coerce(options)  # check before opening anything
    facade: type[AsyncRedisStorage[Any]] = AsyncRedisStorage
    if storage_options.cache is not None:
        from bantai.redis.cached import (
            CachedAsyncRedisStorage,  # a subclass of this module's facade
        )

        facade = CachedAsyncRedisStorage
    if client is not None:
        return build(facade, storage_options, client, schema)
    client = redis.asyncio.Redis.from_url(url)
    return build(facade, storage_options, client, schema, owns_client=True)
