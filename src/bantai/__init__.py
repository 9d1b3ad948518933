"""bantai: a fast, correct Redis storage adapter with Bantai policies and rate limiting."""

from bantai.errors import (
    BantaiError,
    InvalidInputError,
    InvalidKeyError,
    InvalidOptionError,
    InvalidTTLError,
    InvalidValueError,
    LockError,
    LockLostError,
    LockTimeoutError,
    StorageError,
    StoredValueError,
    UnsupportedOperationError,
    UpdateOutcomeUnknownError,
    WrongTypeError,
)
from bantai.redis import (
    AsyncRedisStorage,
    RedisStorage,
    RedisStorageOptions,
    create_async_redis_storage,
    create_redis_storage,
)
from bantai.storage import (
    AsyncMemoryStorage,
    MemoryStorage,
    StorageAdapter,
    StorageOptions,
    UpdateResult,
    create_async_memory_storage,
    create_memory_storage,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncMemoryStorage",
    "AsyncRedisStorage",
    "create_async_memory_storage",
    "create_async_redis_storage",
    "BantaiError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidOptionError",
    "InvalidTTLError",
    "InvalidValueError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "MemoryStorage",
    "RedisStorage",
    "RedisStorageOptions",
    "StorageAdapter",
    "StorageError",
    "StorageOptions",
    "StoredValueError",
    "UnsupportedOperationError",
    "UpdateOutcomeUnknownError",
    "UpdateResult",
    "WrongTypeError",
    "__version__",
    "create_memory_storage",
    "create_redis_storage",
]
