"""Runs operations against Redis Cluster through redis-py's `RedisCluster` (its slot map,
nodes and per-node connection pools), one `SyncDriver` per node.

Every command goes to the node that owns its first key's slot; the operations already
group keys by slot (`ClusterKeyLayout`), so no command crosses slots. A MOVED / ASK /
TRYAGAIN / CLUSTERDOWN reply means the command did not run: the slot map is refreshed and
only those commands are resent (a few times at most) — also for commits, which stay
exactly-once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from bantai.redis.operations import Command, Operation, RoundTrip
from bantai.redis.sync_driver import SyncDriver
from bantai.storage.steps import run_sync

R = TypeVar("R")

_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
_KEYLESS = {b"MULTI", b"EXEC", b"SCRIPT", b"CONFIG"}


def first_key(command: Command) -> bytes | None:
    name = command[0]
    if name in (b"EVALSHA", b"EVAL"):
        return command[3] if int(command[2]) > 0 else None  # type: ignore[return-value]
    if name in _KEYLESS or len(command) < 2:
        return None
    return command[1]  # type: ignore[return-value]


def redirected(replies: Sequence[Any], indices: list[int]) -> list[int]:
    """Which commands were redirected (MOVED / ASK / TRYAGAIN / CLUSTERDOWN): they did not
    run and may be resent once the slot map is refreshed."""
    return [i for i in indices if isinstance(replies[i], _REDIRECTS)]


def route(
    client: Any, commands: Sequence[Command], indices: list[int]
) -> list[tuple[Any, list[int]]]:
    """Group commands by the node that owns their first key's slot (a MULTI goes with the
    command after it, an EXEC with the one before; key-less commands to the default node).
    Works with redis-py's sync and asyncio RedisCluster alike."""
    routes: dict[str, tuple[Any, list[int]]] = {}
    nodes = client.nodes_manager
    node: Any = None
    for position, index in enumerate(indices):
        name = commands[index][0]
        key = first_key(commands[index])
        if key is None and name == b"MULTI" and position + 1 < len(indices):
            key = first_key(commands[indices[position + 1]])
        if key is not None:
            node = nodes.get_node_from_slot(key_slot(key))
        elif node is None or name != b"EXEC":
            node = client.get_default_node()
        routes.setdefault(node.name, (node, []))[1].append(index)
    return list(routes.values())


@dataclass(frozen=True, slots=True)
class NodeTrip:
    """Send `step` to `node` (a step of `cluster_round_trip`)."""

    node: Any
    step: RoundTrip


@dataclass(frozen=True, slots=True)
class RefreshSlots:
    """Reload the slot map, then wait `seconds` (a step of `cluster_round_trip`)."""

    seconds: float


def cluster_round_trip(
    client: Any, step: RoundTrip
) -> Generator[NodeTrip | RefreshSlots, Any, list[Any]]:
    """One round trip on a cluster, without I/O: a sub-round trip per node, then resend
    what was redirected (it did not run) after refreshing the slot map, a few times."""
    replies: list[Any] = [None] * len(step.commands)
    pending = list(range(len(step.commands)))
    for attempt in range(5):
        for node, indices in route(client, step.commands, pending):
            sub = RoundTrip([step.commands[i] for i in indices], step.retry_safe)
            got = yield NodeTrip(node, sub)
            for index, reply in zip(indices, got, strict=True):
                replies[index] = reply
        pending = redirected(replies, pending)
        if not pending:
            break
        # The slot moved (resharding, failover): none of these ran. Learn the new map.
        yield RefreshSlots(0.05 * attempt)
    return replies


class ClusterDriver:
    def __init__(self, client: RedisCluster, *, busy_poll_us: int = 0) -> None:
        self._client: Any = client
        self._busy_poll_us = busy_poll_us
        self._nodes: dict[str, SyncDriver] = {}

    def run(self, op: Operation[R]) -> R:
        return run_sync(op, self.round_trip)

    def call(self, command: Command) -> Any:
        return self.round_trip(RoundTrip((command,)))[0]

    def round_trip(self, step: RoundTrip) -> list[Any]:
        trip = cluster_round_trip(self._client, step)
        value: Any = None
        while True:
            try:
                action = trip.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(action, NodeTrip):
                value = self._driver(action.node).round_trip(action.step)
            else:
                self._client.nodes_manager.initialize()
                time.sleep(action.seconds)
                value = None

    def _driver(self, node: Any) -> SyncDriver:
        driver = self._nodes.get(node.name)
        if driver is None:
            redis_client = self._client.get_redis_connection(node)
            driver = self._nodes[node.name] = SyncDriver(
                redis_client, busy_poll_us=self._busy_poll_us
            )
        return driver

    def close(self) -> None:
        for driver in self._nodes.values():
            driver.close()
        self._nodes.clear()


class AsyncClusterDriver:
    """The asyncio twin: one auto-pipelined channel per cluster node, built on a connection
    borrowed from redis-py's asyncio `ClusterNode`."""

    def __init__(self, client: Any) -> None:
        from bantai.redis.async_driver import AsyncDriver  # asyncio-only import

        self._client = client
        self._driver_type = AsyncDriver
        self._nodes: dict[str, Any] = {}
        self._ready = False

    async def run(self, op: Operation[R]) -> R:
        from bantai.storage.steps import run_async

        return await run_async(op, self.round_trip)

    async def call(self, command: Command) -> Any:
        return (await self.round_trip(RoundTrip((command,))))[0]

    async def round_trip(self, step: RoundTrip) -> list[Any]:
        if not self._ready:
            await self._client.initialize()
            self._ready = True
        trip = cluster_round_trip(self._client, step)
        value: Any = None
        while True:
            try:
                action = trip.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(action, NodeTrip):
                value = await self._driver(action.node).round_trip(action.step)
            else:
                await self._client.nodes_manager.initialize()
                await asyncio.sleep(action.seconds)
                value = None

    def _driver(self, node: Any) -> Any:
        driver = self._nodes.get(node.name)
        if driver is None:

            async def acquire() -> Any:
                conn = node.acquire_connection()
                await conn.connect()
                return conn

            async def release(conn: Any) -> None:
                node.release(conn)

            driver = self._nodes[node.name] = self._driver_type(acquire=acquire, release=release)
        return driver

    async def close(self) -> None:
        for driver in self._nodes.values():
            await driver.close()
        self._nodes.clear()
