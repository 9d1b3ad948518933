"""Faults from docs/reliability.md against real servers: dead and frozen lock holders, lost
commit replies, server restarts, out-of-memory, bad credentials, fork, many processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, OutOfMemoryError
from redis.exceptions import ConnectionError as RedisConnectionError

from bantai import (
    LockLostError,
    LockTimeoutError,
    UpdateOutcomeUnknownError,
    create_redis_storage,
)
from bantai.testing import LocalRedisServer
from tests.models import Counter, increment

fork = multiprocessing.get_context("fork")


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _hold_lock_forever(url: str, prefix: str) -> None:
    storage = create_redis_storage({"url": url}, Counter, {"prefix": prefix})
    storage.update("c", lambda current: time.sleep(3600))


def test_killed_holder_lock_expires_within_ttl(
    redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    lock_ttl, retry = 600, 20
    child = fork.Process(target=_hold_lock_forever, args=(redis_server.url, "kill:"))
    child.start()
    _wait_for(lambda: raw.exists("kill:c:lock") == 1)
    pttl = raw.pttl("kill:c:lock")
    assert 0 < pttl <= 10000  # the child used the default lock_ttl_ms
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    raw.pexpire("kill:c:lock", lock_ttl)  # shorten the dead holder's lease for the test
    # Wait a little longer than the lease: a last attempt in the very millisecond the
    # lease ends may still find it (Redis expires a key once its time has *passed*).
    wait_ms = lock_ttl + 5 * retry
    storage = create_redis_storage(
        {"url": redis_server.url},
        Counter,
        {
            "prefix": "kill:",
            "lock_timeout_ms": wait_ms,
            "lock_ttl_ms": wait_ms,
            "lock_retry_ms": retry,
        },
    )
    started = time.monotonic()
    assert storage.update("c", increment) == Counter(count=1)
    assert time.monotonic() - started <= (lock_ttl + retry + 100) / 1000
    storage.close()


def _stale_commit(url: str, prefix: str, ready: Any, result: Any) -> None:
    storage = create_redis_storage(
        {"url": url}, Counter, {"prefix": prefix, "lock_timeout_ms": 200, "lock_ttl_ms": 300}
    )

    def slow(current: Counter | None) -> dict[str, Any]:
        ready.set()
        time.sleep(0.05)  # SIGSTOP arrives here
        return {"value": {"count": 1000}}

    try:
        storage.update("c", slow)
        result.value = 1
    except LockLostError:
        result.value = 2


def test_frozen_holder_cannot_commit_after_resume(
    redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    ready, result = fork.Event(), fork.Value("i", 0)
    child = fork.Process(target=_stale_commit, args=(redis_server.url, "stop:", ready, result))
    child.start()
    assert ready.wait(10)
    os.kill(child.pid, signal.SIGSTOP)
    storage = create_redis_storage(
        {"url": redis_server.url},
        Counter,
        {"prefix": "stop:", "lock_timeout_ms": 1000, "lock_ttl_ms": 1000, "lock_retry_ms": 10},
    )
    assert storage.update("c", increment) == Counter(count=1)  # after the stale lease expired
    os.kill(child.pid, signal.SIGCONT)
    child.join(10)
    assert result.value == 2  # the resumed holder's commit was refused: lock lost
    assert storage.get("c") == Counter(count=1)
    storage.close()


def test_lost_commit_reply_is_outcome_unknown_and_not_resent(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    server = own_redis_server()
    admin = redis.Redis.from_url(server.url)
    client = redis.Redis.from_url(server.url, socket_timeout=0.25)
    storage = create_redis_storage({"client": client}, Counter, {"prefix": "amb:"})
    storage.set("c", {"count": 1})
    calls = 0

    def pause_then_increment(current: Counter | None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        admin.client_pause(400, all=False)  # writes (our commit) wait longer than the timeout
        return increment(current)

    with pytest.raises(UpdateOutcomeUnknownError) as err:
        storage.update("c", pause_then_increment)
    assert err.value.keys == ("c",)
    assert "reply was lost" in str(err.value)
    assert calls == 1  # the updater was not re-run behind the caller's back
    time.sleep(0.3)
    # Redis dropped the paused commit with the timed-out connection: it was applied at most
    # once and never resent (a blind resend would apply it or report a lost lock).
    assert storage.get("c") in (Counter(count=1), Counter(count=2))
    assert admin.exists("amb:c:lock") == 0  # released after the lost reply
    started = time.monotonic()
    storage.update("c", increment)  # the connection pool is healthy, no stale lock waits
    assert time.monotonic() - started < 0.5
    admin.close()
    client.close()


def test_server_down_then_back(own_redis_server: Callable[..., LocalRedisServer]) -> None:
    server = own_redis_server()
    storage = create_redis_storage({"url": server.url}, Counter, {"prefix": "down:"})
    storage.set("c", {"count": 1})
    server.process.kill()  # type: ignore[union-attr]
    server.process.wait()  # type: ignore[union-attr]
    for call in (lambda: storage.get("c"), lambda: storage.update("c", increment)):
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            call()
        assert time.monotonic() - started < 5
    server.start()  # same port, empty (nothing persisted)
    assert storage.get("c") is None
    assert storage.update("c", increment) == Counter(count=1)
    raw_client = redis.Redis.from_url(server.url)
    assert raw_client.keys("down:*lock") == []
    raw_client.close()
    storage.close()


def test_restart_between_calls_is_transparent(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    """A pooled connection dies with the server; the next call reconnects, reloads the
    scripts (the cache is empty after a restart) and succeeds."""
    server = own_redis_server()
    storage = create_redis_storage({"url": server.url}, Counter, {"prefix": "rs:"})
    storage.update("c", increment)
    server.restart()
    assert storage.update("c", increment) == Counter(count=1)
    storage.close()


def test_out_of_memory_surfaces_and_releases(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    server = own_redis_server("--maxmemory-policy", "noeviction")
    admin = redis.Redis.from_url(server.url)
    storage = create_redis_storage({"url": server.url}, Counter, {"prefix": "oom:"})
    storage.update("c", increment)
    admin.set("ballast", b"x" * 4_000_000)
    admin.config_set("maxmemory", "1mb")

    with pytest.raises(OutOfMemoryError):
        storage.update("c", increment)
    with pytest.raises(OutOfMemoryError):
        storage.set("d", {"count": 1})
    assert admin.keys("oom:*lock") == []
    admin.config_set("maxmemory", "0")
    assert storage.get("c") == Counter(count=1)
    assert storage.update("c", increment) == Counter(count=2)

    # OOM at commit time: the script is refused before it runs, the lock is released.
    def fill_memory(current: Counter | None) -> dict[str, Any]:
        admin.config_set("maxmemory", "1mb")
        return increment(current)

    with pytest.raises(OutOfMemoryError):
        storage.update("c", fill_memory)
    assert admin.keys("oom:*lock") == []
    admin.config_set("maxmemory", "0")
    assert storage.get("c") == Counter(count=2)
    admin.close()
    storage.close()


def test_wrong_password_fails_fast(own_redis_server: Callable[..., LocalRedisServer]) -> None:
    server = own_redis_server("--requirepass", "s3cret")
    bad = create_redis_storage(
        {"url": f"redis://:wrong@127.0.0.1:{server.port}/0"}, Counter, {"prefix": "auth:"}
    )
    started = time.monotonic()
    with pytest.raises(AuthenticationError):
        bad.get("c")
    assert time.monotonic() - started < 2  # no retry storm
    good = create_redis_storage(
        {"url": f"redis://:s3cret@127.0.0.1:{server.port}/0"}, Counter, {"prefix": "auth:"}
    )
    assert good.update("c", increment) == Counter(count=1)
    bad.close()
    good.close()


def _count_up(storage: Any, n: int) -> None:
    for _ in range(n):
        storage.update("n", increment)


def test_fork_with_live_client_and_threads(make_redis_storage: Any, raw: redis.Redis) -> None:
    storage = make_redis_storage(
        Counter, prefix="fork:", lock_timeout_ms=30_000, lock_ttl_ms=30_000, lock_retry_ms=2
    )
    storage.update("n", increment)  # the parent's pool now holds a live connection
    children = [fork.Process(target=_count_up, args=(storage, 100)) for _ in range(3)]
    for child in children:
        child.start()
    threads = [threading.Thread(target=_count_up, args=(storage, 100)) for _ in range(2)]
    for t in threads:
        t.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    for t in threads:
        t.join(60)
    assert storage.get("n") == Counter(count=1 + 300 + 200)


@pytest.mark.slow
def test_no_lost_updates_16_processes(make_redis_storage: Any, raw: redis.Redis) -> None:
    """docs/reliability.md, property 1: 16 processes x 1,000 update(+1) on one key -> 16,000."""
    storage = make_redis_storage(
        Counter, prefix="p16:", lock_timeout_ms=60_000, lock_ttl_ms=60_000, lock_retry_ms=1
    )
    storage.get("n")  # a live connection in the parent, inherited by every child
    children = [fork.Process(target=_count_up, args=(storage, 1000)) for _ in range(16)]
    for child in children:
        child.start()
    for child in children:
        child.join(240)
        assert child.exitcode == 0
    assert storage.get("n") == Counter(count=16_000)
    assert raw.keys("p16:*lock") == []


@pytest.mark.parametrize("busy_poll_us", [0, 500])
def test_frozen_server_times_out_then_recovers(
    own_redis_server: Callable[..., LocalRedisServer], busy_poll_us: int
) -> None:
    server = own_redis_server()
    client = redis.Redis.from_url(server.url, socket_timeout=0.3)
    storage = create_redis_storage(
        {"client": client}, Counter, {"prefix": "frz:", "busy_poll_us": busy_poll_us}
    )
    storage.set("c", {"count": 1})
    server.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            storage.get("c")
        assert 0.25 <= time.monotonic() - started < 1.5
    finally:
        server.signal(signal.SIGCONT)
    assert storage.get("c") == Counter(count=1)  # a fresh connection, replies in step
    assert storage.update("c", increment) == Counter(count=2)
    client.close()


def test_acl_user_without_access_to_the_prefix(
    own_redis_server: Callable[..., LocalRedisServer],
) -> None:
    server = own_redis_server()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["other:*"], commands=["+@all"]
    )
    storage = create_redis_storage(
        {"url": f"redis://limited:pw@127.0.0.1:{server.port}/0"}, Counter, {"prefix": "app:"}
    )
    for call in (lambda: storage.get("c"), lambda: storage.update("c", increment)):
        started = time.monotonic()
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
        assert time.monotonic() - started < 1  # refused at once, not retried
    allowed = create_redis_storage(
        {"url": f"redis://limited:pw@127.0.0.1:{server.port}/0"}, Counter, {"prefix": "other:"}
    )
    assert allowed.update("c", increment) == Counter(count=1)
    assert admin.keys("app:*") == []
    storage.close()
    allowed.close()
    admin.close()


def test_client_clock_jumps_change_nothing(
    make_redis_storage: Any, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waits use the monotonic clock and rate limits use the server's TIME, so a client
    wall clock that jumps an hour either way changes no decision."""
    from bantai import rate_limit, rate_limit_schema

    limits = make_redis_storage(rate_limit_schema, prefix="clk:")
    config = {"type": "fixed-window", "limit": 3, "period": "1h", "key": "k"}
    real_time, real_ns = time.time, time.time_ns
    decisions = []
    for shift in (0, 3600, -3600, 0):
        monkeypatch.setattr(time, "time", lambda s=shift: real_time() + s)
        monkeypatch.setattr(time, "time_ns", lambda s=shift: real_ns() + s * 10**9)
        decisions.append(rate_limit.consume(limits, config).allowed)
    # one window (unless the server's own hour ended mid-test): 3 admitted, then denied
    assert decisions == [True, True, True, False] or len(raw.keys("clk:k:*")) == 2
    counters = make_redis_storage(Counter, prefix="clk2:", lock_timeout_ms=200, lock_retry_ms=20)
    raw.set("clk2:c:lock", "someone", px=5000)
    monkeypatch.setattr(time, "time", lambda: real_time() + 7200)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError, match="Failed to acquire lock"):
        counters.update("c", increment)
    assert time.monotonic() - started < 0.2 + 0.02 + 0.2


