"""Where things live in Redis. The only module that knows the key layout.

Standalone/Sentinel layout (`KeyLayout`, wire-compatible with the TypeScript original):
  value  = prefix + key
  lock   = prefix + key + ":lock"    (the lock's value is the holder's token)
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.crc import key_slot

from bantai.errors import InvalidKeyError, InvalidOptionError
from bantai.storage.inputs import LOCK_SUFFIX


class KeyLayout:
    """Maps (already checked) key bytes to Redis keys and groups keys per round trip."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def value_key(self, key: bytes) -> bytes:
        """Where the value of `key` lives."""
        return self.prefix + key

    def lock_key(self, key: bytes) -> bytes:
        """Where the lock of `key` lives (it holds the holder's token)."""
        return self.prefix + key + LOCK_SUFFIX

    def groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indices of `keys` that one command may touch together. On a single server that
        is all of them; a cluster layout groups them by hash slot."""
        return [list(range(len(keys)))] if keys else []


class ClusterKeyLayout(KeyLayout):
    """Redis Cluster layout: the key is a hash tag, so a value, its lock and a limiter's
    window keys always live in one slot (a script touching them never gets CROSSSLOT):

      value = prefix + "{" + key + "}"
      lock  = prefix + "{" + key + "}:lock"

    This differs from the standalone layout (and from the TypeScript original, which has
    no cluster support): a Node service sharing the data must use the same keys.

    Redis ignores an empty tag (`{}`) and then hashes the whole key, which would put a
    value and its lock in different slots: a key starting with `}` (when the prefix has
    no `{`) and a prefix whose first `{` is followed by `}` are refused. A prefix holding
    a tag of its own (`app{x}:`) is allowed: every key then lives in that one slot."""

    __slots__ = ("_tag_in_prefix",)

    def __init__(self, prefix: bytes) -> None:
        opening = prefix.find(b"{")
        if opening != -1 and prefix[opening + 1 : opening + 2] == b"}":
            raise InvalidOptionError(
                f"prefix {prefix!r} starts an empty hash tag '{{}}', which Redis Cluster "
                "ignores: a value and its lock would land in different slots"
            )
        super().__init__(prefix)
        self._tag_in_prefix = opening != -1

    def value_key(self, key: bytes) -> bytes:
        """`prefix{key}`: the key is the hash tag."""
        if not key and not self._tag_in_prefix:
            raise InvalidKeyError(
                "the empty key cannot be stored on Redis Cluster: its hash tag would be "
                "empty, putting the value and its lock in different slots"
            )
        if key[:1] == b"}" and not self._tag_in_prefix:
            raise InvalidKeyError(
                f"key {key!r} starts with '}}': on Redis Cluster its hash tag would be "
                "empty, putting the value and its lock in different slots"
            )
        return self.prefix + b"{" + key + b"}"

    def lock_key(self, key: bytes) -> bytes:
        """`prefix{key}:lock`: in the value's slot."""
        return self.value_key(key) + LOCK_SUFFIX

    def groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indices of `keys` grouped by hash slot (one command per group)."""
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(index)
        return list(by_slot.values())
