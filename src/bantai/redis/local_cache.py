"""The local cache's state, without I/O: validated values by Redis key, in LRU order, and
the bookkeeping that keeps them coherent with the server (`tracking.py` feeds it the
server's invalidation messages; the cached facade `cached.py` reads and fills it).

Coherence rules (docs/design.md, "The local cache"):

- An entry is only ever inserted by a *fill*: a read sent with client tracking on, so that
  Redis promises one invalidation message for the key when it next changes.
- A fill registers itself before its read is sent. An invalidation of its key (or of
  everything) that is applied before the fill completes *poisons* it: the value read may
  be older than the change the message announced, and the server will not announce the
  key again, so it is not inserted. This closes the classic fill/invalidation race.
- Concurrent fills of one key cannot be ordered here: a newer reply on a data connection
  may arrive before the invalidation (on the stream's connection) of the value an older
  fill read. So the first fill of a key to complete poisons the others in flight, and a
  fill that finds a *different* value inserted meanwhile drops it and inserts nothing. A
  reader thus never sees a value older than one any read already returned.
- A write through this storage invalidates its keys locally before it is sent and again
  when it is done (poisoning fills in between), so a thread reads its own writes at once,
  without waiting for the server's message.
- When the invalidation stream breaks, messages may have been lost: everything is dropped
  and the `epoch` moves on, which poisons every fill that started before.
- An entry never outlives the key's TTL as read at fill time (measured from before the
  read was sent), nor `max_ttl_ms`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from bantai.storage.options import LocalCacheOptions

# Values that can be handed to every caller as they are: nobody can change them.
_IMMUTABLE = frozenset((str, int, float, bool, bytes, type(None)))


class CacheStats(NamedTuple):
    """A snapshot of a local cache's counters (since the storage was created)."""

    hits: int
    misses: int
    invalidations: int  # entries dropped because the server (or this storage) said so
    evictions: int  # entries dropped to stay within max_entries
    flushes: int  # times everything was dropped (the stream broke, FLUSHDB, ...)
    entries: int  # entries held now


class Entry:
    """One cached key: the validated value, the bytes it came from, and when it ends."""

    __slots__ = ("deadline", "raw", "shared", "value")

    def __init__(self, raw: bytes | None, value: Any, deadline: float) -> None:
        self.raw = raw
        # Immutable values are returned as they are; the others are validated again from
        # `raw` on every hit so that no two callers share a mutable object.
        self.shared = type(value) in _IMMUTABLE
        self.value = value if self.shared else None
        self.deadline = deadline  # time.monotonic() after which it is gone; 0.0: never


class Fill:
    """A read in flight whose value may be inserted (see the module docstring)."""

    __slots__ = ("ended", "epoch", "key", "poisoned", "started")

    def __init__(self, key: bytes, epoch: int, started: float) -> None:
        self.key = key
        self.epoch = epoch
        self.started = started
        self.poisoned = False
        self.ended = False


