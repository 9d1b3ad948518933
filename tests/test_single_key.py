"""The single-key hot paths (`redis/single_key.py`: `update_one`, `consume_one`) take the
same steps and give the same results and errors as the generic operations
(`operations.update`, `operations.consume`), for random replies and updaters — and the
compiled twin (`_single_key`, the same source compiled by Cython) agrees with both.

Each run answers steps from a scenario (what the acquire, the updater, the commit and the
release do) and records a normalised trace: the round trips sent (the token replaced by a
placeholder, the retry/background flags kept), the sleeps, the updater calls, and the
outcome (the value returned, or the exception's type and message)."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai import UpdateResult
from bantai.codec import codec_for
from bantai.ratelimit.algorithms import RateLimitConfig
from bantai.redis import operations as ops
from bantai.redis import scripts
from bantai.redis import single_key as pure
from bantai.redis.keys import ClusterKeyLayout, KeyLayout
from bantai.redis.round_trip import ReplyLost, RoundTrip
from bantai.steps import Call, Sleep
from bantai.storage.options import RedisStorageOptions
from tests.conftest import _compiled
from tests.models import Counter

try:
    from bantai.redis import _single_key as compiled
except ImportError:  # only where the extension was not built
    compiled = None  # type: ignore[assignment]

TWINS = [pure] if compiled is None else [pure, compiled]
TOKEN = b"0123456789abcdef0123456789abcdef"
assert _compiled is None or compiled is not None  # built together


def _lost(cause: BaseException) -> ReplyLost:
    error = ReplyLost()
    error.__cause__ = cause
    return error


# What a step can be answered with (an exception class is thrown in, built fresh each time).
ACQUIRES = [
    ("taken", [[[1, b'{"count":4}']]]),
    ("absent", [[[1]]]),
    ("corrupt", [[[1, b"not json"]]]),
    ("wrongtype", [ResponseError("WRONGTYPE Operation against a key holding the wrong kind")]),
    ("oom", [ResponseError("OOM command not allowed when used memory > 'maxmemory'")]),
    ("reset", RedisConnectionError),
    ("timeout", RedisTimeoutError),
    ("cancelled", asyncio.CancelledError),
]
UPDATERS = [
    ("inc", lambda c: {"value": {"count": (c.count if c else 0) + 1}}),
    ("inc-ttl", lambda c: {"value": {"count": 1}, "ttl_ms": 500}),
    ("result", lambda c: UpdateResult({"count": 2}, ttl_ms=50)),
    ("none", lambda c: None),
    ("invalid", lambda c: {"value": {"count": -1}}),
    ("odd-keys", lambda c: {"value": {"count": 1}, "nope": 1}),
    ("raises", lambda c: {}["missing"]),
    ("model", lambda c: Counter(count=9)),
]
COMMITS = [
    ("ok", [[]]),
    ("lost-lock", [[1]]),
    ("oom", [ResponseError("OOM command not allowed when used memory > 'maxmemory'")]),
    ("reply-lost", lambda: _lost(RedisConnectionError("reset"))),
    ("reply-timeout", lambda: _lost(RedisTimeoutError("timed out"))),
    ("cancelled", asyncio.CancelledError),
]
RELEASES = [("ok", [1]), ("fails", RedisConnectionError)]


@dataclass
class Scenario:
    busy: int
    acquire: Any
    updater: Any
    commit: Any
    release: Any
    lock_timeout_ms: int
    cluster: bool


scenarios = st.builds(
    Scenario,
    busy=st.integers(0, 3),
    acquire=st.sampled_from(ACQUIRES),
    updater=st.sampled_from(UPDATERS),
    commit=st.sampled_from(COMMITS),
    release=st.sampled_from(RELEASES),
    lock_timeout_ms=st.sampled_from([0, 5000]),
    cluster=st.booleans(),
)


def _answer(spec: Any) -> tuple[Any, BaseException | None]:
    if isinstance(spec, type) and issubclass(spec, BaseException):
        return None, spec("scripted")
    if callable(spec):
        return None, spec()
    return spec, None


def _normalise(value: Any, token: bytes | None) -> Any:
    if isinstance(value, bytes) and token is not None and value == token:
        return b"<token>"
    if isinstance(value, (list, tuple)):
        return [_normalise(v, token) for v in value]
    return value


def _drive(gen: Generator[Any, Any, Any], scenario: Scenario) -> list[Any]:
    trace: list[Any] = []
    busy = scenario.busy
    token: bytes | None = None
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = gen.send(value) if error is None else gen.throw(error)
        except StopIteration as stop:
            trace.append(("return", _normalise(stop.value, token)))
            return trace
        except BaseException as exc:
            trace.append(("raise", type(exc).__name__, str(exc)))
            return trace
        value, error = None, None
        if type(step) is Sleep:
            trace.append(("sleep",))
        elif type(step) is Call:
            trace.append(("call", _normalise(step.args, token)))
            try:
                value = step.fn(*step.args)
            except BaseException as exc:
                error = exc
        else:
            assert type(step) is RoundTrip
            sha = step.commands[0][1]
            if sha == scripts.ACQUIRE.sha and token is None:
                token = step.commands[0][5]
            trace.append(
                ("rt", _normalise(list(step.commands), token), step.retry_safe, step.background)
            )
            if sha == scripts.ACQUIRE.sha:
                if busy:
                    busy -= 1
                    value = [[[0]]]
                else:
                    value, error = _answer(scenario.acquire[1])
            elif sha == scripts.COMMIT.sha:
                value, error = _answer(scenario.commit[1])
            elif sha == scripts.RELEASE.sha:
                value, error = _answer(scenario.release[1])
            else:  # pragma: no cover - no other round trip exists here
                raise AssertionError(step)


def _setup(scenario: Scenario) -> ops.Setup[Any]:
    layout = ClusterKeyLayout(b"p:") if scenario.cluster else KeyLayout(b"p:")
    options = RedisStorageOptions(
        lock_timeout_ms=scenario.lock_timeout_ms, lock_ttl_ms=10_000, lock_retry_ms=20
    )
    return ops.Setup(layout, codec_for(Counter), options, {"eviction-policy"})


@settings(max_examples=400, deadline=None)
@given(scenarios)
def test_update_one_behaves_like_the_generic_update(scenario: Scenario) -> None:
    updater = scenario.updater[1]
    generic = _drive(ops.update(_setup(scenario), "k", updater), scenario)
    for twin in TWINS:
        fast = _drive(twin.update_one(_setup(scenario), "k", updater, TOKEN), scenario)
        assert fast == generic, twin.__name__


CONSUME_REPLIES = [
    ("allowed", [[1, 1, 4, 1_700_000_060_000]]),
    ("denied", [[1, 0, 0, 1_700_000_060_000]]),
    ("busy", [[0]]),
    ("other-window", [[2, 1_700_000_000_000, 1_700_000_001_234]]),
    ("error", [ResponseError("ERR something")]),
    ("reply-lost", lambda: _lost(RedisConnectionError("reset"))),
    ("timeout", RedisTimeoutError),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(CONSUME_REPLIES), min_size=1, max_size=5),
    st.sampled_from(["fixed-window", "sliding-window", "token-bucket"]),
    st.sampled_from([0, 1_700_000_000_500]),
    st.booleans(),
    st.sampled_from([0, 5000]),
)
def test_consume_one_behaves_like_the_generic_consume(
    replies: list[Any], kind: str, now: int, cluster: bool, lock_timeout_ms: int
) -> None:
    config = RateLimitConfig(kind, 5, 60_000, 1, None)  # type: ignore[arg-type]

    def run(gen: Generator[Any, Any, Any]) -> list[Any]:
        trace: list[Any] = []
        answers = list(replies)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                result = stop.value
                trace.append(("return", result.allowed, result.remaining, result.reset_at))
                return trace
            except BaseException as exc:
                trace.append(("raise", type(exc).__name__, str(exc)))
                return trace
            value, error = None, None
            if type(step) is Sleep:
                trace.append(("sleep",))
                continue
            trace.append(("rt", list(step.commands), step.retry_safe, step.background))
            spec = answers.pop(0) if answers else CONSUME_REPLIES[0]
            value, error = _answer(spec[1])

    scenario = Scenario(0, None, None, None, None, lock_timeout_ms, cluster)
    client_now = 1_700_000_900_000
    setup = _setup(scenario)
    generic = run(ops.consume(setup, config, "api", 1, now, client_now))
    generic.append(("learned clock offset", setup.clock_offset_ms))
    for twin in TWINS:
        setup = _setup(scenario)
        fast = run(twin.consume_one(setup, config, "api", 1, now, client_now))
        fast.append(("learned clock offset", setup.clock_offset_ms))
        assert fast == generic, twin.__name__


APPEND_REPLIES = [
    ("appended", [[1]]),
    ("busy", [[0]]),
    ("not-an-array", [[-1]]),
    ("wrongtype", [ResponseError("WRONGTYPE Operation against a key holding the wrong kind")]),
    ("reply-lost", lambda: _lost(RedisConnectionError("reset"))),
    ("timeout", RedisTimeoutError),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(APPEND_REPLIES), min_size=1, max_size=4),
    st.sampled_from([1, "not an int"]),
    st.booleans(),
    st.sampled_from([0, 5000]),
)
def test_append_one_behaves_like_the_generic_append(
    replies: list[Any], item: Any, cluster: bool, lock_timeout_ms: int
) -> None:
    def run(gen: Generator[Any, Any, Any]) -> list[Any]:
        trace: list[Any] = []
        answers = list(replies)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                trace.append(("return", stop.value))
                return trace
            except BaseException as exc:
                trace.append(("raise", type(exc).__name__, str(exc)))
                return trace
            value, error = None, None
            if type(step) is Sleep:
                trace.append(("sleep",))
                continue
            trace.append(("rt", list(step.commands), step.retry_safe, step.background))
            spec = answers.pop(0) if answers else APPEND_REPLIES[0]
            value, error = _answer(spec[1])

    def setup() -> ops.Setup[Any]:
        layout = ClusterKeyLayout(b"p:") if cluster else KeyLayout(b"p:")
        options = RedisStorageOptions(lock_timeout_ms=lock_timeout_ms, lock_ttl_ms=10_000)
        return ops.Setup(layout, codec_for(list[int]), options, {"eviction-policy"})

    generic = run(ops.append(setup(), "log", item))
    for twin in TWINS:
        assert run(twin.append_one(setup(), "log", item)) == generic, twin.__name__
