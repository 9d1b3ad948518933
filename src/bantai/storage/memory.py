"""In-process storage with the Redis adapter's semantics: values validated and stored as
the same JSON bytes, TTLs that really expire, and `update` guarded by per-key leases with
the same timeout / TTL / lost-lease behaviour as the Redis locks.

Unlike the TypeScript original's memory storage, TTLs are honoured. All times are
`time.monotonic()`, so wall-clock jumps change nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, cast

from bantai.errors import (
    LockLostError,
    LockTimeoutError,
    StoredValueError,
    UnsupportedOperationError,
)
from bantai.storage.codec import codec_for
from bantai.storage.inputs import (
    TTL,
    Key,
    check_keys,
    encode_key,
    ttl_to_ms,
    unpack_update_result,
)
from bantai.storage.options import StorageOptions
from bantai.storage.protocol import KeyedUpdater, Updater

T = TypeVar("T")

# How many writes between sweeps of expired entries (reads expire lazily as well).
_SWEEP_EVERY = 1024


class MemoryStorage(Generic[T]):
    """Thread-safe in-memory storage. Create it with `create_memory_storage`."""

    def __init__(
        self, schema: object, options: StorageOptions | Mapping[str, Any] | None = None
    ) -> None:
        self.options = StorageOptions.coerce(options)
        self._codec = codec_for(schema)
        self._prefix = self.options.prefix_bytes
        # stored key -> (JSON bytes, expiry on the monotonic clock or None)
        self._data: dict[bytes, tuple[bytes, float | None]] = {}
        # stored key -> (lease owner, lease expiry): the in-process twin of `k:lock`
        self._leases: dict[bytes, tuple[object, float]] = {}
        self._cond = threading.Condition(threading.Lock())
        self._writes = 0

    # -- internals (all called with self._cond held) -------------------------------------

    def _key(self, key: Key) -> bytes:
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

    def _wait_for_leases(self, skeys: list[bytes], keys: list[Key], owner: object) -> None:
        deadline = time.monotonic() + self.options.lock_timeout_ms / 1000.0
        while True:
            now = time.monotonic()
            busy = [
                k for k, s in zip(keys, skeys, strict=True) if not self._lease_free(s, owner, now)
            ]
            if not busy:
                return
            if now >= deadline:
                shown = f"key {busy[0]!r}" if len(busy) == 1 else f"keys {busy!r}"
                raise LockTimeoutError(
                    f"Failed to acquire lock for {shown} within {self.options.lock_timeout_ms} ms",
                    keys=busy,
                )
            # Wake on release, or re-check when a lease may have expired.
            self._cond.wait(min(deadline - now, self.options.lock_retry_ms / 1000.0))

    # -- the StorageAdapter API ------------------------------------------------------------

    def get(self, key: Key) -> T | None:
        skey = self._key(key)
        with self._cond:
            raw = self._read(skey, time.monotonic())
        return self._codec.decode(raw, key)

    def set(self, key: Key, value: T | Any, ttl_ms: TTL | None = None) -> None:
        skey = self._key(key)
        ttl = ttl_to_ms(ttl_ms)
        _, data = self._codec.encode(value, key)
        with self._cond:
            self._write(skey, data, ttl, time.monotonic())

    def delete(self, key: Key) -> None:
        skey = self._key(key)
        with self._cond:
            self._data.pop(skey, None)

    def get_many(self, keys: Iterable[Key]) -> dict[Key, T | None]:
        key_list = check_keys(keys, unique=False)
        skeys = [self._key(k) for k in key_list]
        with self._cond:
            now = time.monotonic()
            raws = [self._read(s, now) for s in skeys]
        return {k: self._codec.decode(r, k) for k, r in zip(key_list, raws, strict=True)}

    def set_many(
        self, items: Mapping[Key, Any] | Iterable[tuple[Key, Any]], ttl_ms: TTL | None = None
    ) -> None:
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        key_list = check_keys([k for k, _ in pairs], unique=True)
        ttl = ttl_to_ms(ttl_ms)
        datas = [self._codec.encode(v, k)[1] for k, v in pairs]
        skeys = [self._key(k) for k in key_list]
        with self._cond:
            now = time.monotonic()
            for skey, data in zip(skeys, datas, strict=True):
                self._write(skey, data, ttl, now)

    def delete_many(self, keys: Iterable[Key]) -> None:
        skeys = [self._key(k) for k in check_keys(keys, unique=False)]
        with self._cond:
            for skey in skeys:
                self._data.pop(skey, None)

    def update(self, key: Key, updater: Updater[T]) -> T | None:
        return self._update([key], lambda _k, current: updater(current))[0]

    def update_many(self, keys: Iterable[Key], updater: KeyedUpdater[T]) -> dict[Key, T | None]:
        key_list = check_keys(keys, unique=True)
        if not key_list:
            return {}
        return dict(zip(key_list, self._update(key_list, updater), strict=True))

    def append(self, key: Key, item: Any) -> None:
        item_codec = self._codec.item_codec
        if item_codec is None:
            schema = self._codec.core_schema
            inner = schema["schema"] if schema.get("type") == "definitions" else schema
            if inner.get("type") != "list":
                raise UnsupportedOperationError(
                    f"append needs a list schema (e.g. list[Item]); this storage's schema is "
                    f"{schema.get('type')!r}"
                )
            self.update(key, lambda current: {"value": [*cast(Any, current or ()), item]})
            return
        skey = self._key(key)
        _, item_data = item_codec.encode(item, key)
        with self._cond:
            self._wait_for_leases([skey], [key], object())
            now = time.monotonic()
            current = self._read(skey, now)
            if current is None:
                self._write(skey, b"[" + item_data + b"]", None, now)
                return
            body = current.strip()
            if not (body.startswith(b"[") and body.endswith(b"]")):
                raise StoredValueError(
                    f"value stored under key {key!r} is not a JSON array; cannot append",
                    key=key,
                )
            inner_body = body[1:-1]
            joined = b"[" + (inner_body + b"," if inner_body.strip() else b"") + item_data + b"]"
            self._write(skey, joined, None, now, keep_ttl=True)

    # -- locked update ---------------------------------------------------------------------

    def _update(self, keys: list[Key], updater: Callable[[Key, T | None], Any]) -> list[T | None]:
        skeys = [self._key(k) for k in keys]
        owner = object()  # a token per call, never per thread
        lease_s = self.options.lock_ttl_ms / 1000.0
        with self._cond:
            self._wait_for_leases(skeys, keys, owner)
            now = time.monotonic()
            for skey in skeys:
                self._leases[skey] = (owner, now + lease_s)
            raws = [self._read(s, now) for s in skeys]
        try:
            plans: list[tuple[bytes, int | None] | None] = []
            results: list[T | None] = []
            for key, raw in zip(keys, raws, strict=True):
                current = self._codec.decode(raw, key)
                unpacked = unpack_update_result(updater(key, current), key)
                if unpacked is None:
                    plans.append(None)
                    results.append(current)
                    continue
                validated, data = self._codec.encode(unpacked[0], key)
                plans.append((data, unpacked[1]))
                results.append(validated)
        except BaseException:
            self._release(skeys, owner)
            raise
        with self._cond:
            now = time.monotonic()
            lost = [
                k
                for k, s in zip(keys, skeys, strict=True)
                if (lease := self._leases.get(s)) is None
                or lease[0] is not owner
                or lease[1] <= now
            ]
            if lost:
                self._release_locked(skeys, owner)
                raise LockLostError(
                    f"lock on {lost!r} expired (lock_ttl_ms={self.options.lock_ttl_ms}) and "
                    "was taken by another caller before the commit; nothing was written",
                    keys=lost,
                )
            for skey, plan in zip(skeys, plans, strict=True):
                if plan is not None:
                    self._write(skey, plan[0], plan[1], now, keep_ttl=plan[1] is None)
            self._release_locked(skeys, owner)
        return results

    def _release(self, skeys: list[bytes], owner: object) -> None:
        with self._cond:
            self._release_locked(skeys, owner)

    def _release_locked(self, skeys: list[bytes], owner: object) -> None:
        for skey in skeys:
            lease = self._leases.get(skey)
            if lease is not None and lease[0] is owner:
                del self._leases[skey]
        self._cond.notify_all()

    def close(self) -> None:
        """Nothing to close; present so code can treat every storage alike."""

    def __enter__(self) -> MemoryStorage[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_memory_storage(
    schema: object, options: StorageOptions | Mapping[str, Any] | None = None
) -> MemoryStorage[Any]:
    """An in-memory storage with the Redis adapter's API and semantics."""
    return MemoryStorage(schema, options)
