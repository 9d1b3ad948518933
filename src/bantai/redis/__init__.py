"""The Redis storage adapter (SPEC §2-4)."""

from bantai.redis.speedups import IMPLEMENTATION
from bantai.redis.storage import RedisStorage, create_redis_storage
from bantai.storage.options import RedisStorageOptions

__all__ = ["IMPLEMENTATION", "RedisStorage", "RedisStorageOptions", "create_redis_storage"]
