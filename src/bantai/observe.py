"""Observability: an `Instrumentation` hook interface, the one place the library reports
what it does — operations (start, end, outcome), lock waits, and what the round-trip
policy did on the way (redirects, script reloads, reconnects, resends, retries) — and
DEBUG logging on the ``bantai`` logger. Values are never reported or logged.

Zero cost when unused: a storage built without instrumentation runs its plain methods;
only the slow paths (a busy lock, an error reply, a lost connection) call `lock_waited` /
`event`, which look for an observed operation in a context variable (per thread and per
asyncio task) and log at DEBUG when enabled.

`bantai.otel` turns these hooks into OpenTelemetry spans and metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, NamedTuple

from bantai.errors import (
    InvalidInputError,
    LockLostError,
    LockTimeoutError,
    StorageClosedError,
    StoredValueError,
    WriteOutcomeUnknownError,
)

log = logging.getLogger("bantai")

# Events the library reports (`Instrumentation.event` names).
LOCK_WAIT = "lock_wait"  # a busy lock: the attempt pauses (attributes: pause_s)
LINE_WAIT = "line_wait"  # waited in this process's line for a key (attributes: wait_s)
SCRIPT_RELOAD = "script_reload"  # NOSCRIPT: the script is loaded and the command resent
REDIRECT = "redirect"  # MOVED / ASK (attributes: kind, slot, to)
RETRY_LATER = "retry_later"  # TRYAGAIN / CLUSTERDOWN / LOADING: a pause, then resent
RECONNECT = "reconnect"  # READONLY (failover) or a dead connection: a new connection
RESEND = "resend"  # a read (or an unsent command) resent once on a new connection


class OperationStart(NamedTuple):
    """What an operation is about to do: `operation` (the method: get, set, update,
    get_many, consume, ...), how many keys, and where (what the client was configured
    with; a cluster names its default node)."""

    operation: str
    key_count: int
    server_address: str | None
    server_port: int | None
    database: int | None


class OperationEnd(NamedTuple):
    """How it ended: `outcome` (see `outcome_of`), the exception if it raised, how long it
    took, and how long it waited for busy locks (Redis lock retries and this process's
    line) with how many retries."""

    operation: str
    key_count: int
    outcome: str
    error: BaseException | None
    duration_s: float
    lock_wait_s: float
    lock_retries: int


class Instrumentation:
    """Hooks a storage calls for every operation (pass one as the `instrumentation` option
    of a Redis storage, or `set_default_instrumentation` for storages created afterwards).
    Subclass and override what you need; here every hook does nothing. Hooks run on the
    caller's thread or task and should be quick; an exception from a hook is logged and
    ignored, never raised into the operation."""

    def start(self, operation: OperationStart) -> Any:
        """An operation starts. Return anything (a span, a timer): it is handed back to
        `event` and `end`."""
        return None

    def event(self, context: Any, name: str, attributes: Mapping[str, Any]) -> None:
        """Something happened during the operation (`LOCK_WAIT`, `SCRIPT_RELOAD`,
        `REDIRECT`, ...)."""

    def end(self, context: Any, result: OperationEnd) -> None:
        """The operation ended (returned or raised)."""

    def local_cache(self, stats: Callable[[], Any], operation: OperationStart) -> None:
        """A storage with a `local_cache` was created (called once). `stats()` returns its
        counters now (a `bantai.CacheStats`: hits, misses, invalidations, evictions,
        flushes, entries), or None once the storage is gone; `operation` names its
        server (its `operation` is "local_cache"). Read it when metrics are collected."""


def outcome_of(error: BaseException | None) -> str:
    """An operation's outcome as one word: ok, lock_timeout, lock_lost, outcome_unknown,
    invalid_input, stored_value_error, closed, timeout, connection_error, cancelled, or
    error."""
    if error is None:
        return "ok"
    for kind, word in _OUTCOMES:
        if isinstance(error, kind):
            return word
    name = type(error).__name__
    if name == "CancelledError":
        return "cancelled"
    if name == "TimeoutError":
        return "timeout"
    if "ConnectionError" in name:
        return "connection_error"
    return "error"


_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (LockTimeoutError, "lock_timeout"),
    (LockLostError, "lock_lost"),
    (WriteOutcomeUnknownError, "outcome_unknown"),
    (InvalidInputError, "invalid_input"),
    (StoredValueError, "stored_value_error"),
    (StorageClosedError, "closed"),
)


class Observation:
    """One observed operation in flight (the context variable's value)."""

    __slots__ = ("context", "hooks", "lock_retries", "lock_wait_s", "start", "started", "token")

    def __init__(self, hooks: Instrumentation, start: OperationStart) -> None:
        self.hooks = hooks
        self.start = start
        self.context: Any = None
        self.lock_wait_s = 0.0
        self.lock_retries = 0
        self.token: Any = None
        self.started = time.perf_counter()


_current: ContextVar[Observation | None] = ContextVar("bantai_observation", default=None)
_default: list[Instrumentation | None] = [None]


def set_default_instrumentation(hooks: Instrumentation | None) -> None:
    """Instrumentation for Redis storages created from now on without their own (None:
    none). Storages already created keep what they had."""
    if hooks is not None and not isinstance(hooks, Instrumentation):
        from bantai.errors import InvalidOptionError

        raise InvalidOptionError(f"instrumentation must be an Instrumentation, not {hooks!r}")
    _default[0] = hooks


def default_instrumentation() -> Instrumentation | None:
    """What `set_default_instrumentation` set."""
    return _default[0]


def begin(hooks: Instrumentation, start: OperationStart) -> Observation:
    """Start observing an operation on this thread / task (hand the result to `finish`)."""
    observation = Observation(hooks, start)
    try:
        observation.context = hooks.start(start)
    except Exception:
        log.exception("instrumentation hook start failed (ignored)")
    observation.token = _current.set(observation)
    return observation


def finish(observation: Observation, error: BaseException | None) -> None:
    """End the observation `begin` started (always, also when the operation raised)."""
    _current.reset(observation.token)
    start = observation.start
    result = OperationEnd(
        start.operation,
        start.key_count,
        "ok" if error is None else outcome_of(error),
        error,
        time.perf_counter() - observation.started,
        observation.lock_wait_s,
        observation.lock_retries,
    )
    try:
        observation.hooks.end(observation.context, result)
    except Exception:
        log.exception("instrumentation hook end failed (ignored)")


def lock_waited(pause_s: float) -> None:
    """A busy lock: the attempt pauses `pause_s` before it tries again (slow path)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("lock busy: retrying in %.1f ms", pause_s * 1000)
    observation = _current.get()
    if observation is not None:
        observation.lock_wait_s += pause_s
        observation.lock_retries += 1
        _call(observation.hooks.event, observation.context, LOCK_WAIT, {"pause_s": pause_s})


def line_waited(wait_s: float) -> None:
    """Waited `wait_s` in this process's line for a key before competing for its lock."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("waited %.1f ms in line for a key", wait_s * 1000)
    observation = _current.get()
    if observation is not None:
        observation.lock_wait_s += wait_s
        _call(observation.hooks.event, observation.context, LINE_WAIT, {"wait_s": wait_s})


def event(name: str, **attributes: Any) -> None:
    """The round-trip policy or a driver did something worth knowing (slow path)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s", name, " ".join(f"{k}={v}" for k, v in attributes.items()))
    observation = _current.get()
    if observation is not None:
        _call(observation.hooks.event, observation.context, name, attributes)


def _call(hook: Any, *args: Any) -> Any:
    """A hook's exception is logged, never raised into the operation."""
    try:
        return hook(*args)
    except Exception:
        log.exception("instrumentation hook %s failed (ignored)", getattr(hook, "__name__", hook))
        return None


__all__ = [
    "LINE_WAIT",
    "LOCK_WAIT",
    "RECONNECT",
    "REDIRECT",
    "RESEND",
    "RETRY_LATER",
    "SCRIPT_RELOAD",
    "Instrumentation",
    "OperationEnd",
    "OperationStart",
    "default_instrumentation",
    "outcome_of",
    "set_default_instrumentation",
]
