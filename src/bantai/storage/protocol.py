"""The storage interface every adapter implements (the Redis adapter, the memory storage).

Mirrors the TypeScript `StorageAdapter<T>` (get/set/delete/update) plus `append` and the
batch forms. An updater receives the current value (or None) and returns None to write
nothing, or `UpdateResult(value, ttl_ms)` / ``{"value": v, "ttl_ms": n}``.

The types carry the schema: a storage made for `User` is a `StorageAdapter[User]`, whose
`get` returns `User | None` and whose `set` takes a `User` or a mapping the schema
validates (checked at run time, so a mapping is typed loosely). Batch methods are generic
in the key type, so `dict[str, User]` goes in and `dict[str, User | None]` comes out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from bantai.storage.inputs import TTL, Key, UpdateResult
from bantai.storage.inputs import K as K  # re-exported with the aliases that use it

T = TypeVar("T")

# What a storage of T accepts as a value: a T, or a mapping the schema validates into one.
ValueIn: TypeAlias = "T | Mapping[str, Any]"
# What an updater returns: None (write nothing), UpdateResult, or {"value": v, "ttl_ms": n}.
UpdaterReturn: TypeAlias = (
    "UpdateResult[T] | UpdateResult[Mapping[str, Any]] | Mapping[str, Any] | None"
)
Updater: TypeAlias = "Callable[[T | None], UpdaterReturn[T]]"
KeyedUpdater: TypeAlias = "Callable[[K, T | None], UpdaterReturn[T]]"
# asyncio storages also take coroutine functions.
AsyncUpdater: TypeAlias = "Callable[[T | None], UpdaterReturn[T] | Awaitable[UpdaterReturn[T]]]"
AsyncKeyedUpdater: TypeAlias = (
    "Callable[[K, T | None], UpdaterReturn[T] | Awaitable[UpdaterReturn[T]]]"
)
Items: TypeAlias = "Mapping[K, ValueIn[T]] | Iterable[tuple[K, ValueIn[T]]]"


@runtime_checkable
class KeyValueStorage(Protocol[T]):
    """The least a storage offers (the original's required methods): what the original's
    two-step rate-limit API and the `consume` fallback need."""

    def get(self, key: Key) -> T | None:
        """The value stored under `key`, or None."""
        ...

    def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """Store `value` (with a TTL if given)."""
        ...

    def delete(self, key: Key) -> None:
        """Remove `key`."""
        ...


@runtime_checkable
class StorageAdapter(KeyValueStorage[T], Protocol[T]):
    """A synchronous storage of schema-validated values — the contract every bantai storage
    keeps (the Redis adapter, the memory storage; `AsyncStorageAdapter` is the asyncio
    one). Keys are `str` (UTF-8) or `bytes`; TTLs are milliseconds (int) or a `timedelta`.
    Bad input raises an `InvalidInputError` before anything is written."""

    def get(self, key: Key) -> T | None:
        """The value stored under `key`, validated against the schema, or None when there
        is none. A stored value that does not validate raises `StoredValueError` naming
        the key (never silently dropped, never unpickled)."""
        ...

    def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
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

    def get_many(self, keys: Iterable[K]) -> dict[K, T | None]:
        """The values of several keys (None where absent), in one round trip per node."""
        ...

    def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """Validate every value first (one bad value: nothing is written), then store them
        all, each slot group atomically."""
        ...

    def delete_many(self, keys: Iterable[Key]) -> None:
        """Remove several keys."""
        ...

    def update_many(self, keys: Iterable[K], updater: KeyedUpdater[K, T]) -> dict[K, T | None]:
        """`update` for several keys: all locks taken at once (all or none, so overlapping
        batches never deadlock), `updater(key, current)` per key, one atomic commit per
        slot group. Returns the new values by key."""
        ...

    def close(self) -> None:
        """Release connections; later calls raise `StorageClosedError`."""
        ...


@runtime_checkable
class AsyncKeyValueStorage(Protocol[T]):
    """`KeyValueStorage` for asyncio: every method awaited."""

    async def get(self, key: Key) -> T | None:
        """The value stored under `key`, or None."""
        ...

    async def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """Store `value` (with a TTL if given)."""
        ...

    async def delete(self, key: Key) -> None:
        """Remove `key`."""
        ...


@runtime_checkable
class AsyncStorageAdapter(AsyncKeyValueStorage[T], Protocol[T]):
    """`StorageAdapter` for asyncio (the asyncio Redis adapter, the asyncio memory
    storage): the same methods and semantics, awaited; updaters may be coroutine
    functions."""

    async def append(self, key: Key, item: Any) -> None:
        """See `StorageAdapter.append`."""
        ...

    async def update(self, key: Key, updater: AsyncUpdater[T]) -> T | None:
        """See `StorageAdapter.update`."""
        ...

    async def get_many(self, keys: Iterable[K]) -> dict[K, T | None]:
        """See `StorageAdapter.get_many`."""
        ...

    async def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set_many`."""
        ...

    async def delete_many(self, keys: Iterable[Key]) -> None:
        """See `StorageAdapter.delete_many`."""
        ...

    async def update_many(
        self, keys: Iterable[K], updater: AsyncKeyedUpdater[K, T]
    ) -> dict[K, T | None]:
        """See `StorageAdapter.update_many`."""
        ...

    async def close(self) -> None:
        """See `StorageAdapter.close`."""
        ...
