"""The round-trip policy and the operations, driven without a server (as h11 tests its
state machine): a script answers each action, and the test checks what is sent next.

These pin the rules that real-server tests can only provoke by luck: a write is never
resent once it may have left; a read is resent once after a connection error but never
after a timeout; only commands that provably did not run (NOSCRIPT, MOVED, ASK, TRYAGAIN,
READONLY, or `NotSent`) are resent; a partial multi-key acquire is released before
waiting; a cleanup after a timeout goes out in the background.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import pytest
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai import (
    LockTimeoutError,
    UpdateOutcomeUnknownError,
    WriteOutcomeUnknownError,
)
from bantai.codec import codec_for
from bantai.redis import operations as ops
from bantai.redis import scripts
from bantai.redis.cluster_router import first_key
from bantai.redis.keys import ClusterKeyLayout, KeyLayout
from bantai.redis.round_trip import (
    ASKING,
    MAX_ATTEMPTS,
    ONE_SERVER,
    Exchange,
    NotSent,
    Reconnect,
    RefreshSlots,
    ReplyLost,
    RoundTrip,
    SlotMoved,
    not_sent,
    round_trip,
)
from bantai.steps import Call, Sleep
from bantai.storage.options import RedisStorageOptions
from tests.models import Counter

GET_A = (b"GET", b"a")
GET_B = (b"GET", b"b")
SET_A = (b"SET", b"a", b"1")


class Script:
    """Drives a generator (a policy or an operation): each action it yields is recorded
    and answered by the next entry — a value to send in, or an exception to throw in."""

    def __init__(self, gen: Generator[Any, Any, Any]) -> None:
        self.gen = gen
        self.actions: list[Any] = []
        self._pending: Any = None
        self.result: Any = None
        self.done = False
        self._advance(lambda: next(gen))

    @property
    def last(self) -> Any:
        return self.actions[-1]

    def answer(self, value: Any) -> Script:
        assert not self.done, "the generator already finished"
        if isinstance(value, BaseException):
            self._advance(lambda: self.gen.throw(value))
        else:
            self._advance(lambda: self.gen.send(value))
        return self

    def _advance(self, step: Any) -> None:
        try:
            self.actions.append(step())
        except StopIteration as stop:
            self.done = True
            self.result = stop.value


def lost(cause: BaseException) -> BaseException:
    return cause


# --- the policy on one server -------------------------------------------------------------


def test_success_is_one_exchange() -> None:
    run = Script(round_trip(RoundTrip((GET_A, GET_B)), ONE_SERVER))
    assert run.last == Exchange(None, [GET_A, GET_B], write=False)
    run.answer([b"1", None])
    assert run.done and run.result == [b"1", None]


def test_a_write_is_never_resent_after_its_reply_was_lost() -> None:
    for failure in (RedisConnectionError("reset"), RedisTimeoutError("timed out")):
        run = Script(round_trip(RoundTrip((SET_A,), retry_safe=False), ONE_SERVER))
        assert run.last.write is True
        with pytest.raises(ReplyLost) as err:
            run.answer(failure)
        assert err.value.__cause__ is failure
        assert len(run.actions) == 1  # nothing sent again


def test_a_read_is_resent_once_after_a_connection_error() -> None:
    run = Script(round_trip(RoundTrip((GET_A,)), ONE_SERVER))
    run.answer(RedisConnectionError("reset"))
    assert run.last == Exchange(None, [GET_A], write=False)
    run.answer([b"1"])
    assert run.result == [b"1"]
    again = Script(round_trip(RoundTrip((GET_A,)), ONE_SERVER))
    again.answer(RedisConnectionError("reset"))
    with pytest.raises(RedisConnectionError, match="twice"):
        again.answer(RedisConnectionError("twice"))


def test_a_read_is_not_resent_after_a_timeout() -> None:
    run = Script(round_trip(RoundTrip((GET_A,)), ONE_SERVER))
    with pytest.raises(RedisTimeoutError):
        run.answer(RedisTimeoutError("timed out"))  # a resend would double the caller's wait
    assert len(run.actions) == 1


def test_a_write_that_never_left_is_resent_once() -> None:
    run = Script(round_trip(RoundTrip((SET_A,), retry_safe=False), ONE_SERVER))
    run.answer(not_sent(RedisConnectionError("refused"), resend=True))
    assert run.last == Exchange(None, [SET_A], write=True)
    run.answer([b"OK"])
    assert run.result == [b"OK"]
    twice = Script(round_trip(RoundTrip((SET_A,), retry_safe=False), ONE_SERVER))
    twice.answer(not_sent(RedisConnectionError("refused"), resend=True))
    with pytest.raises(RedisConnectionError, match="again"):
        twice.answer(not_sent(RedisConnectionError("again"), resend=True))


def test_not_sent_without_resend_raises_its_cause() -> None:
    cause = RedisTimeoutError("connect timed out")
    run = Script(round_trip(RoundTrip((SET_A,), retry_safe=False), ONE_SERVER))
    with pytest.raises(RedisTimeoutError) as err:
        run.answer(not_sent(cause, resend=False))
    assert err.value is cause and len(run.actions) == 1


def test_noscript_loads_the_script_and_resends_only_the_failed_commands() -> None:
    commit = ops.evalsha(scripts.COMMIT, (b"v", b"v:lock"), (b"tok", b"none", b"", b""))
    run = Script(round_trip(RoundTrip((GET_A, commit, GET_B), retry_safe=False), ONE_SERVER))
    run.answer([b"1", NoScriptError("No matching script"), b"2"])
    load = (b"SCRIPT", b"LOAD", scripts.COMMIT.source)
    assert run.last == Exchange(None, [load, commit], write=True)
    run.answer([scripts.COMMIT.sha, []])
    assert run.result == [b"1", [], b"2"]


def test_an_error_reply_that_is_the_answer_is_returned_in_place() -> None:
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    run = Script(round_trip(RoundTrip((GET_A, GET_B)), ONE_SERVER))
    run.answer([wrongtype, b"2"])
    assert run.done and run.result == [wrongtype, b"2"]


def test_readonly_reconnects_waits_and_resends() -> None:
    run = Script(round_trip(RoundTrip((SET_A,), retry_safe=False), ONE_SERVER))
    run.answer([ReadOnlyError("You can't write against a read only replica.")])
    assert run.last == Reconnect(None)
    run.answer(None)
    assert isinstance(run.last, Sleep)
    run.answer(None)
    assert run.last == Exchange(None, [SET_A], write=True)
    run.answer([b"OK"])
    assert run.result == [b"OK"]


def test_busy_loading_backs_off_with_growing_pauses_then_surfaces() -> None:
    loading = BusyLoadingError("Redis is loading the dataset in memory")
    run = Script(round_trip(RoundTrip((GET_A,)), ONE_SERVER))
    pauses = []
    for _ in range(MAX_ATTEMPTS - 1):
        run.answer([loading])
        assert isinstance(run.last, Sleep)
        pauses.append(run.last.seconds)
        run.answer(None)
    run.answer([loading])
    assert run.done and run.result == [loading]  # surfaced as the error reply it is
    assert pauses == sorted(pauses) and pauses[0] < 0.01 and max(pauses) <= 0.25
    assert sum(pauses) < 3.0


# --- the policy on a cluster --------------------------------------------------------------


class Node:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Slots:
    """A router over a fixed key -> node map (what redis-py's slot map would say)."""

    def __init__(self, owners: dict[bytes, Node], nodes: Sequence[Node]) -> None:
        self.owners = owners
        self.nodes = {n.name: n for n in nodes}
        self.stale = False

    def route(self, commands: Sequence[Any], indices: Sequence[int]) -> list[tuple[Any, list[int]]]:
        out: dict[str, tuple[Node, list[int]]] = {}
        for i in indices:
            node = self.owners[first_key(commands[i]) or b""]
            out.setdefault(node.name, (node, []))[1].append(i)
        return list(out.values())

    def node_at(self, host: str, port: int) -> Any:
        return self.nodes.get(f"{host}:{port}")


N1, N2 = Node("127.0.0.1:1"), Node("127.0.0.1:2")


def test_moved_records_the_new_owner_and_resends_only_that_command() -> None:
    router = Slots({b"a": N1, b"b": N1}, [N1, N2])
    run = Script(round_trip(RoundTrip((GET_A, GET_B)), router))
    assert run.last == Exchange(N1, [GET_A, GET_B], write=False)
    moved = MovedError("15495 127.0.0.1:2")
    run.answer([moved, b"2"])
    assert run.last == SlotMoved(moved)
    router.owners[b"a"] = N2  # what the driver's slot map update does
    run.answer(None)
    assert run.last == Exchange(N2, [GET_A], write=False)
    run.answer([b"1"])
    assert run.result == [b"1", b"2"]


def test_moved_again_waits_while_the_nodes_disagree() -> None:
    """Just after a migration, nodes may bounce a command between them until all have
    heard of the new owner: the second MOVED in one round trip waits before resending."""
    router = Slots({b"a": N1}, [N1, N2])
    run = Script(round_trip(RoundTrip((GET_A,)), router))
    run.answer([MovedError("15495 127.0.0.1:2")])
    router.owners[b"a"] = N2
    run.answer(None)  # SlotMoved recorded; resent at once
    assert run.last == Exchange(N2, [GET_A], write=False)
    run.answer([MovedError("15495 127.0.0.1:1")])
    router.owners[b"a"] = N1
    run.answer(None)
    assert isinstance(run.last, Sleep)
    run.answer(None)
    assert run.last == Exchange(N1, [GET_A], write=False)
    run.answer([b"1"])
    assert run.result == [b"1"]


def test_ask_resends_to_the_target_with_asking_in_front() -> None:
    router = Slots({b"a": N1, b"b": N1}, [N1, N2])
    commit = (b"EVALSHA", scripts.COMMIT.sha, 2, b"a", b"a:lock", b"tok", b"none", b"", b"")
    run = Script(round_trip(RoundTrip((commit, SET_A), retry_safe=False), router))
    run.answer([AskError("15495 127.0.0.1:2"), b"OK"])
    assert run.last == Exchange(N2, [ASKING, commit], write=True)
    run.answer([b"OK", []])
    assert run.result == [[], b"OK"]
    assert router.owners[b"a"] is N1  # ASK is one command's detour, not a new owner


def test_tryagain_during_a_migration_waits_and_stays_with_the_ask_target() -> None:
    router = Slots({b"a": N1}, [N1, N2])
    run = Script(round_trip(RoundTrip((GET_A,)), router))
    run.answer([AskError("1 127.0.0.1:2")])
    assert run.last == Exchange(N2, [ASKING, GET_A], write=False)
    run.answer([b"OK", TryAgainError("Multiple keys request during rehashing of slot")])
    assert isinstance(run.last, Sleep)
    run.answer(None)
    assert run.last == Exchange(N2, [ASKING, GET_A], write=False)
    run.answer([b"OK", b"1"])
    assert run.result == [b"1"]


def test_transport_failure_on_a_cluster_reloads_the_map_first() -> None:
    router = Slots({b"a": N1}, [N1, N2])
    run = Script(round_trip(RoundTrip((GET_A,)), router))
    run.answer(RedisConnectionError("node died"))
    assert run.last == RefreshSlots()
    router.owners[b"a"] = N2  # the replica took over
    run.answer(None)
    assert run.last == Exchange(N2, [GET_A], write=False)
    run.answer([b"1"])
    assert run.result == [b"1"]


def test_scripts_are_loaded_on_the_node_that_lacks_them() -> None:
    router = Slots({b"a": N1, b"b": N2}, [N1, N2])
    acquire_a = ops.evalsha(scripts.ACQUIRE, (b"a", b"a:lock"), (b"t", 100))
    acquire_b = ops.evalsha(scripts.ACQUIRE, (b"b", b"b:lock"), (b"t", 100))
    run = Script(round_trip(RoundTrip((acquire_a, acquire_b)), router))
    assert run.last == Exchange(N1, [acquire_a], write=False)
    run.answer([[[1]]])
    assert run.last == Exchange(N2, [acquire_b], write=False)
    run.answer([NoScriptError("No matching script")])
    load = (b"SCRIPT", b"LOAD", scripts.ACQUIRE.source)
    assert run.last == Exchange(N2, [load, acquire_b], write=False)
    run.answer([scripts.ACQUIRE.sha, [[1]]])
    assert run.result == [[[1]], [[1]]]


# --- operations, with the policy's outcome as the answer ----------------------------------


def _setup(layout: KeyLayout | None = None, **options: Any) -> ops.Setup[Any]:
    opts = RedisStorageOptions(**{"lock_retry_ms": 1, "lock_timeout_ms": 1000, **options})
    return ops.Setup(layout or KeyLayout(b"p:"), codec_for(Counter), opts, {"eviction-policy"})


def _acquired(*values: bytes | None) -> list[Any]:
    return [[[1, v] if v is not None else [1] for v in values]]


def test_get_set_delete_as_operations() -> None:
    setup = _setup()
    run = Script(ops.get(setup, "c"))
    assert run.last == RoundTrip(((b"GET", b"p:c"),))
    run.answer([b'{"count":3}'])
    assert run.result == Counter(count=3)
    run = Script(ops.set_(setup, "c", {"count": 4}, 1000))
    assert run.last == RoundTrip(((b"SET", b"p:c", b'{"count":4}', b"PX", 1000),), retry_safe=False)
    run.answer([b"OK"])
    assert run.done
    run = Script(ops.delete(setup, "c"))
    assert run.last.retry_safe is False
    with pytest.raises(WriteOutcomeUnknownError) as err:
        run.answer(_lost(RedisConnectionError("reset")))
    assert err.value.keys == ("c",) and "not resent" in str(err.value)


def _lost(cause: BaseException) -> ReplyLost:
    error = ReplyLost()
    error.__cause__ = cause
    return error


def test_batches_are_writes() -> None:
    setup = _setup()
    run = Script(ops.set_many(setup, {"a": {"count": 1}, "b": {"count": 2}}, 500))
    step = run.last
    assert step.retry_safe is False
    (command,) = step.commands
    assert command[:5] == (b"EVALSHA", scripts.SET_MANY.sha, 2, b"p:a", b"p:b")
    assert command[5:] == (500, b'{"count":1}', b'{"count":2}')
    with pytest.raises(WriteOutcomeUnknownError) as err:
        run.answer(_lost(RedisTimeoutError("timed out")))
    assert err.value.keys == ("a", "b")
    run = Script(ops.delete_many(setup, ["a", "b"]))
    assert list(run.last.commands) == [(b"DEL", b"p:a", b"p:b")] and not run.last.retry_safe


def test_update_lost_commit_releases_and_never_reruns_the_updater() -> None:
    setup = _setup()
    calls: list[Any] = []

    def updater(current: Counter | None) -> dict[str, Any]:
        calls.append(current)
        return {"value": {"count": 1}}

    run = Script(ops.update(setup, "c", updater))
    acquire = run.last
    assert acquire.retry_safe is True and acquire.commands[0][1] == scripts.ACQUIRE.sha
    run.answer(_acquired(None))
    assert isinstance(run.last, Call)
    run.answer(run.last.fn(*run.last.args))
    commit = run.last
    assert commit.retry_safe is False and commit.commands[0][1] == scripts.COMMIT.sha
    run.answer(_lost(RedisConnectionError("reset")))
    release = run.last
    assert release.commands[0][1] == scripts.RELEASE.sha
    assert release.background is False  # the server answers: settle the outcome now
    with pytest.raises(UpdateOutcomeUnknownError):
        run.answer([1])
    assert len(calls) == 1


def test_cleanup_after_a_timeout_goes_out_in_the_background() -> None:
    setup = _setup()
    run = Script(ops.update(setup, "c", lambda current: {"value": {"count": 1}}))
    run.answer(RedisTimeoutError("acquire timed out"))  # the lock may be ours: release it
    assert run.last.commands[0][1] == scripts.RELEASE.sha
    assert run.last.background is True  # nobody waits on a server that does not answer
    with pytest.raises(RedisTimeoutError):
        run.answer([None])
    run = Script(ops.update(setup, "c", lambda current: {"value": {"count": 1}}))
    run.answer(_acquired(None))
    run.answer(run.last.fn(*run.last.args))
    run.answer(_lost(RedisTimeoutError("commit timed out")))
    assert run.last.background is True
    with pytest.raises(UpdateOutcomeUnknownError):
        run.answer([None])


def test_update_many_never_waits_while_holding_a_lock() -> None:
    """Two slot groups: one is taken, the other busy. The taken locks are released before
    the pause, so two batches locking in opposite orders can never wait on each other."""
    layout = ClusterKeyLayout(b"p:")
    keys = ["x", "y"]
    groups = layout.groups([layout.value_key(k.encode()) for k in keys])
    assert len(groups) == 2  # x and y hash to different slots
    setup = _setup(layout)
    run = Script(ops.update_many(setup, keys, lambda key, current: {"value": {"count": 1}}))
    acquire = run.last
    assert len(acquire.commands) == 2
    run.answer([[[1]], [[0]]])  # first group locked, second busy (none of it taken)
    release = run.last
    assert release.commands and all(c[1] == scripts.RELEASE.sha for c in release.commands)
    run.answer([1, 1])
    assert isinstance(run.last, Sleep)
    run.answer(None)
    assert run.last == acquire  # the whole batch again
    run.answer([[[1]], [[1]]])
    for _ in keys:
        assert isinstance(run.last, Call)
        run.answer(run.last.fn(*run.last.args))
    assert run.last.commands[0][1] == scripts.COMMIT.sha
    run.answer([[], []])
    assert run.result == {"x": Counter(count=1), "y": Counter(count=1)}


def test_update_many_lock_timeout_names_the_busy_keys() -> None:
    setup = _setup(lock_timeout_ms=0)
    run = Script(ops.update_many(setup, ["x", "y"], lambda key, current: None))
    with pytest.raises(LockTimeoutError) as err:
        run.answer([[[2], [0]]])  # one script: y busy, so x was not taken either
    assert err.value.keys == ("y",)


def test_policy_and_operation_compose() -> None:
    """An operation's RoundTrip through the policy: a NOSCRIPT on the commit is recovered
    without the operation noticing."""
    setup = _setup()
    run = Script(ops.update(setup, "c", lambda current: {"value": {"count": 2}}))
    run.answer(_acquired(b'{"count":1}'))
    run.answer(run.last.fn(*run.last.args))
    commit_step = run.last
    policy = Script(round_trip(commit_step, ONE_SERVER))
    policy.answer([NoScriptError("No matching script")])
    assert policy.last.commands[0] == (b"SCRIPT", b"LOAD", scripts.COMMIT.source)
    policy.answer([scripts.COMMIT.sha, []])
    run.answer(policy.result)
    assert run.result == Counter(count=2)


def test_not_sent_is_an_exception_with_a_cause() -> None:
    error = not_sent(RedisConnectionError("x"), resend=False)
    assert isinstance(error, NotSent) and error.resend is False
    assert isinstance(error.__cause__, RedisConnectionError)
