"""Storage options: the key prefix and the lock timings, plus the Redis adapters' own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from bantai.codec import ValueCodec, codec_for
from bantai.errors import InvalidOptionError
from bantai.observe import Instrumentation
from bantai.storage.inputs import MAX_TTL_MS

OptionsT = TypeVar("OptionsT", bound="StorageOptions")
T = TypeVar("T")

# A pause between lock attempts longer than this is a mistake, not a tuning choice.
MAX_LOCK_RETRY_MS = 60_000


def _check_ms(name: str, value: object, *, minimum: int, maximum: int = MAX_TTL_MS) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be an int (milliseconds), not {value!r}")
    if value < minimum:
        raise InvalidOptionError(f"{name} must be >= {minimum} ms, got {value}")
    # Every bound keeps the value inside what Redis (PX, signed 64-bit ms) and Lua (doubles,
    # exact to 2**53) compute exactly, so nothing accepted here can fail on the server.
    if value > maximum:
        raise InvalidOptionError(f"{name} must be <= {maximum} ms, got {value}")


def _from_mapping(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """`cls(**values)`, refusing names that are not its fields (naming the valid ones)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidOptionError(f"unknown {what}(s) {unknown}; valid options are {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Options of every storage; invalid values raise `InvalidOptionError` (a
    `ValueError`) naming the option.

    - `prefix`: prepended to every key (default ``""``).
    - `lock_timeout_ms`: how long `update` waits for a busy lock (default 5000; 0 = try once).
    - `lock_ttl_ms`: how long a lock lives if its holder dies (default 10000; must be
      >= `lock_timeout_ms`).
    - `lock_retry_ms`: longest pause between attempts on a busy lock (default 50; the
      pauses start near one round trip and double up to it, with jitter).
    - `omit_none_defaults`: write a field whose value is None *and* whose default is None
      by leaving it out, as `JSON.stringify` leaves out `undefined` (default False). Turn
      it on when Node services with zod `.optional()` fields read the same values: zod
      rejects `null` there. A required nullable field still writes `null`.
    - `js_safe_integers`: refuse (`InvalidValueError`) integers beyond ±(2**53 - 1), which
      JavaScript numbers cannot hold exactly (default False).
    """

    prefix: str | bytes = ""
    lock_timeout_ms: int = 5000
    lock_ttl_ms: int = 10000
    lock_retry_ms: int = 50
    omit_none_defaults: bool = False
    js_safe_integers: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, (str, bytes)):
            raise InvalidOptionError(f"prefix must be str or bytes, not {self.prefix!r}")
        if isinstance(self.prefix, str):
            try:
                self.prefix.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidOptionError(f"prefix {self.prefix!r} is not valid Unicode") from None
        _check_ms("lock_timeout_ms", self.lock_timeout_ms, minimum=0)
        _check_ms("lock_ttl_ms", self.lock_ttl_ms, minimum=1)
        _check_ms("lock_retry_ms", self.lock_retry_ms, minimum=1, maximum=MAX_LOCK_RETRY_MS)
        for name in ("omit_none_defaults", "js_safe_integers"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError(
                    f"{name} must be True or False, not {getattr(self, name)!r}"
                )
        if self.lock_ttl_ms < self.lock_timeout_ms:
            raise InvalidOptionError(
                f"lock_ttl_ms ({self.lock_ttl_ms}) must be >= lock_timeout_ms "
                f"({self.lock_timeout_ms})"
            )

    def codec(self, schema: object) -> ValueCodec[Any]:
        """The codec for `schema` under these options (the Node-compatibility rules)."""
        return codec_for(schema).with_wire_rules(
            omit_none_defaults=self.omit_none_defaults, js_safe_integers=self.js_safe_integers
        )

    @property
    def prefix_bytes(self) -> bytes:
        """The prefix as bytes (UTF-8)."""
        p = self.prefix
        return p if isinstance(p, bytes) else p.encode("utf-8")

    @classmethod
    def coerce(cls: type[OptionsT], options: StorageOptions | Mapping[str, Any] | None) -> OptionsT:
        """Accept an instance, a mapping of option names, or None (all defaults)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, StorageOptions):  # e.g. plain options for a Redis adapter
            options = {f.name: getattr(options, f.name) for f in fields(options)}
        if not isinstance(options, Mapping):
            raise InvalidOptionError(
                f"options must be a mapping or {cls.__name__}, not {type(options).__name__}"
            )
        return _from_mapping(cls, options, "option")


