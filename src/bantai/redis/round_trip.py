"""The round-trip policy: what to do when a round trip does not simply succeed. Written
once, without I/O, and driven by every driver (sync, asyncio, single server, Sentinel,
Cluster), which only move bytes.

An operation yields a `RoundTrip` (commands that go out back to back, one reply each).
`round_trip(step, router)` turns it into *actions* for the driver — `Exchange` (send these
commands to that node, return their replies), `Sleep`, `RefreshSlots`, `SlotMoved`,
`Reconnect` — and decides, from what comes back, what happens next.

Theory of operation (docs/design.md has the long form):

- A reply that proves the command **did not run** makes it safe to resend, writes
  included: NOSCRIPT (the script cache was emptied: load the script first), MOVED (the slot
  has a new owner: update the map), ASK (the slot is migrating: resend to the target with
  ASKING in front), TRYAGAIN / CLUSTERDOWN / LOADING (a migration's keys are split, the
  cluster or the server is not ready: wait with a growing pause), READONLY (a failed-over
  primary became a replica: drop its connections, wait, resend). At most `MAX_ATTEMPTS`
  rounds; what is still redirected after that surfaces as the error reply it is.
- A transport failure (connection lost, timeout) leaves a command's fate unknown, unless
  the driver proves nothing of the exchange left this client (`NotSent`: the connection
  could not be opened, or was found closed before the write). Then it is resent once —
  and if it still cannot be sent while another node's part of the same write already ran,
  the write as a whole is reported as `ReplyLost` (partly applied is not "did not run").
  Otherwise a read (`retry_safe`) is resent once after a `ConnectionError` — never after a
  timeout, which would double the caller's wait — and a write is **never** resent: the
  operation gets `ReplyLost` and reports an outcome-unknown error. A write resent after
  its first copy ran could overwrite another client's acknowledged write.
- On a cluster, a transport failure marks the slot map stale (the node may have failed
  over); the next round trip reloads it first.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.observe import RECONNECT, REDIRECT, RESEND, RETRY_LATER, SCRIPT_RELOAD, event
from bantai.redis import scripts
from bantai.steps import Sleep

Arg = bytes | str | int
Command = tuple[Arg, ...]

# Rounds of redirects / waits before an error reply is surfaced. With the pause doubling
# from 5 ms to 250 ms this waits up to ~2.1 s in total: longer than a slot's migration or
# a Sentinel promotion usually takes, short enough to stay a bounded call.
MAX_ATTEMPTS = 14
_FIRST_PAUSE = 0.005
_MAX_PAUSE = 0.25

ASKING: Command = (b"ASKING",)


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """The step an operation yields: send `commands` back to back, one reply each (error
    replies arrive as exception instances, in place, so a batch reads past them)."""

    commands: Sequence[Command]
    # True when sending the commands twice is harmless (reads; lock acquire and release,
    # which check the token): a driver may resend them once on a broken connection. False
    # for anything that writes a value: a lost reply is reported as `ReplyLost`.
    retry_safe: bool = True
    # Cleanup after a timeout or a cancellation (a lock release): nobody waits for it. The
    # asyncio driver queues it on a connection that is still open, the sync driver skips it
    # (the server did not answer in time); the lock's TTL is the backstop either way.
    background: bool = False
    # False: a MOVED / ASK reply is the answer (the slot map is still updated) instead of
    # being followed. For reads whose commands must run together on one connection (a
    # local-cache fill: tracking set up, then the read it tracks).
    redirects: bool = True


class ReplyLost(Exception):
    """Thrown into an operation: a write round trip was (possibly) sent, but its replies
    were lost. `__cause__` is the connection error or timeout."""


class NotSent(Exception):
    """Raised by a driver for an `Exchange`: nothing of it left this client (the connection
    could not be opened, or the driver found it dead before writing). `__cause__` is why.
    `resend` is False when trying again at once is pointless (a timeout, no free
    connection): the cause is then raised."""

    def __init__(self, resend: bool = True) -> None:
        super().__init__()
        self.resend = resend


def not_sent(cause: BaseException, *, resend: bool) -> NotSent:
    """A `NotSent` caused by `cause`, for raising outside an `except` block."""
    error = NotSent(resend)
    error.__cause__ = cause
    return error


# --- actions: what the policy asks a driver to do -----------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """Send `commands` to `node` (None: the only server) in one write; return one reply
    per command. `write`: the commands may write, so a driver must not send them on a
    connection it has not checked since it was last used."""

    node: Any
    commands: Sequence[Command]
    write: bool


@dataclass(frozen=True, slots=True)
class RefreshSlots:
    """Reload the cluster's slot map (after CLUSTERDOWN or a failed node)."""


