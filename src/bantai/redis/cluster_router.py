"""Routing for Redis Cluster: which node each command goes to, by the hash slot of its
first key, from redis-py's slot map (`RedisCluster.nodes_manager`, reached through
`_compat`; the sync and the asyncio client alike). No I/O here: the round-trip policy
(`round_trip`) decides when the map must be refreshed, the drivers refresh it.

The operations already group keys by slot (`ClusterKeyLayout`), so no command ever
crosses slots; commands without a key (SCRIPT, CONFIG) go to the default node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from bantai.redis._compat import node_at, slot_lookup
from bantai.redis.round_trip import Command

_KEYLESS = frozenset({b"SCRIPT", b"CONFIG", b"ASKING", b"PING"})


def first_key(command: Command) -> bytes | None:
    """The key that decides where `command` goes (None: any node will do)."""
    name = command[0]
    if name in (b"EVALSHA", b"EVAL"):
        return command[3] if int(command[2]) > 0 else None  # type: ignore[return-value]
    if name in _KEYLESS or len(command) < 2:
        return None
    return command[1]  # type: ignore[return-value]


class ClusterRouter:
    """A `round_trip.Router` over a redis-py cluster client's slot map."""

    __slots__ = ("client", "stale")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.stale = False

    def route(
        self, commands: Sequence[Command], indices: Sequence[int]
    ) -> list[tuple[Any, list[int]]]:
        """Group `indices` of `commands` by the node that owns each one's first key."""
        routes: dict[str, tuple[Any, list[int]]] = {}
        node_for_slot = slot_lookup(self.client)
        for index in indices:
            key = first_key(commands[index])
            node = self.client.get_default_node() if key is None else node_for_slot(key_slot(key))
            routes.setdefault(node.name, (node, []))[1].append(index)
        return list(routes.values())

    def node_at(self, host: str, port: int) -> Any:
        """The known node at host:port (an ASK target), or None."""
        return node_at(self.client, host, port)
