"""Storage: the adapter protocol, options, the in-memory storages, and `with_storage`."""

from bantai.storage.inputs import UpdateResult
from bantai.storage.memory import (
    AsyncMemoryStorage,
    MemoryStorage,
    create_async_memory_storage,
    create_memory_storage,
)
from bantai.storage.options import StorageOptions
from bantai.storage.protocol import (
    AsyncKeyValueStorage,
    AsyncStorageAdapter,
    KeyValueStorage,
    StorageAdapter,
)
from bantai.storage.with_storage import StorageTools, with_storage

__all__ = [
    "AsyncKeyValueStorage",
    "AsyncMemoryStorage",
    "AsyncStorageAdapter",
    "KeyValueStorage",
    "create_async_memory_storage",
    "MemoryStorage",
    "StorageAdapter",
    "StorageOptions",
    "StorageTools",
    "UpdateResult",
    "create_memory_storage",
    "with_storage",
]
