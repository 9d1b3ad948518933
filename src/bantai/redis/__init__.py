"""The Redis storage adapter (docs/design.md, "The Redis adapter")."""

from bantai.redis.async_storage import AsyncRedisStorage, create_async_redis_storage
from bantai.redis.local_cache import CacheStats
from bantai.redis.speedups import IMPLEMENTATION
from bantai.redis.storage import RedisStorage, create_redis_storage
from bantai.storage.options import LocalCacheOptions, RedisStorageOptions

__all__ = [
    "IMPLEMENTATION",
    "AsyncRedisStorage",
    "CacheStats",
    "LocalCacheOptions",
    "create_async_redis_storage",
    "RedisStorage",
    "RedisStorageOptions",
    "create_redis_storage",
]