@dataclass(frozen=True, slots=True)
class LocalCacheOptions:
    """The Redis adapters' local cache of validated values (`local_cache` option), kept
    coherent by Redis client tracking; invalid values raise `InvalidOptionError`.

    - `max_entries`: at most this many keys are cached; the least recently used goes
      first (default 10000).
    - `max_ttl_ms`: an entry is dropped this long after it was read from Redis even if no
      invalidation came (default None: only an invalidation or the key's own TTL ends it).
    - `broadcast`: track every key under the storage's prefix (`CLIENT TRACKING ... BCAST
      PREFIX`) instead of the keys this process read: no per-read tracking on the server,
      but an invalidation message for every write under the prefix (default False). The
      prefix must not be empty then.
    """

    max_entries: int = 10_000
    max_ttl_ms: int | None = None
    broadcast: bool = False

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_entries, int)
            or isinstance(self.max_entries, bool)
            or not (1 <= self.max_entries <= 100_000_000)
        ):
            raise InvalidOptionError(
                f"local_cache max_entries must be an int from 1 to 100000000, "
                f"not {self.max_entries!r}"
            )
        if self.max_ttl_ms is not None:
            _check_ms("local_cache max_ttl_ms", self.max_ttl_ms, minimum=1)
        if not isinstance(self.broadcast, bool):
            raise InvalidOptionError(
                f"local_cache broadcast must be True or False, not {self.broadcast!r}"
            )

    @classmethod
    def coerce(cls, value: object) -> LocalCacheOptions | None:
        """None / False (off), True (defaults), a mapping of these fields, or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InvalidOptionError(
                "local_cache must be a mapping (max_entries, max_ttl_ms, broadcast), True, "
                f"or None, not {type(value).__name__}"
            )
        return _from_mapping(cls, value, "local_cache option")


@dataclass(frozen=True, slots=True)
class RedisStorageOptions(StorageOptions):
    """The Redis adapters' options: those of `StorageOptions`, plus

    - `busy_poll_us`: blocking adapter only. After sending, spin (poll the socket without
      sleeping) for up to this many microseconds before blocking for the reply (default
      0 = off). Saves the thread wake-up latency (often more than half of a loopback round
      trip on an idle machine) at the price of that much CPU per round trip; the compiled
      build spins without holding the GIL. Worth it for latency-critical threads with a
      core to spare; not with many busy threads on few cores. At most 10000.
    - `instrumentation`: an `bantai.observe.Instrumentation` whose hooks see every
      operation (default: the one `set_default_instrumentation` set, else none — and then
      nothing is observed and nothing costs anything). `bantai.otel` provides one for
      OpenTelemetry.
    - `local_cache`: keep validated values in this process and serve `get` / `get_many`
      from there until Redis says the key changed (`LocalCacheOptions`, a mapping of its
      fields, or True for the defaults; default None = off). Single server, Sentinel and
      Redis Cluster.
    """

    busy_poll_us: int = 0
    instrumentation: Instrumentation | None = None
    local_cache: LocalCacheOptions | Mapping[str, Any] | bool | None = None

    def __post_init__(self) -> None:
        super(RedisStorageOptions, self).__post_init__()
        if (
            not isinstance(self.busy_poll_us, int)
            or isinstance(self.busy_poll_us, bool)
            or not (0 <= self.busy_poll_us <= 10_000)
        ):
            raise InvalidOptionError(
                f"busy_poll_us must be an int from 0 to 10000 (microseconds), "
                f"not {self.busy_poll_us!r}"
            )
        if self.instrumentation is not None and not isinstance(
            self.instrumentation, Instrumentation
        ):
            raise InvalidOptionError(
                "instrumentation must be a bantai.observe.Instrumentation, "
                f"not {self.instrumentation!r}"
            )
        cache = LocalCacheOptions.coerce(self.local_cache)
        if cache is not None and cache.broadcast and not self.prefix:
            raise InvalidOptionError(
                "local_cache broadcast needs a prefix: with an empty one every write to the "
                "database would be broadcast to this process"
            )
        object.__setattr__(self, "local_cache", cache)

    @property
    def cache(self) -> LocalCacheOptions | None:
        """The local cache's options (None: off)."""
        return self.local_cache  # type: ignore[return-value]  # coerced in __post_init__