class LocalCache:
    """Entries by Redis key (bytes), LRU-bounded. Lookups are lock-free (a dict read);
    everything that changes the coherence state takes `lock`."""

    __slots__ = (
        "_fills",
        "entries",
        "epoch",
        "evictions",
        "flushes",
        "hits",
        "invalidations",
        "lock",
        "max_entries",
        "max_ttl_s",
        "misses",
    )

    def __init__(self, options: LocalCacheOptions) -> None:
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._fills: dict[bytes, list[Fill]] = {}
        self.lock = threading.Lock()
        self.epoch = 0
        self.max_entries = options.max_entries
        self.max_ttl_s = None if options.max_ttl_ms is None else options.max_ttl_ms / 1000.0
        # Counters: exact for one thread; under many threads a rare increment may be lost.
        self.hits = self.misses = self.invalidations = self.evictions = self.flushes = 0

    def lookup(self, key: bytes) -> Entry | None:
        """The live entry for `key`, marked as recently used, or None (counts a miss)."""
        entry = self.entries.get(key)
        if entry is not None:
            if entry.deadline == 0.0 or time.monotonic() < entry.deadline:
                try:  # noqa: SIM105 (the hot path: contextlib.suppress costs more)
                    self.entries.move_to_end(key)
                except KeyError:  # dropped by another thread just now: still a valid read
                    pass
                self.hits += 1
                return entry
            self._expire(key, entry)
        self.misses += 1
        return None

    def _expire(self, key: bytes, entry: Entry) -> None:
        with self.lock:
            if self.entries.get(key) is entry:
                del self.entries[key]

    # --- fills --------------------------------------------------------------------------

    def begin_fill(self, key: bytes) -> Fill:
        """Register a read of `key` that is about to be sent with tracking on."""
        fill = Fill(key, self.epoch, time.monotonic())
        with self.lock:
            fills = self._fills.get(key)
            if fills is None:
                self._fills[key] = [fill]
            else:
                fills.append(fill)
        return fill

    def end_fill(self, fill: Fill, raw: bytes | None, value: Any, pttl_ms: int | None) -> bool:
        """Insert what the fill read, unless it was poisoned meanwhile; `pttl_ms` is the
        key's PTTL read in the same round trip (None or negative: no TTL). True when the
        entry went in."""
        key = fill.key
        with self.lock:
            fill.ended = True
            fills = self._fills.get(key)
            if fills is not None:
                if len(fills) == 1:  # the common case: no other read of the key in flight
                    del self._fills[key]
                else:
                    with contextlib.suppress(ValueError):
                        fills.remove(fill)
                    # Reads of one key that overlap cannot be ordered from here (their
                    # replies may arrive in any order): the first to complete decides,
                    # the others in flight are not inserted. A later fill read what this
                    # one read, or newer.
                    for other in fills:
                        other.poisoned = True
            entries = self.entries
            present = entries.get(key)
            if present is not None and present.raw != raw:
                # Another fill inserted a different value while this one was in flight:
                # one of the two is stale (its invalidation may still be on the way,
                # on another socket than the newer reply). Keep neither — also when this
                # fill is poisoned: its caller is getting the other value.
                del entries[key]
                self.invalidations += 1
                return False
            if fill.poisoned or fill.epoch != self.epoch:
                return False
            deadline = 0.0
            if pttl_ms is not None and pttl_ms >= 0:
                deadline = fill.started + pttl_ms / 1000.0
            if self.max_ttl_s is not None:
                cap = fill.started + self.max_ttl_s
                deadline = cap if deadline == 0.0 else min(deadline, cap)
            entries[key] = Entry(raw, value, deadline)
            entries.move_to_end(key)  # most recent (already last unless it was present)
            if len(entries) > self.max_entries:
                while len(entries) > self.max_entries:
                    entries.popitem(last=False)
                    self.evictions += 1
            return True

    def abandon_fill(self, fill: Fill) -> None:
        """The read failed: forget the fill (nothing to do once it ended)."""
        if fill.ended:
            return
        with self.lock:
            fill.ended = True
            self._forget(fill)

    def _forget(self, fill: Fill) -> None:
        fills = self._fills.get(fill.key)
        if fills is None:
            return
        if len(fills) == 1:  # the common case: no other read of the key in flight
            if fills[0] is fill:
                del self._fills[fill.key]
            return
        with contextlib.suppress(ValueError):
            fills.remove(fill)

    # --- invalidation ---------------------------------------------------------------------

    def invalidate(self, keys: Iterable[bytes]) -> None:
        """These keys changed (a message from the server, or a write through this storage):
        drop their entries and poison their fills in flight."""
        with self.lock:
            for key in keys:
                if self.entries.pop(key, None) is not None:
                    self.invalidations += 1
                for fill in self._fills.get(key, ()):
                    fill.poisoned = True

    def invalidate_all(self) -> None:
        """Everything may have changed (FLUSHDB, or the stream broke and messages may have
        been lost): drop every entry, and poison every fill in flight."""
        with self.lock:
            self.entries.clear()
            self.epoch += 1
            self.flushes += 1
            for fills in self._fills.values():
                for fill in fills:
                    fill.poisoned = True

    def stats(self) -> CacheStats:
        """The counters now."""
        return CacheStats(
            self.hits,
            self.misses,
            self.invalidations,
            self.evictions,
            self.flushes,
            len(self.entries),
        )


__all__ = ["CacheStats", "Entry", "Fill", "LocalCache"]
