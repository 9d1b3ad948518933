"""The Redis adapters with a local cache (the `local_cache` option): `get` and `get_many`
answer from this process while Redis has not said the key changed since it was read;
every other method is the plain adapter's, with the keys it writes invalidated locally
before it is sent and again when it is done (so a caller reads its own writes at once).
`update` reads under the lock from Redis, never from the cache.

`local_cache.py` has the coherence rules, `cache_ops.py` the reads (once, without I/O),
`tracking.py` / `async_tracking.py` the invalidation streams."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

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
    keys = args[0] if args else kwargs.get("keys")
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        return args, []  # not an iterable of keys: the write refuses it
    keys = list(keys)  # an iterator is read once, here, and handed on as a list
    if args:
        return (keys, *args[1:]), keys
    kwargs["keys"] = keys
    return args, keys


def _items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Extracted:
    if args:
        items, keys = cache_ops.written_keys(args[0])
        return (items, *args[1:]), keys
    if "items" in kwargs:
        kwargs["items"], keys = cache_ops.written_keys(kwargs["items"])
        return args, keys
    return args, []


WRITES: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], Extracted]] = {
    "set": _one,
    "delete": _one,
    "append": _one,
    "update": _one,
    "set_many": _items,
    "delete_many": _keys,
    "update_many": _keys,
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


def _sync_consume(method: Callable[..., Any]) -> Any:
    @functools.wraps(method)
    def consume(self: Any, config: Any, key: str, cost: int, now: int) -> Any:
        setup, cache = self._setup, self._cache
        now_ms = now or time.time_ns() // 10**6
        cache.invalidate(cache_ops.decision_keys(setup, config, key, now_ms))
        result = None
        try:
            result = method(self, config, key, cost, now)
            return result
        finally:
            cache.invalidate(cache_ops.decision_keys(setup, config, key, now_ms, result))

    return consume


def _async_consume(method: Callable[..., Any]) -> Any:
    @functools.wraps(method)
    async def consume(self: Any, config: Any, key: str, cost: int, now: int) -> Any:
        setup, cache = self._setup, self._cache
        now_ms = now or time.time_ns() // 10**6
        cache.invalidate(cache_ops.decision_keys(setup, config, key, now_ms))
        result = None
        try:
            result = await method(self, config, key, cost, now)
            return result
        finally:
            cache.invalidate(cache_ops.decision_keys(setup, config, key, now_ms, result))

    return consume


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
            self._stream = InvalidationStream(client.connection_pool, self._cache, prefix)

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
        if self._cluster is not None or self._broadcast:
            return self._fill({key: redis_key})[key]
        cache, stream = self._cache, self._stream
        try:
            stream.ensure()
            commands, fill = cache_ops.fill_one_request(cache, redis_key)
            try:
                replies = stream.fill(commands)
            except BaseException:
                cache.abandon_fill(fill)
                raise
        except TrackingUnavailable:
            return self._read_past(key, redis_key)
        return cache_ops.fill_one_reply(self._setup, cache, key, fill, replies)

    def _read_past(self, key: Key, redis_key: bytes) -> T | None:
        """Read past the cache (it cannot track now). What this returns may be newer than
        a fill in flight will insert: afterwards the key is dropped and those fills
        poisoned, so no read after this one sees an older value."""
        try:
            return super().get(key)
        finally:
            self._cache.invalidate((redis_key,))

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
        cache, setup, cluster = self._cache, self._setup, self._cluster is not None
        values: dict[K, T | None] = {}
        redirected: list[K] = []
        try:
            if self._broadcast:  # the streams track the prefix: any connection will do
                for stream, _ in self._streams_of(wanted):
                    stream.ensure()
                filling = cache_ops.fill_request(cache, wanted, per_key=False)
                try:
                    replies = self._driver.round_trip(filling.step)
                except BaseException:
                    cache_ops.fill_abandon(cache, filling)
                    raise
                values, redirected = cache_ops.fill_reply(setup, cache, filling, replies, cluster)
            else:  # each read opts in to tracking over its stream's fill connection
                for stream, part in self._streams_of(wanted):
                    stream.ensure()
                    filling = cache_ops.fill_request(cache, part, per_key=True)
                    try:
                        replies = stream.fill(filling.commands)
                    except BaseException:
                        cache_ops.fill_abandon(cache, filling)
                        raise
                    got, moved = cache_ops.fill_reply(setup, cache, filling, replies, cluster)
                    values.update(got)
                    redirected += moved
        except TrackingUnavailable:
            return self._read_many_past(wanted, list(wanted))
        if redirected:  # the slot moved meanwhile: read those where they are now, uncached
            values.update(self._read_many_past(wanted, redirected))
        return values

    def _read_many_past(self, wanted: dict[K, bytes], keys: list[K]) -> dict[K, T | None]:
        """`_read_past` for several keys."""
        try:
            return super().get_many(keys)
        finally:
            self._cache.invalidate([wanted[key] for key in keys])

    def _streams_of(self, wanted: dict[K, bytes]) -> list[tuple[Any, dict[K, bytes]]]:
        """The stream of each key's server (a cluster: its master), with its keys."""
        cluster = self._cluster
        if cluster is None:
            return [(self._stream, wanted)]
        return [
            (cluster.for_node(node), part)
            for node, part in cache_ops.by_owner(self._client, wanted)
        ]

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
            self._stream = AsyncInvalidationStream(client.connection_pool, self._cache, prefix)

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
        if self._cluster is not None or self._broadcast:
            return (await self._fill({key: redis_key}))[key]
        cache, stream = self._cache, self._stream
        try:
            await stream.ensure()
            commands, fill = cache_ops.fill_one_request(cache, redis_key)
            try:
                replies = await stream.fill(commands)
            except BaseException:
                cache.abandon_fill(fill)
                raise
        except TrackingUnavailable:
            try:
                return await super().get(key)
            finally:
                cache.invalidate((redis_key,))  # see the blocking adapter's `_read_past`
        return cache_ops.fill_one_reply(self._setup, cache, key, fill, replies)

    async def get_many(self, keys: Iterable[K], *, use_cache: bool = True) -> dict[K, T | None]:
        """See the blocking adapter's `get_many`."""
        if not use_cache:
            return await super().get_many(keys)
        if not self._stream.caught_up():
            # Messages are waiting for the event loop: read everything from Redis, then
            # drop the keys (see the blocking adapter's `_read_past`).
            key_list = list(keys)
            try:
                return await super().get_many(key_list)
            finally:
                self._cache.invalidate(cache_ops.redis_keys(self._setup, key_list))
        key_list, found, missing = cache_ops.look_up_many(self._setup, self._cache, keys)
        if missing:
            found.update(await self._fill(missing))
        return {key: found[key] for key in key_list}

    async def _fill(self, wanted: dict[K, bytes]) -> dict[K, T | None]:
        cache, setup, cluster = self._cache, self._setup, self._cluster is not None
        values: dict[K, T | None] = {}
        redirected: list[K] = []
        try:
            streams = await self._streams_of(wanted)
            if self._broadcast:  # the streams track the prefix: any connection will do
                for stream, _ in streams:
                    await stream.ensure()
                filling = cache_ops.fill_request(cache, wanted, per_key=False)
                try:
                    replies = await self._driver.round_trip(filling.step)
                except BaseException:
                    cache_ops.fill_abandon(cache, filling)
                    raise
                values, redirected = cache_ops.fill_reply(setup, cache, filling, replies, cluster)
            else:  # each read opts in to tracking over its stream's fill connection
                for stream, part in streams:
                    await stream.ensure()
                    filling = cache_ops.fill_request(cache, part, per_key=True)
                    try:
                        replies = await stream.fill(filling.commands)
                    except BaseException:
                        cache_ops.fill_abandon(cache, filling)
                        raise
                    got, moved = cache_ops.fill_reply(setup, cache, filling, replies, cluster)
                    values.update(got)
                    redirected += moved
        except TrackingUnavailable:
            return await self._read_many_past(wanted, list(wanted))
        if redirected:  # the slot moved meanwhile: read those where they are now, uncached
            values.update(await self._read_many_past(wanted, redirected))
        return values

    async def _read_many_past(self, wanted: dict[K, bytes], keys: list[K]) -> dict[K, T | None]:
        """See the blocking adapter's `_read_past`."""
        try:
            return await super().get_many(keys)
        finally:
            self._cache.invalidate([wanted[key] for key in keys])

    async def _streams_of(self, wanted: dict[K, bytes]) -> list[tuple[Any, dict[K, bytes]]]:
        """See the blocking adapter's `_streams_of`."""
        cluster = self._cluster
        if cluster is None:
            return [(self._stream, wanted)]
        await self._client.initialize()  # the slot map (a no-op once loaded)
        return [
            (cluster.for_node(node), part)
            for node, part in cache_ops.by_owner(self._client, wanted)
        ]

    def local_cache_stats(self) -> CacheStats | None:
        """See the blocking adapter's `local_cache_stats`."""
        return self._cache.stats()

    async def close(self) -> None:
        """See `AsyncRedisStorage.close`; the local cache is dropped and its stream closed."""
        self._stream.close()
        await super().close()


def _with_writes(
    cls: type, wrap: Callable[..., Any], consume: Callable[..., Any], name: str
) -> type:
    namespace: dict[str, Any] = {"__doc__": cls.__doc__}
    if "__slots__" in vars(cls):
        namespace["__slots__"] = ()
    for method_name, extract in WRITES.items():
        namespace[method_name] = wrap(getattr(cls, method_name), extract)
    namespace["_bantai_consume"] = consume(cls._bantai_consume)  # type: ignore[attr-defined]
    return type(name, (cls,), namespace)


CachedRedisStorage: type[RedisStorage[Any]] = _with_writes(
    _CachedRedisStorage, _sync_write, _sync_consume, "CachedRedisStorage"
)
CachedRedisStorage.__doc__ = "`RedisStorage` with a local cache (see `bantai.redis.cached`)."
CachedAsyncRedisStorage: type[AsyncRedisStorage[Any]] = _with_writes(
    _CachedAsyncRedisStorage, _async_write, _async_consume, "CachedAsyncRedisStorage"
)
CachedAsyncRedisStorage.__doc__ = (
    "`AsyncRedisStorage` with a local cache (see `bantai.redis.cached`)."
)

__all__ = ["CachedAsyncRedisStorage", "CachedRedisStorage"]
