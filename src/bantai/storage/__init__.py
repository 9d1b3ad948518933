"""Storage: the adapter protocol, shared input checks, and the in-memory storage."""

from bantai.storage.inputs import UpdateResult
from bantai.storage.memory import (
    AsyncMemoryStorage,
    MemoryStorage,
    create_async_memory_storage,
    create_memory_storage,
)
from bantai.storage.options import StorageOptions
from bantai.storage.protocol import StorageAdapter

__all__ = [
    "AsyncMemoryStorage",
    "create_async_memory_storage",
    "MemoryStorage",
    "StorageAdapter",
    "StorageOptions",
    "UpdateResult",
    "create_memory_storage",
]
