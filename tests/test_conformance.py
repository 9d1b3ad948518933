"""The storage conformance suite: every test runs against the memory storage and against
the Redis adapter on a real server (the `make_storage` fixture is parametrized)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter
from pydantic_core import core_schema as cs

from bantai import (
    InvalidKeyError,
    InvalidTTLError,
    InvalidUpdaterError,
    InvalidValueError,
    LockLostError,
    LockTimeoutError,
    StorageError,
    UnsupportedOperationError,
    UpdateResult,
)
from tests.models import Counter, UserData, increment

USER = {"userId": "u1", "name": "Ada", "lastLogin": 1700000000000}


# --- schemas ----------------------------------------------------------------------------


def test_set_get_model(make_storage: Any) -> None:
    storage = make_storage(UserData)
    assert storage.get("user:1") is None
    storage.set("user:1", USER)
    got = storage.get("user:1")
    assert isinstance(got, UserData) and got.name == "Ada"
    storage.set("user:2", UserData(**USER))  # a model instance is accepted too
    assert storage.get("user:2") == got


@pytest.mark.parametrize(
    "schema,value",
    [
        (TypeAdapter(dict[str, int]), {"a": 1, "b": 2}),
        (dict[str, list[int]], {"xs": [1, 2, 3]}),
        (cs.typed_dict_schema({"n": cs.typed_dict_field(cs.int_schema())}), {"n": 5}),
        (str, "héllo ✓"),
        (list[int], [1, 2, 3]),
        (int | None, 7),
    ],
    ids=["TypeAdapter", "type", "CoreSchema", "str", "list", "optional"],
)
def test_schema_kinds(make_storage: Any, schema: object, value: object) -> None:
    storage = make_storage(schema)
    storage.set("k", value)
    assert storage.get("k") == value


def test_delete(make_storage: Any) -> None:
    storage = make_storage(UserData)
    storage.set("k", USER)
    storage.delete("k")
    assert storage.get("k") is None
    storage.delete("k")  # deleting a missing key is fine


# --- TTLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [80, timedelta(milliseconds=80)], ids=["ms", "timedelta"])
def test_ttl_expires(make_storage: Any, ttl: object) -> None:
    storage = make_storage(Counter)
    storage.set("k", {"count": 1}, ttl)
    storage.set("forever", {"count": 1})
    assert storage.get("k") == Counter(count=1)
    time.sleep(0.2)
    assert storage.get("k") is None
    assert storage.get("forever") == Counter(count=1)


@pytest.mark.parametrize(
    "ttl", [0, -1, float("nan"), 1.5, True, 10**14, timedelta(0), timedelta(seconds=-1), "100"]
)
def test_bad_ttl_refused_before_write(make_storage: Any, ttl: object) -> None:
    storage = make_storage(Counter)
    with pytest.raises(InvalidTTLError) as err:
        storage.set("k", {"count": 1}, ttl)
    assert "ttl_ms" in str(err.value)
    with pytest.raises(InvalidTTLError):
        storage.set_many({"k": {"count": 1}}, ttl)
    with pytest.raises(InvalidTTLError):
        storage.update("k", lambda c: {"value": {"count": 1}, "ttl_ms": ttl})
    assert storage.get("k") is None


def test_update_keeps_ttl_without_ttl_ms(make_storage: Any) -> None:
    storage = make_storage(Counter)
    storage.set("keep", {"count": 1}, 150)
    storage.set("reset", {"count": 1}, 150)
    storage.update("keep", increment)
    storage.update("reset", lambda c: UpdateResult({"count": 5}, ttl_ms=timedelta(seconds=30)))
    time.sleep(0.3)
    assert storage.get("keep") is None  # the TTL survived the update (KEEPTTL)
    assert storage.get("reset") == Counter(count=5)


# --- update -------------------------------------------------------------------------------


def test_update_creates_and_returns_new_value(make_storage: Any) -> None:
    storage = make_storage(Counter)
    assert storage.update("c", increment) == Counter(count=1)
    assert storage.update("c", increment) == Counter(count=2)
    assert storage.get("c") == Counter(count=2)


def test_update_returning_none_writes_nothing(make_storage: Any) -> None:
    storage = make_storage(Counter)
    assert storage.update("c", lambda current: None) is None
    assert storage.get("c") is None
    storage.set("c", {"count": 3})
    assert storage.update("c", lambda current: None) == Counter(count=3)


def test_updater_exception_propagates_and_releases(make_storage: Any) -> None:
    storage = make_storage(Counter, lock_timeout_ms=2000, lock_ttl_ms=10000)
    storage.set("c", {"count": 1})
    boom = RuntimeError("boom")

    def fail(current: object) -> None:
        raise boom

    with pytest.raises(RuntimeError) as err:
        storage.update("c", fail)
    assert err.value is boom  # the very same exception, unchanged
    started = time.monotonic()
    assert storage.update("c", increment) == Counter(count=2)
    assert time.monotonic() - started < 0.5  # the lock was released at once


@pytest.mark.parametrize(
    "returned",
    [
        {"value": {"count": -1}},
        {"value": {"count": "x"}},
        {"value": {"count": float("nan")}},
        {"value": b'{"count":1}'},
        {"value": {1, 2}},
        {"value": {"count": 1}, "ttl": 5},
        {"count": 1},
        Counter(count=1),
        42,
    ],
    ids=["constraint", "type", "nan", "bytes", "set", "unknown-field", "no-value", "bare", "int"],
)
def test_updater_invalid_result_refused(make_storage: Any, returned: object) -> None:
    storage = make_storage(Counter, lock_timeout_ms=2000, lock_ttl_ms=10000)
    storage.set("c", {"count": 1})
    with pytest.raises(InvalidValueError) as err:
        storage.update("c", lambda current: returned)
    assert "'c'" in str(err.value)
    assert storage.get("c") == Counter(count=1)
    started = time.monotonic()
    storage.update("c", increment)
    assert time.monotonic() - started < 0.5


def test_nan_and_infinity_are_refused(make_storage: Any) -> None:
    storage = make_storage(UserData)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InvalidValueError, match="JSON"):
            storage.set("u", {**USER, "lastLogin": bad})
    floats = make_storage(float)
    with pytest.raises(InvalidValueError, match="NaN"):
        floats.set("f", float("nan"))
    optional = make_storage(dict[str, float | None])
    with pytest.raises(InvalidValueError):
        optional.set("o", {"x": float("nan")})  # would silently become null
    optional.set("o", {"x": None, "y": 1.5})
    assert optional.get("o") == {"x": None, "y": 1.5}
    assert storage.get("u") is None


def test_reentrant_update_times_out_not_hangs(make_blocking_storage: Any) -> None:
    storage = make_blocking_storage(
        Counter, lock_timeout_ms=200, lock_ttl_ms=5000, lock_retry_ms=20
    )

    def nested(current: object) -> object:
        return storage.update("c", increment)

    started = time.monotonic()
    with pytest.raises(LockTimeoutError, match="Failed to acquire lock"):
        storage.update("c", nested)
    assert time.monotonic() - started < 1.0
    assert storage.update("c", increment) == Counter(count=1)


def test_lock_timeout_bounded(make_blocking_storage: Any) -> None:
    storage = make_blocking_storage(
        Counter, lock_timeout_ms=300, lock_ttl_ms=5000, lock_retry_ms=50
    )
    holding = threading.Event()
    release = threading.Event()

    def slow(current: object) -> object:
        holding.set()
        release.wait(5)
        return increment(None)

    holder = threading.Thread(target=storage.update, args=("c", slow))
    holder.start()
    assert holding.wait(5)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError) as err:
        storage.update("c", increment)
    elapsed = time.monotonic() - started
    release.set()
    holder.join()
    assert "Failed to acquire lock" in str(err.value)
    assert isinstance(err.value, StorageError)
    assert err.value.keys == ("c",)
    assert 0.29 <= elapsed <= 0.3 + 0.05 + 0.1  # lock_timeout_ms + lock_retry_ms (+ slack)


def test_lock_lost_when_ttl_expires(make_blocking_storage: Any) -> None:
    storage = make_blocking_storage(Counter, lock_timeout_ms=100, lock_ttl_ms=150, lock_retry_ms=10)
    other_done = threading.Event()

    def slow(current: object) -> object:
        # Outlive the lock; another caller takes it and commits meanwhile.
        other = threading.Thread(
            target=lambda: (
                storage.update("c", lambda c: {"value": {"count": 99}}),
                other_done.set(),
            )
        )
        time.sleep(0.2)
        other.start()
        other.join()
        return {"value": {"count": 1}}

    with pytest.raises(LockLostError) as err:
        storage.update("c", slow)
    assert other_done.is_set()
    assert err.value.keys == ("c",)
    assert storage.get("c") == Counter(count=99)  # the other writer's value is intact


# --- batches ------------------------------------------------------------------------------


def test_batches(make_storage: Any) -> None:
    storage = make_storage(Counter)
    storage.set_many({"a": {"count": 1}, "b": Counter(count=2)})
    storage.set_many([("c", {"count": 3})], ttl_ms=60_000)
    assert storage.get_many(["a", "b", "c", "missing", "a"]) == {
        "a": Counter(count=1),
        "b": Counter(count=2),
        "c": Counter(count=3),
        "missing": None,
    }
    assert storage.get_many([]) == {}
    result = storage.update_many(
        ["a", "b", "new"], lambda key, cur: None if key == "b" else increment(cur)
    )
    assert result == {"a": Counter(count=2), "b": Counter(count=2), "new": Counter(count=1)}
    storage.delete_many(["a", "new"])
    assert storage.get_many(["a", "b", "new"]) == {"a": None, "b": Counter(count=2), "new": None}
    storage.delete_many([])
    assert storage.update_many([], increment) == {}


def test_set_many_with_one_bad_value_writes_nothing(make_storage: Any) -> None:
    storage = make_storage(Counter)
    with pytest.raises(InvalidValueError, match="'bad'"):
        storage.set_many({"good": {"count": 1}, "bad": {"count": -5}})
    assert storage.get("good") is None


def test_batches_refuse_duplicates(make_storage: Any) -> None:
    storage = make_storage(Counter)
    with pytest.raises(InvalidKeyError, match="more than once"):
        storage.set_many([("a", {"count": 1}), ("a", {"count": 2})])
    with pytest.raises(InvalidKeyError, match="more than once"):
        storage.update_many(["a", "a"], lambda k, c: None)
    with pytest.raises(InvalidKeyError, match="iterable"):
        storage.get_many("abc")


def test_duplicate_keys_in_different_spellings_are_one_key(make_storage: Any) -> None:
    """`"x"` and `b"x"` are the same stored key: two updates of it in one batch would both be
    acknowledged while only one lands. Refused before anything is sent."""
    storage = make_storage(Counter)
    storage.set("x", {"count": 1})
    with pytest.raises(InvalidKeyError, match="more than once"):
        storage.update_many(["x", b"x"], lambda k, c: increment(c))
    with pytest.raises(InvalidKeyError, match="more than once"):
        storage.set_many([("é", {"count": 5}), ("é".encode(), {"count": 6})])
    assert storage.get("x") == Counter(count=1)
    assert storage.get("é") is None


def test_updater_mistakes_are_typed_errors_before_any_lock(make_storage: Any) -> None:
    storage = make_storage(Counter, lock_timeout_ms=2000, lock_ttl_ms=10000)
    storage.set("c", {"count": 1})
    for bad in (None, 42, "not callable"):
        with pytest.raises(InvalidUpdaterError, match="callable"):
            storage.update("c", bad)
        with pytest.raises(InvalidUpdaterError, match="callable"):
            storage.update_many(["c"], bad)
    # A mapping whose keys do not sort together is still a clear InvalidValueError.
    with pytest.raises(InvalidValueError, match="must return None"):
        storage.update("c", lambda current: {1: "a", "b": 2})
    started = time.monotonic()
    assert storage.update("c", increment) == Counter(count=2)  # no lock was left behind
    assert time.monotonic() - started < 0.5


def test_unserialisable_value_is_invalid_value(make_storage: Any) -> None:
    storage = make_storage(cs.any_schema())
    with pytest.raises(InvalidValueError, match="serialis"):
        storage.set("k", {"when": object()})
    with pytest.raises(InvalidValueError, match="serialis"):
        storage.update("k", lambda current: {"value": {"x": object()}})
    assert storage.get("k") is None


def test_update_many_failure_releases_all(make_storage: Any) -> None:
    storage = make_storage(Counter, lock_timeout_ms=2000, lock_ttl_ms=10000)

    def updater(key: str, current: Counter | None) -> object:
        if key == "b":
            raise KeyError(key)
        return increment(current)

    with pytest.raises(KeyError):
        storage.update_many(["a", "b", "c"], updater)
    assert storage.get_many(["a", "b", "c"]) == {"a": None, "b": None, "c": None}
    started = time.monotonic()
    storage.update_many(["a", "b", "c"], lambda k, c: increment(c))
    assert time.monotonic() - started < 0.5


# --- append -------------------------------------------------------------------------------


class Event(BaseModel):
    kind: str
    at: int


def test_append(make_storage: Any) -> None:
    storage = make_storage(list[Event])
    storage.append("log", {"kind": "login", "at": 1})
    storage.append("log", Event(kind="logout", at=2))
    assert storage.get("log") == [Event(kind="login", at=1), Event(kind="logout", at=2)]
    storage.set("empty", [])
    storage.append("empty", {"kind": "x", "at": 3})
    assert storage.get("empty") == [Event(kind="x", at=3)]
    with pytest.raises(InvalidValueError):
        storage.append("log", {"kind": "bad"})
    assert len(storage.get("log")) == 2


def test_append_keeps_ttl(make_storage: Any) -> None:
    storage = make_storage(list[int])
    storage.set("xs", [1], ttl_ms=150)
    storage.append("xs", 2)
    assert storage.get("xs") == [1, 2]
    time.sleep(0.3)
    assert storage.get("xs") is None


def test_append_to_bounded_list_validates_whole_list(make_storage: Any) -> None:
    storage = make_storage(TypeAdapter(list[int]).core_schema | {"max_length": 2})
    storage.append("xs", 1)
    storage.append("xs", 2)
    with pytest.raises(InvalidValueError):
        storage.append("xs", 3)
    assert storage.get("xs") == [1, 2]


def test_append_needs_list_schema(make_storage: Any) -> None:
    storage = make_storage(Counter)
    with pytest.raises(UnsupportedOperationError, match="list schema"):
        storage.append("c", {"count": 1})


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["*?[]{}\\", "with\x00nul", "ключ✓", b"\xff\xfe binary", "a" * 10_000, " ", "a:b:c"],
    ids=["glob", "nul", "unicode", "non-utf8", "long", "space", "colons"],
)
def test_odd_keys_round_trip(make_storage: Any, key: str | bytes) -> None:
    storage = make_storage(Counter)
    storage.set(key, {"count": 7})
    assert storage.get(key) == Counter(count=7)
    assert storage.update(key, increment) == Counter(count=8)
    assert storage.get_many([key]) == {key: Counter(count=8)}


def test_the_empty_key_is_a_key(make_storage: Any, request: pytest.FixtureRequest) -> None:
    """The TypeScript original stores a value under "" (at the prefix itself); so does this
    port — except on Redis Cluster, where "{}" is no hash tag at all."""
    storage = make_storage(Counter)
    if "cluster" in request.node.callspec.params["make_storage"]:
        with pytest.raises(InvalidKeyError, match="empty key"):
            storage.set("", {"count": 1})
        return
    storage.set("", {"count": 1})
    assert storage.get("") == Counter(count=1)
    assert storage.get(b"") == Counter(count=1)
    assert storage.update("", increment) == Counter(count=2)
    storage.delete("")
    assert storage.get("") is None


@pytest.mark.parametrize(
    "key",
    [5, None, "x:lock", "\ud800", "a" * 70_000],
    ids=["int", "none", "lock-suffix", "surrogate", "too-long"],
)
def test_bad_keys_refused(make_storage: Any, key: object) -> None:
    storage = make_storage(Counter)
    for call in (
        lambda: storage.set(key, {"count": 1}),
        lambda: storage.get(key),
        lambda: storage.update(key, increment),
        lambda: storage.get_many([key]),
        lambda: storage.set_many([(key, {"count": 1})]),
        lambda: storage.delete(key),
    ):
        with pytest.raises(InvalidKeyError):
            call()


def test_prefixes_do_not_bleed(make_storage: Any) -> None:
    a = make_storage(Counter, prefix="a:")
    b = make_storage(Counter, prefix="b:")
    a.set("k", {"count": 1})
    b.set("k", {"count": 2})
    b.update("k", increment)
    assert a.get("k") == Counter(count=1)
    a.delete_many(["k"])
    assert b.get("k") == Counter(count=3)


# --- concurrency --------------------------------------------------------------------------


def test_many_threads_share_one_adapter(make_storage: Any) -> None:
    storage = make_storage(Counter, lock_timeout_ms=30_000, lock_ttl_ms=30_000, lock_retry_ms=2)
    per_thread = 25
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                storage.update("shared", increment)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert storage.get("shared") == Counter(count=32 * per_thread)


def test_async_updater_refused_by_sync_storage(make_blocking_storage: Any) -> None:
    storage = make_blocking_storage(Counter, lock_timeout_ms=2000)

    async def updater(current: Counter | None) -> dict[str, Any]:
        return increment(current)

    with pytest.raises(UnsupportedOperationError, match="awaitable"):
        storage.update("c", updater)
    started = time.monotonic()
    assert storage.update("c", increment) == Counter(count=1)  # the lock was released
    assert time.monotonic() - started < 0.5
