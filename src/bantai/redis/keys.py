"""Where things live in Redis. The only module that knows the key layout.

Standalone/Sentinel layout (wire-compatible with the TypeScript original):
  value  = prefix + key
  lock   = prefix + key + ":lock"    (the lock's value is the holder's token)
"""

from __future__ import annotations

from collections.abc import Sequence

from bantai.storage.inputs import LOCK_SUFFIX


class KeyLayout:
    """Maps (already checked) key bytes to Redis keys and groups keys per round trip."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def value_key(self, key: bytes) -> bytes:
        return self.prefix + key

    def lock_key(self, key: bytes) -> bytes:
        return self.prefix + key + LOCK_SUFFIX

    def groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indices of `keys` that one command may touch together. On a single server that
        is all of them; a cluster layout groups them by hash slot."""
        return [list(range(len(keys)))] if keys else []
