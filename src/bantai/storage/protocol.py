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
    """A synchronous storage of schema-validated values — the contract every bantai storage
    keeps (the Redis adapters, the memory storages; the asyncio ones with every method
    awaited). Keys are `str` (UTF-8) or `bytes`; TTLs are milliseconds (int) or a
    `timedelta`. Bad input raises an `InvalidInputError` before anything is written."""

    def get(self, key: Key) -> T | None:
        """The value stored under `key`, validated against the schema, or None when there
        is none. A stored value that does not validate raises `StoredValueError` naming
        the key (never silently dropped, never unpickled)."""
        ...

    def set(self, key: Key, value: T | Any, ttl_ms: TTL | None = None) -> None:
        """Validate `value` (a model instance or anything the schema accepts) and store it,
        with a TTL if given (without one, the key has none)."""
        ...

    def delete(self, key: Key) -> None:
        """Remove `key` (no error if it is absent)."""
        ...

    def append(self, key: Key, item: Any) -> None:
        """Append `item` to the list stored under `key` (list schemas only), atomically and
        keeping the key's TTL; waits for a busy lock like `update`."""
        ...

    def update(self, key: Key, updater: Updater[T]) -> T | None:
        """Atomic read-modify-write under a lock: `updater(current)` returns None (write
        nothing) or ``{"value": v, "ttl_ms": n}`` / `UpdateResult` (without a TTL the key
        keeps its TTL). Returns the new value, or the current one when nothing was
        written. Raises `LockTimeoutError` when the lock stays busy for
        `lock_timeout_ms`, `LockLostError` when it expired before the commit; the
        updater's own exception propagates and the lock is released at once."""
        ...

    def get_many(self, keys: Iterable[Key]) -> dict[Key, T | None]:
        """The values of several keys (None where absent), in one round trip per node."""
        ...

    def set_many(
        self, items: Mapping[Key, Any] | Iterable[tuple[Key, Any]], ttl_ms: TTL | None = None
    ) -> None:
        """Validate every value first (one bad value: nothing is written), then store them
        all, each slot group atomically."""
        ...

    def delete_many(self, keys: Iterable[Key]) -> None:
        """Remove several keys."""
        ...

    def update_many(self, keys: Iterable[Key], updater: KeyedUpdater[T]) -> dict[Key, T | None]:
        """`update` for several keys: all locks taken at once (all or none, so overlapping
        batches never deadlock), `updater(key, current)` per key, one atomic commit per
        slot group. Returns the new values by key."""
        ...