@dataclass(frozen=True, slots=True)
class SlotMoved:
    """Record a MOVED redirect in the slot map (no full reload)."""

    error: MovedError


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Drop every connection to `node`: it answered READONLY (it is a replica now)."""

    node: Any


Action = Exchange | RefreshSlots | SlotMoved | Reconnect | Sleep


class Router(Protocol):
    """Where commands go. A single server (or Sentinel-managed primary) is one node;
    `cluster_router.ClusterRouter` routes by hash slot."""

    stale: bool

    def route(
        self, commands: Sequence[Command], indices: Sequence[int]
    ) -> list[tuple[Any, list[int]]]:
        """Group `indices` of `commands` by the node each must go to."""
        ...

    def node_at(self, host: str, port: int) -> Any:
        """The known node at host:port (an ASK target), or None."""
        ...


class OneServer:
    """The router of a single server: every command goes to node None. Its map is never
    stale (a failed-over Sentinel primary is found again when the pool reconnects)."""

    __slots__ = ()

    @property
    def stale(self) -> bool:
        """Never stale (a failed-over Sentinel primary is found again when the pool
        reconnects)."""
        return False

    @stale.setter
    def stale(self, value: bool) -> None:
        """Never stale (a failed-over Sentinel primary is found again when the pool
        reconnects)."""
        pass

    def route(
        self, commands: Sequence[Command], indices: Sequence[int]
    ) -> list[tuple[Any, list[int]]]:
        """Everything goes to the one server (node None)."""
        return [(None, list(indices))]

    def node_at(self, host: str, port: int) -> Any:
        """No ASK on a single server."""
        return None


ONE_SERVER = OneServer()


def _node_name(node: Any) -> str | None:
    return None if node is None else str(node.name)


def round_trip(step: RoundTrip, router: Router) -> Generator[Action, Any, list[Any]]:
    """Run one round trip's policy; returns one reply per command of `step`."""
    commands = step.commands
    write = not step.retry_safe
    replies: list[Any] = [None] * len(commands)
    pending = list(range(len(commands)))
    asking: dict[int, Any] = {}  # command index -> the node that asked for it (ASK)
    to_load: dict[str | None, dict[bytes, None]] = {}  # node name -> scripts it lacks
    resent = False  # the one resend a transport failure may earn
    applied = False  # a write of this round trip already ran on some node
    for attempt in range(MAX_ATTEMPTS):
        if router.stale:
            router.stale = False
            yield RefreshSlots()
        retry: list[int] = []
        pause = False
        for node, indices in _plan(router, commands, pending, asking):
            loads = [
                (b"SCRIPT", b"LOAD", scripts.SCRIPTS_BY_SHA[sha].source)
                for sha in to_load.pop(_node_name(node), ())
            ]
            batch = loads + _with_asking(commands, indices, asking)
            try:
                got = yield Exchange(node, batch, write)
            except NotSent as exc:
                router.stale = True  # a cluster node we cannot reach may have failed over
                if resent or not exc.resend:
                    cause = exc.__cause__ or exc
                    if applied:  # other nodes' part of this write ran: it is not all-or-none
                        raise ReplyLost() from cause
                    raise cause from cause.__cause__
                resent = True
                event(RESEND, reason="not sent", error=type(exc.__cause__ or exc).__name__)
                retry += indices
                continue
            except (RedisConnectionError, RedisTimeoutError) as exc:
                router.stale = True  # a cluster node may have failed over: reload the map
                if write:
                    raise ReplyLost() from exc
                if resent or type(exc) is not RedisConnectionError:
                    raise
                resent = True
                event(RESEND, reason="connection lost before the reply", error=type(exc).__name__)
                retry += indices
                continue
            for reply in got[: len(loads)]:
                if isinstance(reply, Exception):
                    raise reply  # SCRIPT LOAD refused (e.g. ACL): nothing to retry
            answers = _without_asking(got[len(loads) :], indices, asking)
            applied = applied or (write and not all(isinstance(r, Exception) for r in answers))
            for index, reply in zip(indices, answers, strict=True):
                replies[index] = reply
                if not isinstance(reply, Exception):
                    continue
                if isinstance(reply, NoScriptError):
                    sha = bytes(commands[index][1])  # type: ignore[arg-type]
                    to_load.setdefault(_node_name(node), {})[sha] = None
                    event(SCRIPT_RELOAD, sha=sha[:8].decode(), node=_node_name(node))
                elif isinstance(reply, MovedError):  # before AskError: it is a subclass
                    asking.pop(index, None)
                    event(REDIRECT, kind="moved", slot=reply.slot_id, to=reply.node_addr)
                    yield SlotMoved(reply)
                    if not step.redirects:
                        continue  # the answer, as asked

                    # A second MOVED in one round trip: the nodes disagree while a slot's
                    # new owner is being announced (a migration just ended); wait a moment.
                    pause = pause or attempt > 0
                elif isinstance(reply, AskError):
                    event(REDIRECT, kind="ask", slot=reply.slot_id, to=reply.node_addr)
                    if not step.redirects:
                        continue
                    target = router.node_at(reply.host, reply.port)
                    if target is None:
                        asking.pop(index, None)
                        router.stale = True
                    else:
                        asking[index] = target
                elif isinstance(reply, (TryAgainError, ClusterDownError, BusyLoadingError)):
                    router.stale = router.stale or isinstance(reply, ClusterDownError)
                    event(RETRY_LATER, reply=type(reply).__name__, attempt=attempt + 1)
                    pause = True
                elif isinstance(reply, ReadOnlyError):
                    event(RECONNECT, reason="READONLY (the node is a replica now)")
                    yield Reconnect(node)
                    pause = True
                else:
                    continue  # an error reply that is the answer (WRONGTYPE, OOM, ...)
                retry.append(index)
        if not retry or attempt == MAX_ATTEMPTS - 1:
            break  # done, or still redirected after every attempt: the error replies surface
        pending = retry
        if pause:
            yield Sleep(min(_MAX_PAUSE, _FIRST_PAUSE * 2**attempt))
    return replies


