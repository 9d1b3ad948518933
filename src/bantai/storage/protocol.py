"""The storage interface every adapter implements (the Redis adapter, the memory storage).

Mirrors the TypeScript `StorageAdapter<T>` (get/set/delete/update) plus `append` and the
batch forms. An updater receives the current value (or None) and returns None to write
nothing, or `UpdateResult(value, ttl_ms)` / ``{"value": v, "ttl_ms": n}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from bantai.storage.inputs import TTL, Key, UpdateResult

T = TypeVar("T")

UpdaterReturn = UpdateResult[Any] | Mapping[str, Any] | None
Updater = Callable[[T | None], UpdaterReturn]
KeyedUpdater = Callable[[Key, T | None], UpdaterReturn]


@runtime_checkable
class StorageAdapter(Protocol[T]):
    """A synchronous storage of schema-validated values."""

    def get(self, key: Key) -> T | None: ...

    def set(self, key: Key, value: T | Any, ttl_ms: TTL | None = None) -> None: ...

    def delete(self, key: Key) -> None: ...

    def append(self, key: Key, item: Any) -> None: ...

    def update(self, key: Key, updater: Updater[T]) -> T | None: ...

    def get_many(self, keys: Iterable[Key]) -> dict[Key, T | None]: ...

    def set_many(
        self, items: Mapping[Key, Any] | Iterable[tuple[Key, Any]], ttl_ms: TTL | None = None
    ) -> None: ...

    def delete_many(self, keys: Iterable[Key]) -> None: ...

    def update_many(self, keys: Iterable[Key], updater: KeyedUpdater[T]) -> dict[Key, T | None]: ...
