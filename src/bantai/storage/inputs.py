"""Checks of caller input shared by every storage: keys, TTLs, updater results.

Each check raises a typed `InvalidInputError` that says what was wrong, so callers get the
error before any command is built, let alone sent.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from bantai.codec import Key as Key  # re-exported: the key type of the storage API
from bantai.errors import (
    InvalidKeyError,
    InvalidTTLError,
    InvalidUpdaterError,
    InvalidValueError,
    UnsupportedOperationError,
)

T = TypeVar("T")
# A batch caller's key type (str or bytes): the keys it passed come back in the results.
K = TypeVar("K", bound=Key)

TTL = int | timedelta

# Redis accepts keys up to 512 MB; nobody means a key that long. A bound keeps one bad call
# from shipping megabytes per command and turns an obvious bug into a clear error.
MAX_KEY_BYTES = 64 * 1024
# PX must fit Redis' signed 64-bit millisecond clock arithmetic; ~317 years is plenty.
MAX_TTL_MS = 10**13
LOCK_SUFFIX = b":lock"


def encode_key(key: object) -> bytes:
    """The key's bytes as stored (before the prefix). `str` keys are UTF-8. The empty key
    is a key, as in the TypeScript original (its value lives at the prefix itself)."""
    if isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(
                f"key {key!r} is not valid Unicode (lone surrogate); pass bytes for binary keys"
            ) from exc
    elif isinstance(key, bytes):
        raw = key
    else:
        raise InvalidKeyError(f"key must be str or bytes, not {type(key).__name__}")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is {len(raw)} bytes long; the limit is {MAX_KEY_BYTES}")
    if raw.endswith(LOCK_SUFFIX):
        # `k:lock` is where the lock of `k` lives (the TypeScript original's layout); a value
        # stored there would be taken for a lock and break updates of `k`.
        raise InvalidKeyError(f"key {key!r} ends with ':lock', which is reserved for lock keys")
    return raw


def check_keys(keys: Iterable[K], *, unique: bool) -> list[K]:
    """Materialise a batch's keys, checking each; with `unique`, refuse duplicates.

    Duplicates are found on the encoded bytes: ``"x"`` and ``b"x"`` (or two spellings that
    encode alike) are the same Redis key, and two updates of one key in one batch would
    both be acknowledged while only one lands."""
    if isinstance(keys, (str, bytes)):
        raise InvalidKeyError("pass an iterable of keys, not a single key")
    out = list(keys)
    encoded = [encode_key(key) for key in out]
    if unique and len(set(encoded)) != len(encoded):
        seen: dict[bytes, Key] = {}
        for key, raw in zip(out, encoded, strict=True):
            if raw in seen:
                first = seen[raw]
                spelled = "" if first == key else f" (also given as {first!r})"
                raise InvalidKeyError(f"key {key!r} appears more than once in the batch{spelled}")
            seen[raw] = key
    return out


def ttl_to_ms(ttl: object, *, name: str = "ttl_ms") -> int | None:
    """Normalise a TTL to whole milliseconds (None = no TTL). Refuses 0, negatives, NaN,
    floats, bools and absurd sizes, so nothing invalid ever reaches `SET ... PX`."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        # Round sub-millisecond remainders up: a positive timedelta never becomes PX 0.
        micros = (ttl.days * 86_400 + ttl.seconds) * 1_000_000 + ttl.microseconds
        if micros <= 0:
            raise InvalidTTLError(f"{name} must be positive, got {ttl!r}")
        ms = -(-micros // 1000)
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        ms = ttl
        if ms <= 0:
            raise InvalidTTLError(f"{name} must be a positive number of milliseconds, got {ms}")
    elif isinstance(ttl, float) and (math.isnan(ttl) or math.isinf(ttl)):
        raise InvalidTTLError(f"{name} must be a finite positive integer, got {ttl!r}")
    else:
        raise InvalidTTLError(
            f"{name} must be an int (milliseconds) or a datetime.timedelta, "
            f"not {type(ttl).__name__} ({ttl!r})"
        )
    if ms > MAX_TTL_MS:
        raise InvalidTTLError(f"{name} of {ms} ms is too large; the limit is {MAX_TTL_MS} ms")
    return ms


@dataclass(frozen=True, slots=True)
class UpdateResult(Generic[T]):
    """What an updater returns to write `value` (with an optional new TTL).

    A mapping ``{"value": v, "ttl_ms": n}`` is accepted as well; without a TTL the key keeps
    the TTL it had (Redis `KEEPTTL`)."""

    value: T
    ttl_ms: TTL | None = None


_RESULT_KEYS = frozenset({"value", "ttl_ms"})


def unpack_update_result(result: object, key: Key) -> tuple[Any, int | None] | None:
    """An updater's return value as `(value, ttl_ms)`, or None for "write nothing"."""
    if result is None:
        return None
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it rather than leak a warning
        raise UnsupportedOperationError(
            f"the updater for key {key!r} returned an awaitable; async updaters need an "
            "asyncio storage"
        )
    if isinstance(result, UpdateResult):
        return result.value, ttl_to_ms(result.ttl_ms)
    if isinstance(result, Mapping):
        if "value" not in result or not _RESULT_KEYS.issuperset(result):
            # repr() each key: a mapping may mix key types that do not sort together.
            shown = sorted(repr(k) for k in result)
            raise InvalidValueError(
                f"updater for key {key!r} must return None, UpdateResult(value, ttl_ms) or "
                f"a mapping with 'value' and optional 'ttl_ms'; got keys [{', '.join(shown)}]",
                key=key,
            )
        return result["value"], ttl_to_ms(result.get("ttl_ms"))
    raise InvalidValueError(
        f"updater for key {key!r} must return None, UpdateResult(value, ttl_ms) or "
        f"{{'value': ..., 'ttl_ms': ...}}; got {type(result).__name__}",
        key=key,
    )


def check_updater(updater: object) -> None:
    """Refuse a non-callable updater before any lock is taken."""
    if not callable(updater):
        raise InvalidUpdaterError(
            f"updater must be a callable taking the current value, not {type(updater).__name__}"
        )


def appending(item: object) -> Callable[[Any], dict[str, Any]]:
    """The updater of an `append` that must re-validate the whole list."""

    def update(current: Any) -> dict[str, Any]:
        return {"value": [*(current or ()), item]}

    return update
