"""The exception hierarchy. Every error bantai raises on purpose is one of these (and the
one warning category bantai emits, `PurePythonWarning`).

Bad input (keys, TTLs, values, options) raises a subclass of both `BantaiError` and
`ValueError`, before anything is sent to a server. Storage failures raise `StorageError`
subclasses. Connection problems are redis-py's own `redis.exceptions.ConnectionError` /
`TimeoutError`, except where their meaning changes (a lost commit reply becomes
`UpdateOutcomeUnknownError`).
"""

from __future__ import annotations

from collections.abc import Sequence


class BantaiError(Exception):
    """Base class of every bantai exception."""


class _KeyedError(BantaiError):
    """An error about one key (`key`, None when there is none, e.g. policy input)."""

    def __init__(self, message: str, *, key: str | bytes | None = None) -> None:
        super().__init__(message)
        self.key = key


class _KeysError(BantaiError):
    """An error about some keys (`keys`, a tuple)."""

    def __init__(self, message: str, *, keys: Sequence[str | bytes]) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


class InvalidInputError(BantaiError, ValueError):
    """A key, TTL, value or option was refused before anything was written."""


class InvalidKeyError(InvalidInputError):
    """A key is of the wrong type, empty, too long, or would collide with a lock key."""


class InvalidTTLError(InvalidInputError):
    """A TTL is not a positive number of milliseconds (int) or a positive timedelta."""


class InvalidOptionError(InvalidInputError):
    """An adapter option (or the connection argument) is invalid; the message names it."""


class InvalidValueError(InvalidInputError, _KeyedError):
    """A value (passed in, or returned by an updater) does not validate against the schema
    or cannot be represented as JSON (NaN, Infinity). `key` names it (None for policy
    input)."""


class InvalidUpdaterError(InvalidInputError, TypeError):
    """The updater passed to `update` / `update_many` is not callable."""


class StorageError(BantaiError):
    """A storage operation failed."""


class StorageClosedError(StorageError):
    """The storage was closed; create a new one."""


class StoredValueError(StorageError, _KeyedError):
    """The value stored under `key` is not JSON, does not validate against the schema, or is
    not a string at all (`WrongTypeError`). It is never unpickled or silently dropped."""


class WrongTypeError(StoredValueError):
    """Redis holds a non-string (hash, list, ...) under the key (a WRONGTYPE reply)."""


class UnsupportedOperationError(BantaiError, TypeError):
    """The call does not apply here: `append` on a non-list schema, an async updater on a
    blocking storage, a coroutine rule under `evaluate_policy_sync`."""


class InvalidRuleError(InvalidInputError, TypeError):
    """A rule is defined wrongly (no name, `evaluate` not callable) or returned something
    other than `allow()`, `deny()` or `skip()` (kept on the result as its `error`)."""


class LockError(StorageError, _KeysError):
    """Base class of the distributed-lock errors (`keys`: the keys concerned)."""


class LockTimeoutError(LockError):
    """The lock could not be acquired within `lock_timeout_ms`. The message contains
    `Failed to acquire lock`, like the TypeScript original's."""


class LockLostError(LockError):
    """At commit time the lock no longer held this call's token (it expired after
    `lock_ttl_ms` and another client took it). Nothing was written."""


class WriteOutcomeUnknownError(StorageError, _KeysError):
    """A write (`set`, `delete`, a batch, `append`, a rate-limit `consume`, an update's
    commit) may have reached the server, but its reply was lost (connection lost, timeout).
    It may or may not have happened, and it was NOT resent: a resent write could overwrite
    another client's acknowledged write. `keys` are the keys concerned; `__cause__` is the
    connection error. Read the keys to find out."""


class UpdateOutcomeUnknownError(WriteOutcomeUnknownError):
    """The commit of an `update` / `update_many` / `append` was sent but its reply was
    lost. The updater was not re-run and the commit was not resent."""


class PurePythonWarning(RuntimeWarning):
    """`bantai.redis` runs its pure-Python implementation on a platform that normally gets
    the compiled extension (CPython on Linux or macOS, x86_64 or arm64): the extension is
    missing or does not load. Everything works, only slower. Emitted once, at import.
    Reinstall from a binary wheel or with a C compiler to fix it, or set
    `BANTAI_NO_EXTENSIONS=1` to choose the pure-Python implementation (no warning)."""


__all__ = [
    "BantaiError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidOptionError",
    "InvalidRuleError",
    "InvalidTTLError",
    "InvalidUpdaterError",
    "InvalidValueError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "PurePythonWarning",
    "StorageError",
    "StoredValueError",
    "UnsupportedOperationError",
    "StorageClosedError",
    "UpdateOutcomeUnknownError",
    "WriteOutcomeUnknownError",
    "WrongTypeError",
]
