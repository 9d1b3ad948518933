"""The public synchronous Redis adapter: a thin facade over the I/O-free operations."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar, cast, overload

import redis
from redis.cluster import RedisCluster

from bantai.codec import ValidatorOf
from bantai.errors import InvalidOptionError
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult
from bantai.redis import operations as ops
from bantai.redis.keys import ClusterKeyLayout, KeyLayout
from bantai.redis.local_cache import CacheStats
from bantai.redis.local_line import GOT_TURN, TIMED_OUT, KeyQueue
from bantai.redis.observed import build
from bantai.redis.speedups import append_one, consume_one, new_token, update_one
from bantai.redis.sync_driver import SyncDriver
from bantai.steps import Operation
from bantai.storage.inputs import TTL, Key, encode_key
from bantai.storage.locking import lock_timeout_error
from bantai.storage.options import RedisStorageOptions, StorageOptions
from bantai.storage.protocol import Items, K, KeyedUpdater, Updater, ValueIn

T = TypeVar("T")


class RedisStorage(Generic[T]):
    """Schema-validated values in Redis with TTLs and lock-guarded atomic updates.

    Create it with `create_redis_storage`. Thread-safe; one instance per schema and prefix
    is meant to be shared by the whole process."""

    __slots__ = ("_client", "_driver", "_in_line", "_owns_client", "_setup", "options")

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        schema: object,
        options: StorageOptions | Mapping[str, Any] | None = None,
        *,
        owns_client: bool = False,
    ) -> None:
        self.options = RedisStorageOptions.coerce(options)
        self._client = client
        self._owns_client = owns_client
        self._driver = SyncDriver(client, busy_poll_us=self.options.busy_poll_us)
        if isinstance(client, RedisCluster):
            layout: KeyLayout = ClusterKeyLayout(self.options.prefix_bytes)
        else:
            layout = KeyLayout(self.options.prefix_bytes)
        self._setup: ops.Setup[T] = ops.Setup(layout, self.options.codec(schema), self.options)
        # Updates of one key through this adapter line up here before the Redis lock.
        self._in_line = KeyQueue(self.options.lock_ttl_ms)

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The redis-py client this adapter sends through."""
        return self._client

    def get(self, key: Key, *, use_cache: bool = True) -> T | None:
        """The value stored under `key`, validated, or None when there is none.
        (`use_cache=False`: past the `local_cache`, when there is one.)"""
        setup = self._setup
        return ops.get_reply(setup, key, self._driver.call(ops.get_request(setup, key)))

    def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """Validate `value` and store it (with a TTL in ms or as a timedelta, if given)."""
        setup = self._setup
        request = ops.set_request(setup, key, value, ttl_ms)
        ops.written_reply(setup, key, self._driver.call(request, write=True))

    def delete(self, key: Key) -> None:
        """Remove `key` (no error if it is absent)."""
        setup = self._setup
        ops.written_reply(setup, key, self._driver.call(ops.delete_request(setup, key), write=True))

    def append(self, key: Key, item: Any) -> None:
        """Append `item` to the list stored under `key` (list schemas only), atomically and
        keeping the key's TTL; waits for a busy lock like `update`."""
        setup = self._setup
        if setup.codec.item_codec is not None:  # a plain list: the single-script hot path
            self._driver.run(append_one(setup, key, item))
        else:
            self._driver.run(ops.append(setup, key, item))

    def update(self, key: Key, updater: Updater[T]) -> T | None:
        """Atomic read-modify-write under a distributed lock; returns the new value (or the
        current one when the updater returns None and nothing is written). Threads
        updating the same key through this adapter line up in-process (FIFO): only the
        first competes for the Redis lock, the next goes as soon as it is done."""
        raw = encode_key(key)
        deadline = time.monotonic() + self.options.lock_timeout_ms / 1000.0
        turn = self._in_line.acquire(raw, deadline)
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
            return cast("T | None", self._driver.run(op))
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if turn == GOT_TURN:
                self._in_line.release(raw, failure)

    def get_many(self, keys: Iterable[K], *, use_cache: bool = True) -> dict[K, T | None]:
        """Values of several keys in one round trip (`use_cache`: see `get`)."""
        return self._driver.run(ops.get_many(self._setup, keys))

    def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """Validate every value, then store all of them in one atomic round trip."""
        self._driver.run(ops.set_many(self._setup, items, ttl_ms))

    def delete_many(self, keys: Iterable[Key]) -> None:
        """See `StorageAdapter.delete_many`."""
        self._driver.run(ops.delete_many(self._setup, keys))

    def update_many(self, keys: Iterable[K], updater: KeyedUpdater[K, T]) -> dict[K, T | None]:
        """`update` for several keys: one round trip locks and reads them all (retrying only
        busy ones), `updater(key, current)` runs per key, one atomic round trip commits."""
        return self._driver.run(ops.update_many(self._setup, keys, updater))

    def ping(self) -> float:
        """PING the server (a cluster: its default node) through this adapter's own
        connections, for health checks; returns the round trip in seconds. Fails like any
        call when the server is unreachable (within the client's socket timeout)."""
        started = time.perf_counter()
        reply = self._driver.call((b"PING",))
        if isinstance(reply, Exception):
            raise reply
        return time.perf_counter() - started

    def local_cache_stats(self) -> CacheStats | None:
        """The `local_cache`'s counters, or None when it is off."""
        return None

    def _bantai_consume(
        self, config: RateLimitConfig, key: str, cost: int, now: int
    ) -> RateLimitResult:
        """Internal hook of `rate_limit.consume`: one Lua script, one round trip."""
        op = consume_one(self._setup, config, key, cost, now, time.time_ns() // 1_000_000)
        return self._driver.run(op)

    def close(self) -> None:
        """Return borrowed connections to the pool, and close the client if the adapter
        created it (from a URL). Later calls raise `StorageClosedError`."""
        self._driver.close()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisStorage[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RedisConnection = Mapping[str, Any]


@overload
def create_redis_storage(
    redis_options: RedisConnection | redis.Redis | RedisCluster,
    schema: type[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> RedisStorage[T]: ...
@overload
def create_redis_storage(
    redis_options: RedisConnection | redis.Redis | RedisCluster,
    schema: ValidatorOf[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> RedisStorage[T]: ...
@overload
def create_redis_storage(
    redis_options: RedisConnection | redis.Redis | RedisCluster,
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> RedisStorage[Any]: ...
def create_redis_storage(
    redis_options: RedisConnection | redis.Redis | RedisCluster,
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> RedisStorage[Any]:
    """Create the synchronous Redis adapter.

    `redis_options` is ``{"url": "redis://..."}`` (the adapter owns that client; `close()`
    closes it), ``{"client": redis.Redis(...)}`` (yours; a Sentinel `master_for` client
    works too), or a `redis.Redis` directly. `schema` is a pydantic-core CoreSchema, a
    pydantic model, a `TypeAdapter` or a type. See `RedisStorageOptions` for `options`."""
    client, url = connection_source(redis_options, (redis.Redis, RedisCluster), asyncio_api=False)
    storage_options = RedisStorageOptions.coerce(options)  # check before opening anything
    facade: type[RedisStorage[Any]] = RedisStorage
    if storage_options.cache is not None:
        from bantai.redis.cached import CachedRedisStorage  # a subclass of this module's facade

        facade = CachedRedisStorage
    if client is not None:
        return build(facade, storage_options, client, schema)
    client = redis.Redis.from_url(url)
    return build(facade, storage_options, client, schema, owns_client=True)


def connection_source(
    redis_options: object, client_type: type | tuple[type, ...], *, asyncio_api: bool
) -> tuple[Any, str]:
    """Check the `redis` argument of a factory: `(client, "")` or `(None, url)`."""
    if isinstance(redis_options, client_type):
        return redis_options, ""
    if not isinstance(redis_options, Mapping):
        raise InvalidOptionError(
            "redis must be a mapping with 'client' or 'url' (or a redis-py client), not "
            f"{type(redis_options).__name__}"
        )
    unknown = sorted(set(redis_options) - {"client", "url"})
    if unknown:
        raise InvalidOptionError(f"redis: unknown key(s) {unknown}; use 'client' or 'url'")
    client = redis_options.get("client")
    url = redis_options.get("url")
    if client is not None:
        if not isinstance(client, client_type):
            raise InvalidOptionError(_client_type_error(client, asyncio_api))
        return client, ""
    if url:
        if not isinstance(url, str):
            raise InvalidOptionError(f"redis url must be a str, not {type(url).__name__}")
        return None, url
    raise InvalidOptionError("Either client or url must be provided")


def _client_type_error(client: object, asyncio_api: bool) -> str:
    name = f"{type(client).__module__}.{type(client).__qualname__}"
    if asyncio_api:
        if "asyncio" not in name:
            return f"redis client {name} is not an asyncio client; use create_redis_storage"
        return f"redis client must be a redis.asyncio.Redis instance, not {name}"
    if "asyncio" in name:
        return f"redis client {name} is an asyncio client; use create_async_redis_storage"
    return f"redis client must be a redis.Redis instance, not {name}"