def test_nothing_of_ours_outlives_its_ttl(make_redis_storage: Any, raw: redis.Redis) -> None:
    """docs/reliability.md, property 4: after locks, limiter traffic and a crashed holder, once the
    longest TTL has passed only values written without a TTL remain."""
    from bantai import rate_limit, rate_limit_schema

    storage = make_redis_storage(Counter, prefix="ttl:", lock_timeout_ms=300, lock_ttl_ms=300)
    limits = make_redis_storage(rate_limit_schema, prefix="ttl:rl:")
    storage.set("kept", {"count": 1})  # no TTL: must remain
    storage.update("tmp", lambda c: {"value": {"count": 1}, "ttl_ms": 300})
    for kind in ("fixed-window", "sliding-window", "token-bucket"):
        for _ in range(3):
            rate_limit.consume(limits, {"type": kind, "limit": 2, "period": "300ms", "key": kind})
    child = fork.Process(
        target=_hold_short_lock, args=(raw.connection_pool.connection_kwargs["port"],)
    )
    child.start()
    _wait_for(lambda: raw.exists("ttl:crash:lock") == 1)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert all(raw.pttl(k) > 0 for k in raw.keys("ttl:*") if k != b"ttl:kept")
    time.sleep(0.45)
    assert raw.keys("ttl:*") == [b"ttl:kept"]


def _hold_short_lock(port: int) -> None:
    storage = create_redis_storage(
        {"url": f"redis://127.0.0.1:{port}/0"},
        Counter,
        {"prefix": "ttl:", "lock_timeout_ms": 300, "lock_ttl_ms": 300},
    )
    storage.update("crash", lambda current: time.sleep(3600))


@pytest.mark.parametrize("policy,warned", [("volatile-lru", True), ("noeviction", False)])
def test_eviction_policy_that_can_evict_locks_is_reported(
    own_redis_server: Callable[..., LocalRedisServer],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    server = own_redis_server("--maxmemory-policy", policy)
    storage = create_redis_storage({"url": server.url}, Counter, {"prefix": "ev:"})
    with caplog.at_level("WARNING", logger="bantai"):
        storage.update("c", increment)
        storage.update("c", increment)  # checked once per adapter
    messages = [r.getMessage() for r in caplog.records if r.name == "bantai"]
    assert len(messages) == (1 if warned else 0)
    if warned:
        assert "volatile-lru" in messages[0] and "noeviction" in messages[0]
    storage.close()