def answered(
    policy: Generator[Action, Any, list[Any]], replies: Any, error: BaseException | None
) -> Generator[Action, Any, list[Any]]:
    """`policy` (a fresh `round_trip` on one server) with its first action already done
    by a driver's fast path: that action is always the exchange of every command with the
    one server, answered here with `replies`, or failed with `error`. Drivers call the
    policy only when that exchange failed or brought an error reply."""
    first = next(policy)
    assert type(first) is Exchange and first.node is None
    try:
        action = policy.throw(error) if error is not None else policy.send(replies)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    while True:
        try:
            value = yield action
        except BaseException as exc:
            try:
                action = policy.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                action = policy.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


def _plan(
    router: Router, commands: Sequence[Command], pending: list[int], asking: dict[int, Any]
) -> list[tuple[Any, list[int]]]:
    """Where each pending command goes: its ASK target, else where the router says."""
    if not asking:
        return router.route(commands, pending)
    routed = [i for i in pending if i not in asking]
    plan = router.route(commands, routed) if routed else []
    by_name = {_node_name(node): (node, indices) for node, indices in plan}
    for index in pending:
        if index in asking:
            node = asking[index]
            by_name.setdefault(_node_name(node), (node, []))[1].append(index)
    return list(by_name.values())


def _with_asking(
    commands: Sequence[Command], indices: list[int], asking: dict[int, Any]
) -> list[Command]:
    if not asking:
        return [commands[i] for i in indices]
    batch: list[Command] = []
    for i in indices:
        if i in asking:
            batch.append(ASKING)  # the flag holds for the next command only
        batch.append(commands[i])
    return batch


def _without_asking(got: Sequence[Any], indices: list[int], asking: dict[int, Any]) -> list[Any]:
    if not asking:
        return list(got)
    out: list[Any] = []
    position = 0
    for i in indices:
        if i in asking:
            position += 1  # the ASKING reply (+OK)
        out.append(got[position])
        position += 1
    return out


__all__ = [
    "ASKING",
    "MAX_ATTEMPTS",
    "ONE_SERVER",
    "Action",
    "Command",
    "Exchange",
    "NotSent",
    "OneServer",
    "Reconnect",
    "RefreshSlots",
    "ReplyLost",
    "RoundTrip",
    "Router",
    "SlotMoved",
    "answered",
    "not_sent",
    "round_trip",
]
