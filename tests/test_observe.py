"""Instrumentation (bantai.observe) against real Redis servers: every operation reports
its start and end with key counts and outcome; lock waits, script reloads, redirects and
resends are reported as events; hooks that fail never break an operation; DEBUG logging
never shows values; and a storage without instrumentation is the plain class."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis

from bantai import (
    LockTimeoutError,
    StoredValueError,
    create_async_redis_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from bantai.errors import InvalidTTLError, WriteOutcomeUnknownError
from bantai.observe import (
    LINE_WAIT,
    LOCK_WAIT,
    REDIRECT,
    RESEND,
    SCRIPT_RELOAD,
    Instrumentation,
    OperationEnd,
    OperationStart,
    set_default_instrumentation,
)
from bantai.redis import AsyncRedisStorage, RedisStorage
from bantai.redis.cluster_router import key_slot
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix
from tests.proxy import FaultProxy
from tests.test_cluster_faults import _call, _local_cluster, _topology


class Recorder(Instrumentation):
    """Keeps what it is told, per operation."""

    def __init__(self) -> None:
        self.started: list[OperationStart] = []
        self.ended: list[OperationEnd] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def start(self, operation: OperationStart) -> Any:
        with self._lock:
            self.started.append(operation)
        return operation.operation

    def event(self, context: Any, name: str, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append((context, name, dict(attributes)))

    def end(self, context: Any, result: OperationEnd) -> None:
        assert context == result.operation
        with self._lock:
            self.ended.append(result)

    def ends(self) -> list[tuple[str, int, str]]:
        return [(e.operation, e.key_count, e.outcome) for e in self.ended]

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder()
    set_default_instrumentation(None)


def test_every_operation_reports_start_and_end(
    redis_server: LocalRedisServer, recorder: Recorder
) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int], {"prefix": unique_prefix(),
                                                    "instrumentation": recorder}
    )  # fmt: skip
    storage.set("a", {"n": 1})
    assert storage.get("a") == {"n": 1}
    storage.update("a", lambda current: {"value": {"n": 2}})
    storage.set_many({"b": {"n": 1}, "c": {"n": 2}})
    storage.get_many(iter(["a", "b", "c"]))  # an iterator: counted and still read whole
    storage.update_many(["b", "c"], lambda key, current: None)
    storage.delete_many(["b", "c"])
    storage.delete("a")
    assert storage.ping() > 0
    assert recorder.ends() == [
        ("set", 1, "ok"), ("get", 1, "ok"), ("update", 1, "ok"), ("set_many", 2, "ok"),
        ("get_many", 3, "ok"), ("update_many", 2, "ok"), ("delete_many", 2, "ok"),
        ("delete", 1, "ok"), ("ping", 0, "ok"),
    ]  # fmt: skip
    start = recorder.started[0]
    assert (start.server_address, start.server_port, start.database) == (
        "127.0.0.1", redis_server.port, 0,
    )  # fmt: skip
    assert all(e.duration_s > 0 and e.lock_retries == 0 for e in recorder.ended)
    storage.close()


def test_outcomes_are_classified(redis_server: LocalRedisServer, recorder: Recorder) -> None:
    prefix = unique_prefix()
    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int],
        {"prefix": prefix, "instrumentation": recorder, "lock_timeout_ms": 50},
    )  # fmt: skip
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(f"{prefix}corrupt", b"not json")
    raw.set(f"{prefix}held:lock", b"someone-else", px=5000)
    with pytest.raises(InvalidTTLError):
        storage.set("a", {"n": 1}, ttl_ms=0)
    with pytest.raises(StoredValueError):
        storage.get("corrupt")
    with pytest.raises(LockTimeoutError):
        storage.update("held", lambda current: None)
    with pytest.raises(ZeroDivisionError):
        storage.update("a", lambda current: 1 / 0)
    assert recorder.ends() == [
        ("set", 1, "invalid_input"), ("get", 1, "stored_value_error"),
        ("update", 1, "lock_timeout"), ("update", 1, "error"),
    ]  # fmt: skip
    timed_out = recorder.ended[2]
    assert timed_out.lock_retries >= 2 and 0.02 < timed_out.lock_wait_s <= 0.06
    assert LOCK_WAIT in recorder.names()
    assert isinstance(recorder.ended[3].error, ZeroDivisionError)
    raw.close()
    storage.close()


def test_a_lost_write_reply_is_reported_as_outcome_unknown(
    redis_server: LocalRedisServer, recorder: Recorder
) -> None:
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = redis.Redis(host=proxy.host, port=proxy.port, socket_timeout=2)
        storage = create_redis_storage(
            {"client": client}, dict[str, int], {"prefix": unique_prefix(),
                                                 "instrumentation": recorder}
        )  # fmt: skip
        storage.get("k")
        proxy.lose_reply_after(b"SET")
        with pytest.raises(WriteOutcomeUnknownError):
            storage.set("k", {"n": 1})
        assert storage.get("k") == {"n": 1}  # a fresh connection, now in the pool
        # a read on a connection that died meanwhile is resent once, and says so
        proxy.reset_all()
        proxy.wait_for(lambda: proxy.connections == 0)
        assert storage.get("k") == {"n": 1}
        storage.close()
        client.close()
    assert recorder.ends()[1] == ("set", 1, "outcome_unknown")
    assert recorder.ends()[2:] == [("get", 1, "ok"), ("get", 1, "ok")]
    assert ("get", RESEND) in [(context, name) for context, name, _ in recorder.events]


def test_lock_waits_and_line_waits_are_measured(
    redis_server: LocalRedisServer, recorder: Recorder
) -> None:
    prefix = unique_prefix()
    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int], {"prefix": prefix, "instrumentation": recorder}
    )
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(f"{prefix}k:lock", b"another-process", px=80)  # held elsewhere for 80 ms
    storage.update("k", lambda current: {"value": {"n": 1}})
    waited = recorder.ended[-1]
    assert waited.lock_retries >= 1 and 0.05 <= waited.lock_wait_s <= 0.2

    # two threads of this process: the second waits in line while the first holds the key
    release = threading.Event()

    def slow(current: dict[str, int] | None) -> dict[str, Any]:
        release.wait(1)
        return {"value": {"n": 2}}

    first = threading.Thread(target=storage.update, args=("k", slow))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=storage.update, args=("k", lambda c: None))
    second.start()
    time.sleep(0.05)
    release.set()
    first.join(5)
    second.join(5)
    assert LINE_WAIT in recorder.names()
    line_waiter = [e for e in recorder.ended[-2:] if e.lock_wait_s >= 0.03]
    assert line_waiter, recorder.ended[-2:]
    raw.close()
    storage.close()


def test_script_reloads_are_events(redis_server: LocalRedisServer, recorder: Recorder) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int],
        {"prefix": unique_prefix(), "instrumentation": recorder},
    )  # fmt: skip
    storage.update("k", lambda current: {"value": {"n": 1}})
    raw = redis.Redis.from_url(redis_server.url)
    raw.script_flush()
    storage.update("k", lambda current: {"value": {"n": 2}})
    reloads = [(context, a) for context, name, a in recorder.events if name == SCRIPT_RELOAD]
    assert reloads and reloads[0][0] == "update" and len(reloads[0][1]["sha"]) == 8
    assert recorder.ends()[-1] == ("update", 1, "ok")
    raw.close()
    storage.close()


def test_a_moved_slot_is_a_redirect_event(recorder: Recorder) -> None:
    with _local_cluster(3) as local:
        port = local.startup_nodes[0][1]
        storage = create_redis_storage(
            {"client": redis.cluster.RedisCluster(host="127.0.0.1", port=port)},
            dict[str, int], {"prefix": unique_prefix(), "instrumentation": recorder},
        )  # fmt: skip
        storage.set("k", {"n": 1})
        storage.delete("k")  # the slot is empty again: it can be reassigned without MIGRATE
        slot = key_slot(storage._setup.layout.value_key(b"k"))  # the key as stored
        nodes = [n for n in _topology(port) if n.is_master]
        owner = next(n for n in nodes if n.owns(slot))
        target = next(n for n in nodes if n is not owner)
        for node in [target, owner, *[n for n in nodes if n not in (owner, target)]]:
            _call(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
        assert storage.get("k") is None  # MOVED, then answered by the new owner
        storage.close()
    redirects = [a for _, name, a in recorder.events if name == REDIRECT]
    assert redirects and redirects[0]["kind"] == "moved" and redirects[0]["slot"] == slot
    assert redirects[0]["to"] == ("127.0.0.1", target.port)
    assert recorder.ends()[-1] == ("get", 1, "ok")


def test_asyncio_operations_and_consume(redis_server: LocalRedisServer, recorder: Recorder) -> None:
    async def main() -> None:
        prefix = unique_prefix()
        storage = create_async_redis_storage(
            {"url": redis_server.url}, dict[str, int], {"prefix": prefix,
                                                        "instrumentation": recorder}
        )  # fmt: skip
        assert isinstance(storage, AsyncRedisStorage)
        await storage.set("a", {"n": 0})

        async def bump(current: dict[str, int] | None) -> dict[str, Any]:
            await asyncio.sleep(0.01)
            return {"value": {"n": (current or {"n": 0})["n"] + 1}}

        await asyncio.gather(*(storage.update("a", bump) for _ in range(5)))
        assert await storage.get("a") == {"n": 5}
        assert await storage.ping() > 0
        limits = create_async_redis_storage(
            {"url": redis_server.url}, rate_limit_schema, {"prefix": prefix,
                                                           "instrumentation": recorder}
        )  # fmt: skip
        config = {"type": "gcra", "limit": 1, "period": "1m", "key": "u"}
        assert (await rate_limit.consume_async(limits, config)).allowed  # type: ignore[arg-type]
        await storage.close()
        await limits.close()

    asyncio.run(main())
    ends = recorder.ends()
    assert ends[0] == ("set", 1, "ok") and ends.count(("update", 1, "ok")) == 5
    assert ends[-3:] == [("get", 1, "ok"), ("ping", 0, "ok"), ("consume", 1, "ok")]
    updates = [e for e in recorder.ended if e.operation == "update"]
    assert sum(e.lock_wait_s > 0 for e in updates) >= 3  # 4 of 5 waited in line
    # each task's events went to its own operation
    assert {context for context, name, _ in recorder.events if name == LINE_WAIT} == {"update"}


def test_a_failing_hook_never_breaks_an_operation(
    redis_server: LocalRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Instrumentation):
        def start(self, operation: OperationStart) -> Any:
            raise RuntimeError("hook bug")

        def end(self, context: Any, result: OperationEnd) -> None:
            raise RuntimeError("hook bug")

    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int],
        {"prefix": unique_prefix(), "instrumentation": Broken()},
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="bantai"):
        storage.set("k", {"n": 1})
        assert storage.get("k") == {"n": 1}
    assert "instrumentation hook" in caplog.text and "hook bug" in caplog.text
    storage.close()


def test_default_instrumentation_and_the_plain_class(
    redis_server: LocalRedisServer, recorder: Recorder
) -> None:
    plain = create_redis_storage({"url": redis_server.url}, dict[str, int])
    assert type(plain) is RedisStorage  # nothing wrapped: nothing to pay
    set_default_instrumentation(recorder)
    observed = create_redis_storage({"url": redis_server.url}, dict[str, int])
    assert type(observed) is not RedisStorage and isinstance(observed, RedisStorage)
    observed.get("nothing")
    plain.get("nothing")
    assert recorder.ends() == [("get", 1, "ok")]
    with pytest.raises(Exception, match="instrumentation must be"):
        create_redis_storage({"url": redis_server.url}, dict[str, int],
                             {"instrumentation": object()})  # fmt: skip
    plain.close()
    observed.close()


def test_debug_logging_shows_waits_and_reloads_never_values(
    redis_server: LocalRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    storage = create_redis_storage({"url": redis_server.url}, dict[str, str], {"prefix": prefix})
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(f"{prefix}k:lock", b"another-process", px=30)
    secret = "s3cr3t-value-never-logged"
    with caplog.at_level(logging.DEBUG, logger="bantai"):
        storage.update("k", lambda current: {"value": {"v": secret}})
        raw.script_flush()
        storage.update("k", lambda current: {"value": {"v": secret + "!"}})
    assert "lock busy: retrying in" in caplog.text
    assert "script_reload" in caplog.text
    assert secret not in caplog.text
    raw.close()
    storage.close()
