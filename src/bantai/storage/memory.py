"""In-process storage with the Redis adapter's semantics: values validated and stored as
the same JSON bytes, TTLs that really expire, and `update` guarded by per-key leases with
the same timeout / TTL / lost-lease behaviour as the Redis locks.

Unlike the TypeScript original's memory storage, TTLs are honoured. All times are
`time.monotonic()`, so wall-clock jumps change nothing. Operations that may wait (update,
append) are written once as step generators (see `steps`) and run by `MemoryStorage`
(blocking) and `AsyncMemoryStorage` (asyncio, never blocking the loop) alike.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from bantai.codec import ValidatorOf, ValueCodec
from bantai.errors import InvalidOptionError, LockLostError, StoredValueError
from bantai.steps import Operation, run_async, run_sync
from bantai.storage.inputs import (
    TTL,
    Key,
    appending,
    check_keys,
    check_updater,
    encode_key,
    ttl_to_ms,
)
from bantai.storage.locking import until_free
from bantai.storage.options import StorageOptions
from bantai.storage.protocol import (
    AsyncKeyedUpdater,
    AsyncUpdater,
    Items,
    K,
    KeyedUpdater,
    Updater,
    ValueIn,
)
from bantai.storage.updates import plan_updates

T = TypeVar("T")

# How many writes between sweeps of expired entries (reads expire lazily as well).
_SWEEP_EVERY = 1024


class _MemoryCore(Generic[T]):
    """The data, the leases, and every operation. Facades only choose how to run them."""

    def __init__(self, schema: object, options: StorageOptions | Mapping[str, Any] | None):
        self.options = StorageOptions.coerce(options)
        if getattr(self.options, "busy_poll_us", 0):
            raise InvalidOptionError("busy_poll_us applies to the Redis adapter only")
        self.codec: ValueCodec[T] = self.options.codec(schema)
        self._prefix = self.options.prefix_bytes
        # stored key -> (JSON bytes, expiry on the monotonic clock or None)
        self._data: dict[bytes, tuple[bytes, float | None]] = {}
        # stored key -> (lease owner, lease expiry): the in-process twin of `k:lock`
        self._leases: dict[bytes, tuple[object, float]] = {}
        self._mutex = threading.Lock()
        self._writes = 0

    # -- data (call with the mutex held) ----------------------------------------------------

    def key(self, key: Key) -> bytes:
        return self._prefix + encode_key(key)

    def _read(self, skey: bytes, now: float) -> bytes | None:
        entry = self._data.get(skey)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self._data[skey]
            return None
        return entry[0]

    def _write(
        self, skey: bytes, data: bytes, ttl_ms: int | None, now: float, *, keep_ttl: bool = False
    ) -> None:
        if keep_ttl:
            old = self._data.get(skey)
            expires = old[1] if old is not None and (old[1] is None or old[1] > now) else None
        else:
            expires = None if ttl_ms is None else now + ttl_ms / 1000.0
        self._data[skey] = (data, expires)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            expired = [k for k, (_, e) in self._data.items() if e is not None and e <= now]
            for k in expired:
                del self._data[k]

    def _lease_free(self, skey: bytes, owner: object, now: float) -> bool:
        lease = self._leases.get(skey)
        return lease is None or lease[0] is owner or lease[1] <= now

    # -- operations that never wait ---------------------------------------------------------

    def get(self, key: Key) -> T | None:
        skey = self.key(key)
        with self._mutex:
            raw = self._read(skey, time.monotonic())
        return self.codec.decode(raw, key)

    def set(self, key: Key, value: object, ttl_ms: object = None) -> None:
        skey = self.key(key)
        ttl = ttl_to_ms(ttl_ms)
        _, data = self.codec.encode(value, key)
        with self._mutex:
            self._write(skey, data, ttl, time.monotonic())

    def delete_many(self, keys: Iterable[Key]) -> None:
        skeys = [self.key(k) for k in check_keys(keys, unique=False)]
        with self._mutex:
            for skey in skeys:
                self._data.pop(skey, None)

    def get_many(self, keys: Iterable[K]) -> dict[K, T | None]:
        key_list = check_keys(keys, unique=False)
        skeys = [self.key(k) for k in key_list]
        with self._mutex:
            now = time.monotonic()
            raws = [self._read(s, now) for s in skeys]
        return {k: self.codec.decode(r, k) for k, r in zip(key_list, raws, strict=True)}

    def set_many(
        self, items: Mapping[K, object] | Iterable[tuple[K, object]], ttl_ms: object
    ) -> None:
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        key_list = check_keys([k for k, _ in pairs], unique=True)
        ttl = ttl_to_ms(ttl_ms)
        datas = [self.codec.encode(v, k)[1] for k, v in pairs]
        skeys = [self.key(k) for k in key_list]
        with self._mutex:
            now = time.monotonic()
            for skey, data in zip(skeys, datas, strict=True):
                self._write(skey, data, ttl, now)

    # -- operations that may wait for a lease (step generators) -----------------------------

    def _take_leases(
        self, keys: Sequence[Key], skeys: list[bytes], owner: object
    ) -> Operation[list[bytes | None]]:
        """Lease every key (all or none, like the Redis acquire) and read their values."""
        lease_s = self.options.lock_ttl_ms / 1000.0

        def attempt() -> Operation[tuple[bool, list[bytes | None], list[Key]]]:
            with self._mutex:
                now = time.monotonic()
                busy = [
                    k
                    for k, s in zip(keys, skeys, strict=True)
                    if not self._lease_free(s, owner, now)
                ]
                if busy:
                    return False, [], busy
                for skey in skeys:
                    self._leases[skey] = (owner, now + lease_s)
                return True, [self._read(s, now) for s in skeys], []
            yield  # a generator, like every attempt (never reached)

        return (yield from until_free(self.options, attempt))

    def _release(self, skeys: list[bytes], owner: object) -> None:
        with self._mutex:
            for skey in skeys:
                lease = self._leases.get(skey)
                if lease is not None and lease[0] is owner:
                    del self._leases[skey]

    def update_op(
        self, keys: Sequence[Key], updater: Callable[..., Any], *, keyed: bool
    ) -> Operation[list[T | None]]:
        check_updater(updater)
        skeys = [self.key(k) for k in keys]
        owner = object()  # a token per call, never per thread
        raws = yield from self._take_leases(keys, skeys, owner)
        try:
            plans = yield from plan_updates(self.codec, keys, raws, updater, keyed=keyed)
        except BaseException:
            self._release(skeys, owner)
            raise
        with self._mutex:
            now = time.monotonic()
            lost = [
                k
                for k, s in zip(keys, skeys, strict=True)
                if (lease := self._leases.get(s)) is None
                or lease[0] is not owner
                or lease[1] <= now
            ]
            if not lost:
                for skey, plan in zip(skeys, plans, strict=True):
                    if plan.data is not None:
                        self._write(skey, plan.data, plan.ttl_ms, now, keep_ttl=plan.ttl_ms is None)
        self._release(skeys, owner)
        if lost:
            raise LockLostError(
                f"lock on {lost!r} expired (lock_ttl_ms={self.options.lock_ttl_ms}) and was "
                "taken by another caller before the commit; nothing was written",
                keys=lost,
            )
        return [plan.value for plan in plans]

    def append_op(self, key: Key, item: object) -> Operation[None]:
        item_codec = self.codec.append_item_codec()
        if item_codec is None:
            yield from self.update_op([key], appending(item), keyed=False)
            return
        skey = self.key(key)
        _, item_data = item_codec.encode(item, key)
        owner = object()
        yield from self._take_leases([key], [skey], owner)  # wait while an update holds it
        try:
            with self._mutex:
                now = time.monotonic()
                current = self._read(skey, now)
                if current is None:
                    self._write(skey, b"[" + item_data + b"]", None, now)
                    return
                body = current.strip()
                if not (body.startswith(b"[") and body.endswith(b"]")) or not _one_json_array(body):
                    raise StoredValueError(
                        f"value stored under key {key!r} is not a JSON array; cannot append",
                        key=key,
                    )
                inner_body = body[1:-1]
                sep = b"," if inner_body.strip() else b""
                joined = b"[" + inner_body + sep + item_data + b"]"
                self._write(skey, joined, None, now, keep_ttl=True)
        finally:
            self._release([skey], owner)


class MemoryStorage(Generic[T]):
    """Thread-safe in-memory storage (blocking API). Create it with `create_memory_storage`."""

    def __init__(
        self, schema: object, options: StorageOptions | Mapping[str, Any] | None = None
    ) -> None:
        self._core: _MemoryCore[T] = _MemoryCore(schema, options)
        self.options = self._core.options

    def get(self, key: Key) -> T | None:
        """See `StorageAdapter.get`."""
        return self._core.get(key)

    def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set`."""
        self._core.set(key, value, ttl_ms)

    def delete(self, key: Key) -> None:
        """See `StorageAdapter.delete`."""
        self._core.delete_many(_one(key))

    def get_many(self, keys: Iterable[K]) -> dict[K, T | None]:
        """See `StorageAdapter.get_many`."""
        return self._core.get_many(keys)

    def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set_many`."""
        self._core.set_many(items, ttl_ms)

    def delete_many(self, keys: Iterable[Key]) -> None:
        """See `StorageAdapter.delete_many`."""
        self._core.delete_many(keys)

    def update(self, key: Key, updater: Updater[T]) -> T | None:
        """See `StorageAdapter.update`."""
        return run_sync(self._core.update_op(_one(key), updater, keyed=False))[0]

    def update_many(self, keys: Iterable[K], updater: KeyedUpdater[K, T]) -> dict[K, T | None]:
        """See `StorageAdapter.update_many`."""
        key_list = check_keys(keys, unique=True)
        results = run_sync(self._core.update_op(key_list, updater, keyed=True)) if key_list else []
        return dict(zip(key_list, results, strict=True))

    def append(self, key: Key, item: Any) -> None:
        """See `StorageAdapter.append`."""
        run_sync(self._core.append_op(key, item))

    def ping(self) -> float:
        """Always healthy (in-process); present so health checks treat every storage alike."""
        return 0.0

    def close(self) -> None:
        """Nothing to close; present so code can treat every storage alike."""

    def __enter__(self) -> MemoryStorage[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMemoryStorage(Generic[T]):
    """The memory storage for asyncio: same data semantics, waits never block the loop,
    updaters may be coroutine functions. Create it with `create_async_memory_storage`."""

    def __init__(
        self, schema: object, options: StorageOptions | Mapping[str, Any] | None = None
    ) -> None:
        self._core: _MemoryCore[T] = _MemoryCore(schema, options)
        self.options = self._core.options

    async def get(self, key: Key) -> T | None:
        """See `StorageAdapter.get`."""
        return self._core.get(key)

    async def set(self, key: Key, value: ValueIn[T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set`."""
        self._core.set(key, value, ttl_ms)

    async def delete(self, key: Key) -> None:
        """See `StorageAdapter.delete`."""
        self._core.delete_many(_one(key))

    async def get_many(self, keys: Iterable[K]) -> dict[K, T | None]:
        """See `StorageAdapter.get_many`."""
        return self._core.get_many(keys)

    async def set_many(self, items: Items[K, T], ttl_ms: TTL | None = None) -> None:
        """See `StorageAdapter.set_many`."""
        self._core.set_many(items, ttl_ms)

    async def delete_many(self, keys: Iterable[Key]) -> None:
        """See `StorageAdapter.delete_many`."""
        self._core.delete_many(keys)

    async def update(self, key: Key, updater: AsyncUpdater[T]) -> T | None:
        """See `StorageAdapter.update`; the updater may be a coroutine function."""
        return (await run_async(self._core.update_op(_one(key), updater, keyed=False)))[0]

    async def update_many(
        self, keys: Iterable[K], updater: AsyncKeyedUpdater[K, T]
    ) -> dict[K, T | None]:
        """See `StorageAdapter.update_many`; the updater may be a coroutine function."""
        key_list = check_keys(keys, unique=True)
        if not key_list:
            return {}
        results = await run_async(self._core.update_op(key_list, updater, keyed=True))
        return dict(zip(key_list, results, strict=True))

    async def append(self, key: Key, item: Any) -> None:
        """See `StorageAdapter.append`."""
        await run_async(self._core.append_op(key, item))

    async def ping(self) -> float:
        """Always healthy (in-process); present so health checks treat every storage alike."""
        return 0.0

    async def close(self) -> None:
        """Nothing to close; present so code can treat every storage alike."""

    async def __aenter__(self) -> AsyncMemoryStorage[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _one_json_array(data: bytes) -> bool:
    """One JSON array, not merely text between brackets (the Redis APPEND script's check:
    the original's append can leave '["a1","a2"]["b1"]')."""
    try:
        return isinstance(json.loads(data), list)
    except ValueError:
        return False


def _one(key: Key) -> list[Key]:
    encode_key(key)
    return [key]


@overload
def create_memory_storage(
    schema: type[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> MemoryStorage[T]: ...
@overload
def create_memory_storage(
    schema: ValidatorOf[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> MemoryStorage[T]: ...
@overload
def create_memory_storage(
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> MemoryStorage[Any]: ...
def create_memory_storage(
    schema: object, options: StorageOptions | Mapping[str, Any] | None = None
) -> MemoryStorage[Any]:
    """An in-memory storage with the Redis adapter's API and semantics."""
    return MemoryStorage(schema, options)


@overload
def create_async_memory_storage(
    schema: type[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncMemoryStorage[T]: ...
@overload
def create_async_memory_storage(
    schema: ValidatorOf[T],
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncMemoryStorage[T]: ...
@overload
def create_async_memory_storage(
    schema: object,
    options: StorageOptions | Mapping[str, Any] | None = None,
) -> AsyncMemoryStorage[Any]: ...
def create_async_memory_storage(
    schema: object, options: StorageOptions | Mapping[str, Any] | None = None
) -> AsyncMemoryStorage[Any]:
    """The asyncio in-memory storage (same semantics as `create_memory_storage`)."""
    return AsyncMemoryStorage(schema, options)
