"""Redis-specific behaviour: wire format and key layout (compatible with the TypeScript
original), the factory, scripts, and what is stored behind the adapter's back."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
import redis

from bantai import (
    InvalidOptionError,
    LockTimeoutError,
    RedisStorage,
    RedisStorageOptions,
    StoredValueError,
    WrongTypeError,
    create_redis_storage,
)
from bantai.testing import LocalRedisServer
from tests.models import Counter, UserData, increment

# --- factory and options ------------------------------------------------------------------


def test_factory_accepts_url_client_and_plain_client(redis_server: LocalRedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for source in ({"url": redis_server.url}, {"client": client}, client):
        storage = create_redis_storage(source, Counter, {"prefix": "factory:"})
        assert isinstance(storage, RedisStorage)
        storage.set("k", {"count": 1})
        assert storage.get("k") == Counter(count=1)
        storage.close()
    assert client.ping()  # closing an adapter never closes a client it was given
    client.close()


@pytest.mark.parametrize(
    "source,message",
    [
        ({}, "Either client or url must be provided"),
        ({"url": None, "client": None}, "Either client or url must be provided"),
        ({"host": "x"}, "unknown key"),
        ({"client": object()}, "must be a redis.Redis"),
        ({"client": redis.asyncio.Redis()}, "asyncio client"),
        ({"url": 6379}, "url must be a str"),
        ("redis://localhost", "must be a mapping"),
    ],
)
def test_factory_errors(source: Any, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message) as err:
        create_redis_storage(source, Counter)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "options,name",
    [
        ({"lock_timeout_ms": -1}, "lock_timeout_ms"),
        ({"lock_ttl_ms": 0}, "lock_ttl_ms"),
        ({"lock_retry_ms": 0}, "lock_retry_ms"),
        ({"lock_timeout_ms": 2000, "lock_ttl_ms": 1000}, "lock_ttl_ms"),
        ({"lock_timeout_ms": 1.5}, "lock_timeout_ms"),
        ({"lock_retry_ms": True}, "lock_retry_ms"),
        ({"prefix": 5}, "prefix"),
        ({"busy_poll_us": -1}, "busy_poll_us"),
        ({"busy_poll_us": 20_000}, "busy_poll_us"),
        ({"busy_poll_us": 1.5}, "busy_poll_us"),
        ({"lock_ttl_ms": 10**30}, "lock_ttl_ms"),
        ({"lock_timeout_ms": 10**30, "lock_ttl_ms": 10**30}, "lock_timeout_ms"),
        ({"lock_retry_ms": 10**9}, "lock_retry_ms"),
        ({"lockTimeoutMs": 10}, "unknown option"),
    ],
)
def test_option_errors_name_the_option(
    redis_server: LocalRedisServer, options: dict[str, Any], name: str
) -> None:
    with pytest.raises(InvalidOptionError, match=name):
        create_redis_storage({"url": redis_server.url}, Counter, options)
    with pytest.raises(InvalidOptionError, match=name):
        RedisStorageOptions(**options) if "lockTimeoutMs" not in options else (
            RedisStorageOptions.coerce(options)
        )


def test_options_object_and_defaults(redis_server: LocalRedisServer) -> None:
    opts = RedisStorageOptions(prefix="app:", lock_timeout_ms=100, lock_ttl_ms=200)
    storage = create_redis_storage({"url": redis_server.url}, Counter, opts)
    assert storage.options is opts
    defaults = RedisStorageOptions()
    assert (
        defaults.prefix,
        defaults.lock_timeout_ms,
        defaults.lock_ttl_ms,
        defaults.lock_retry_ms,
    ) == ("", 5000, 10000, 50)
    storage.close()


def test_bad_schema_is_refused(redis_server: LocalRedisServer) -> None:
    with pytest.raises(InvalidOptionError, match="schema"):
        create_redis_storage({"url": redis_server.url}, {"no": "type"})
    with pytest.raises(InvalidOptionError, match="schema"):
        create_redis_storage({"url": redis_server.url}, {"type": "no-such-type"})


# --- wire compatibility -------------------------------------------------------------------


def test_values_are_compact_json_at_prefix_plus_key(
    make_redis_storage: Any, raw: redis.Redis
) -> None:
    storage = make_redis_storage(UserData, prefix="app:")
    storage.set("user:123", {"userId": "123", "name": "Zoë", "lastLogin": 5})
    # Exactly what JSON.stringify writes, except that a float field keeps its ".0".
    assert raw.get("app:user:123") == '{"userId":"123","name":"Zoë","lastLogin":5.0}'.encode()


def test_reads_values_written_by_the_typescript_original(
    make_redis_storage: Any, raw: redis.Redis
) -> None:
    storage = make_redis_storage(UserData, prefix="node:")
    raw.set("node:user:1", '{"userId":"1","name":"Node","lastLogin":1700000000123}')
    assert storage.get("user:1") == UserData(userId="1", name="Node", lastLogin=1700000000123)


def test_lock_key_layout_and_ttl(make_redis_storage: Any, raw: redis.Redis) -> None:
    storage = make_redis_storage(Counter, prefix="app:", lock_ttl_ms=4000, lock_timeout_ms=1000)
    seen: dict[str, Any] = {}

    def look(current: Counter | None) -> dict[str, Any]:
        seen["token"] = raw.get("app:c:lock")
        seen["pttl"] = raw.pttl("app:c:lock")
        return increment(current)

    storage.update("c", look)
    first = seen["token"]
    storage.update("c", look)
    assert len(first) == 32 and int(first, 16) >= 0  # 128 random bits, hex
    assert seen["token"] != first  # a fresh token per call
    assert 0 < seen["pttl"] <= 4000
    assert raw.exists("app:c:lock") == 0  # released after the commit


def test_foreign_lock_is_respected(make_redis_storage: Any, raw: redis.Redis) -> None:
    """A lock taken by another client (e.g. the Node original) excludes our update."""
    storage = make_redis_storage(Counter, prefix="app:", lock_timeout_ms=150, lock_retry_ms=20)
    raw.set("app:c:lock", "node-token", px=5000)
    with pytest.raises(LockTimeoutError, match="Failed to acquire lock"):
        storage.update("c", increment)
    lists = make_redis_storage(list[int], prefix="app:", lock_timeout_ms=150, lock_retry_ms=20)
    raw.set("app:xs:lock", "node-token", px=5000)
    with pytest.raises(LockTimeoutError):
        lists.append("xs", 1)  # append waits for the lock too: it is never lost under a commit
    assert raw.exists("app:xs") == 0
    assert raw.get("app:c:lock") == b"node-token"  # a foreign lock is never deleted
    raw.delete("app:c:lock")
    assert storage.update("c", increment) == Counter(count=1)


# --- scripts ------------------------------------------------------------------------------


def test_script_flush_is_recovered(make_redis_storage: Any, raw: redis.Redis) -> None:
    storage = make_redis_storage(Counter)
    lists = make_redis_storage(list[int])
    storage.update("c", increment)
    for _ in range(2):
        raw.script_flush()
        assert storage.update("c", increment).count >= 2
        raw.script_flush()
        lists.append("xs", 1)
        raw.script_flush()
        result = storage.update_many(["a", "b", "c"], lambda k, cur: increment(cur))
        assert result["a"] == Counter(count=len(lists.get("xs")))
    assert storage.get("c") == Counter(count=5)


def test_no_script_exists_round_trips(make_redis_storage: Any, raw: redis.Redis) -> None:
    """Scripts are called with EVALSHA directly; SCRIPT LOAD only after NOSCRIPT."""
    storage = make_redis_storage(Counter)
    storage.update("warm", increment)
    before = _command_calls(raw)
    for _ in range(5):
        storage.update("c", increment)
    after = _command_calls(raw)
    assert after.get("script|exists", 0) == before.get("script|exists", 0)
    assert after.get("script|load", 0) == before.get("script|load", 0)
    assert after["evalsha"] - before["evalsha"] == 10  # acquire + commit per update


def _command_calls(raw: redis.Redis) -> dict[str, int]:
    stats = raw.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


# --- what others stored -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [b"garbage", pickle.dumps({"count": 1}), b'{"count":"many"}', b'{"count":-3}', b"", b"\xff"],
    ids=["garbage", "pickle", "wrong-field-type", "constraint", "empty", "non-utf8"],
)
def test_corrupt_value_names_the_key(
    make_redis_storage: Any, raw: redis.Redis, stored: bytes
) -> None:
    storage = make_redis_storage(Counter, prefix="app:", lock_timeout_ms=500)
    raw.set("app:bad", stored)
    storage.set("good", {"count": 1})
    for call in (
        lambda: storage.get("bad"),
        lambda: storage.get_many(["good", "bad"]),
        lambda: storage.update("bad", increment),
        lambda: storage.update_many(["good", "bad"], lambda k, c: increment(c)),
    ):
        with pytest.raises(StoredValueError, match="'bad'") as err:
            call()
        assert err.value.key == "bad"
    assert raw.get("app:bad") == stored  # never overwritten
    assert raw.keys("app:*lock") == []  # the failed updates released their locks
    assert storage.get("good") == Counter(count=1)  # other keys unaffected
    lists = make_redis_storage(list[int], prefix="app:")
    if stored != b"":
        with pytest.raises(StoredValueError, match="'bad'"):
            lists.append("bad", 1)


def test_wrong_redis_type(make_redis_storage: Any, raw: redis.Redis) -> None:
    storage = make_redis_storage(Counter, prefix="app:")
    lists = make_redis_storage(list[int], prefix="app:")
    raw.hset("app:h", "f", "v")
    for call in (
        lambda: storage.get("h"),
        lambda: storage.set_many({"h2": {"count": 1}}) or storage.get_many(["h"]),
        lambda: storage.update("h", increment),
        lambda: storage.update_many(["ok", "h"], lambda k, c: increment(c)),
        lambda: lists.append("h", 1),
    ):
        with pytest.raises(WrongTypeError, match="'h'"):
            call()
    assert raw.keys("app:*lock") == []
    assert raw.get("app:ok") is None  # nothing of the failed batch was written
    storage.set("h", {"count": 1})  # SET replaces any type, like redis SET
    assert storage.get("h") == Counter(count=1)


def test_update_many_waits_only_for_busy_keys(make_redis_storage: Any, raw: redis.Redis) -> None:
    storage = make_redis_storage(Counter, prefix="um:", lock_timeout_ms=2000, lock_retry_ms=10)
    raw.set("um:b:lock", "someone", px=150)  # b is busy for a while, a and c are free
    seen: list[str] = []
    result = storage.update_many(["a", "b", "c"], lambda k, c: seen.append(k) or increment(c))
    assert seen == ["a", "b", "c"]
    assert result == {k: Counter(count=1) for k in "abc"}
    assert raw.keys("um:*lock") == []


def test_concurrent_update_many_is_exact(make_redis_storage: Any) -> None:
    storage = make_redis_storage(
        Counter, lock_timeout_ms=20_000, lock_ttl_ms=20_000, lock_retry_ms=2
    )
    keys = [f"k{i}" for i in range(5)]

    def work() -> None:
        for _ in range(20):
            storage.update_many(keys, lambda k, c: increment(c))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert storage.get_many(keys) == {k: Counter(count=80) for k in keys}


@pytest.mark.parametrize(
    "client_options,busy_poll_us",
    [
        ({"protocol": 2}, 0),
        ({"protocol": 3}, 0),
        ({"decode_responses": True}, 0),
        ({"socket_timeout": 2.0}, 0),
        ({}, 200),
        ({"socket_timeout": 2.0}, 10_000),
    ],
    ids=["resp2", "resp3", "decode_responses", "socket_timeout", "busy-poll", "busy-poll+timeout"],
)
def test_any_client_configuration(
    redis_server: LocalRedisServer,
    raw: redis.Redis,
    client_options: dict[str, Any],
    busy_poll_us: int,
) -> None:
    """A user's client keeps its settings; replies are read the same in RESP2 and RESP3,
    with decode_responses=True, with a socket timeout, and with busy-polling."""
    client = redis.Redis.from_url(redis_server.url, **client_options)
    options = {"prefix": "cfg:", "busy_poll_us": busy_poll_us}
    storage = create_redis_storage({"client": client}, Counter, options)
    lists = create_redis_storage({"client": client}, list[int], options)
    assert storage.get("c") is None
    assert storage.update("c", increment) == Counter(count=1)
    storage.set("d", {"count": 4}, ttl_ms=10_000)
    assert storage.get_many(["c", "d", "e"]) == {
        "c": Counter(count=1),
        "d": Counter(count=4),
        "e": None,
    }
    assert storage.update_many(["c", "e"], lambda k, c: increment(c)) == {
        "c": Counter(count=2),
        "e": Counter(count=1),
    }
    raw.script_flush()
    lists.append("xs", 1)
    assert lists.get("xs") == [1]
    raw.set("cfg:bad", b"\xff\xfe")  # replies are read as bytes even with decode_responses
    with pytest.raises(StoredValueError, match="'bad'"):
        storage.get("bad")
    client.close()
