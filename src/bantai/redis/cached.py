"""The Redis adapters with a local cache (the `local_cache` option): `get` and `get_many`
answer from this process while Redis has not said the key changed since it was read;
every other method is the plain adapter's, with the keys it writes invalidated locally
before it is sent and again when it is done (so a caller reads its own writes at once).
`update` reads under the lock from Redis, never from the cache.

`local_cache.py` has the coherence rules, `cache_ops.py` the reads (once, without I/O),
`tracking.py` / `async_tracking.py` the invalidation streams."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from bantai.redis import cache_ops
from bantai.redis.async_storage import AsyncRedisStorage
from bantai.redis.async_tracking import AsyncClusterStreams, AsyncInvalidationStream
from bantai.redis.local_cache import CacheStats, LocalCache
from bantai.redis.storage import RedisStorage
from bantai.redis.tracking import ClusterStreams, InvalidationStream, TrackingUnavailable
from bantai.storage.inputs import Key, encode_key
from bantai.storage.options import RedisStorageOptions
from bantai.storage.protocol import K

T = TypeVar("T")
Extracted = tuple[tuple[Any, ...], list[Any]]


# --- which keys a write touches -------------------------------------------------------------


def _one(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Extracted:
    return args, [args[0] if args else kwargs.get("key")]


def _keys(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Extracted:
    if not args:
        return args, []
    keys = list(args[0]) if isinstance(args[0], Iterable) else args[0]
    return (keys, *args[1:]), keys if isinstance(keys, list) else []


def _items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Extracted:
    if not args:
        return args, []
    items, keys = cache_ops.written_keys(args[0])
    return (items, *args[1:]), keys


WRITES: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], Extracted]] = {
    "set": _one,
    "delete": _one,
    "append": _one,
    "update": _one,
    "set_many": _items,
    "delete_many": _keys,
    "update_many": _keys,
    "_bantai_consume": _one,
}


def _sync_write(method: Callable[..., Any], extract: Callable[..., Extracted]) -> Any:
    @functools.wraps(method)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        args, keys = extract(args, kwargs)
        redis_keys = cache_ops.redis_keys(self._setup, keys)
        cache: LocalCache = self._cache
        cache.invalidate(redis_keys)
        try:
            return method(self, *args, **kwargs)
        finally:
            cache.invalidate(redis_keys)

    return write


def _async_write(method: Callable[..., Any], extract: Callable[..., Extracted]) -> Any:
    @functools.wraps(method)
    async def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        args, keys = extract(args, kwargs)
        redis_keys = cache_ops.redis_keys(self._setup, keys)
        cache: LocalCache = self._cache
        cache.invalidate(redis_keys)
        try:
            return await method(self, *args, **kwargs)
        finally:
            cache.invalidate(redis_keys)

    return write


def _cache_of(options: RedisStorageOptions) -> tuple[LocalCache, bytes | None]:
    cache_options = options.cache
    assert cache_options is not None
    prefix = options.prefix_bytes if cache_options.broadcast else None
    return LocalCache(cache_options), prefix


# --- blocking -----------------------------------------------------------------------------


class _CachedRedisStorage(RedisStorage[T]):
    __slots__ = ("__weakref__", "_broadcast", "_cache", "_cluster", "_stream")

    def __init__(self, client: Any, schema: object, options: Any, **kwargs: Any) -> None:
        super().__init__(client, schema, options, **kwargs)
        self._cache, prefix = _cache_of(self.options)
        self._broadcast = prefix is not None
        self._stream: Any
        self._cluster: ClusterStreams | None = None
        if isinstance(client, RedisCluster):
            self._cluster = self._stream = ClusterStreams(client, self._cache, prefix)
        else:
            pool = client.connection_pool
            verify = isinstance(pool, SentinelConnectionPool)
            self._stream = InvalidationStream(pool, self._cache, prefix, verify=verify)

    def get(self, key: Key, *, use_cache: bool = True) -> T | None:
        """The value under `key`: from the local cache while Redis has not announced a
        change since it was read, else from Redis (and then cached). `use_cache=False`
        reads from Redis and leaves the cache as it is."""
        if not use_cache:
            return super().get(key)
        setup = self._setup
        redis_key = setup.layout.value_key(encode_key(key))
        self._stream.catch_up()
        value = cache_ops.cached_value(setup, self._cache, key, redis_key)
        if value is not cache_ops.MISSING:
            return value  # type: ignore[no-any-return]
        return self._fill_one(key, redis_key)

    def _fill_one(self, key: Key, redis_key: bytes) -> T | None:
        if self._cluster is not None or self._stream.name is not None:
            return self._fill({key: redis_key})[key]
        try:
            client_id = self._stream.ensure()
        except TrackingUnavailable:
            return super().get(key)
        cache = self._cache
        step, fill = cache_ops.fill_one_request(cache, redis_key, client_id, self._broadcast)
        try:
            replies = self._driver.round_trip(step)
        except BaseException:
            cache.abandon_fill(fill)
            raise
        outcome = cache_ops.fill_one_reply(self._setup, cache, key, fill, replies)
        value, known = outcome
        if not known:
            self._stream.reset("the server no longer knows the invalidation connection")
        return value

    def get_many(self, keys: Iterable[K], *, use_cache: bool = True) -> dict[K, T | None]:
        """Values of several keys: the cached ones from here, the rest in one round trip."""
        if not use_cache:
            return super().get_many(keys)
        self._stream.catch_up()
        key_list, found, missing = cache_ops.look_up_many(self._setup, self._cache, keys)
        if missing:
            found.update(self._fill(missing))
        return {key: found[key] for key in key_list}

    def _fill(self, wanted: dict[K, bytes]) -> dict[K, T | None]:
        cluster = self._cluster
        nodes: list[str] | None = None
        try:
            if cluster is None:
                tracking: Any = self._stream.ensure()
            else:
                owners = cache_ops.owners(self._client, wanted)
                tracking = [cluster.for_node(node).ensure() for node in owners]
                nodes = [node.name for node in owners]
        except TrackingUnavailable:
            return super().get_many(list(wanted))
        if self._broadcast:
            tracking = None
        verify = None if cluster is not None else self._stream.name
        filling = cache_ops.fill_request(self._cache, wanted, tracking, nodes, verify)
        try:
            replies = self._driver.round_trip(filling.step)
        except BaseException:
            cache_ops.fill_abandon(self._cache, filling)
            raise
        node_of = None if cluster is None else functools.partial(cache_ops.owner_name, self._client)
        values, known, redirected = cache_ops.fill_reply(
            self._setup, self._cache, filling, replies, node_of
        )
        if not known:
            self._stream.reset("the server no longer knows the invalidation connection")
        if redirected:  # the slot moved meanwhile: read those where they are now, uncached
            values.update(super().get_many(redirected))
        return values

    def local_cache_stats(self) -> CacheStats | None:
        """Hits, misses, invalidations, evictions, flushes and entries of the local cache."""
        return self._cache.stats()

    def close(self) -> None:
        """See `RedisStorage.close`; the local cache is dropped and its stream closed."""
        self._stream.close()
        super().close()


# --- asyncio ------------------------------------------------------------------------------


class _CachedAsyncRedisStorage(AsyncRedisStorage[T]):
    def __init__(self, client: Any, schema: object, options: Any, **kwargs: Any) -> None:
        super().__init__(client, schema, options, **kwargs)
        self._cache, prefix = _cache_of(self.options)
        self._broadcast = prefix is not None
        self._stream: Any
        self._cluster: AsyncClusterStreams | None = None
        if isinstance(client, AsyncRedisCluster):
            self._cluster = self._stream = AsyncClusterStreams(self._cache, prefix)
        else:
            pool = client.connection_pool
            verify = isinstance(pool, AsyncSentinelConnectionPool)
            self._stream = AsyncInvalidationStream(pool, self._cache, prefix, verify=verify)

    async def get(self, key: Key, *, use_cache: bool = True) -> T | None:
        """See the blocking adapter's `get`."""
        if not use_cache:
            return await super().get(key)
        setup = self._setup
        redis_key = setup.layout.value_key(encode_key(key))
        if self._stream.caught_up():
            value = cache_ops.cached_value(setup, self._cache, key, redis_key)
            if value is not cache_ops.MISSING:
                return value  # type: ignore[no-any-return]
        if self._cluster is not None or self._stream.name is not None:
            return (await self._fill({key: redis_key}))[key]
        try:
            client_id = await self._stream.ensure()
        except TrackingUnavailable:
            return await super().get(key)
        cache = self._cache
        step, fill = cache_ops.fill_one_request(cache, redis_key, client_id, self._broadcast)
        try:
            replies = await self._driver.round_trip(step)
        except BaseException:
            cache.abandon_fill(fill)
            raise
        outcome = cache_ops.fill_one_reply(self._setup, cache, key, fill, replies)
        value, known = outcome
        if not known:
            self._stream.reset("the server no longer knows the invalidation connection")
        return value

    async def get_many(self, keys: Iterable[K], *, use_cache: bool = True) -> dict[K, T | None]:
        """See the blocking adapter's `get_many`."""
        if not use_cache or not self._stream.caught_up():
            # Messages are waiting for the event loop: read everything from Redis.
            return await super().get_many(keys)
        key_list, found, missing = cache_ops.look_up_many(self._setup, self._cache, keys)
        if missing:
            found.update(await self._fill(missing))
        return {key: found[key] for key in key_list}

    async def _fill(self, wanted: dict[K, bytes]) -> dict[K, T | None]:
        cluster = self._cluster
        nodes: list[str] | None = None
        try:
            if cluster is None:
                tracking: Any = await self._stream.ensure()
            else:
                await self._client.initialize()  # the slot map (a no-op once loaded)
                owners = cache_ops.owners(self._client, wanted)
                tracking = [await cluster.for_node(node).ensure() for node in owners]
                nodes = [node.name for node in owners]
        except TrackingUnavailable:
            return await super().get_many(list(wanted))
        if self._broadcast:
            tracking = None
        verify = None if cluster is not None else self._stream.name
        filling = cache_ops.fill_request(self._cache, wanted, tracking, nodes, verify)
        try:
            replies = await self._driver.round_trip(filling.step)
        except BaseException:
            cache_ops.fill_abandon(self._cache, filling)
            raise
        node_of = None if cluster is None else functools.partial(cache_ops.owner_name, self._client)
        values, known, redirected = cache_ops.fill_reply(
            self._setup, self._cache, filling, replies, node_of
        )
        if not known:
            self._stream.reset("the server no longer knows the invalidation connection")
        if redirected:  # the slot moved meanwhile: read those where they are now, uncached
            values.update(await super().get_many(redirected))
        return values

    def local_cache_stats(self) -> CacheStats | None:
        """See the blocking adapter's `local_cache_stats`."""
        return self._cache.stats()

    async def close(self) -> None:
        """See `AsyncRedisStorage.close`; the local cache is dropped and its stream closed."""
        self._stream.close()
        await super().close()


def _with_writes(cls: type, wrap: Callable[..., Any], name: str) -> type:
    namespace: dict[str, Any] = {"__doc__": cls.__doc__}
    if "__slots__" in vars(cls):
        namespace["__slots__"] = ()
    for method_name, extract in WRITES.items():
        namespace[method_name] = wrap(getattr(cls, method_name), extract)
    return type(name, (cls,), namespace)


CachedRedisStorage: type[RedisStorage[Any]] = _with_writes(
    _CachedRedisStorage, _sync_write, "CachedRedisStorage"
)
CachedRedisStorage.__doc__ = "`RedisStorage` with a local cache (see `bantai.redis.cached`)."
CachedAsyncRedisStorage: type[AsyncRedisStorage[Any]] = _with_writes(
    _CachedAsyncRedisStorage, _async_write, "CachedAsyncRedisStorage"
)
CachedAsyncRedisStorage.__doc__ = (
    "`AsyncRedisStorage` with a local cache (see `bantai.redis.cached`)."
)

__all__ = ["CachedAsyncRedisStorage", "CachedRedisStorage"]
