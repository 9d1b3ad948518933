"""Property test: the memory storage and the Redis adapter give the same results for any
sequence of operations (so code tested against one behaves the same on the other)."""

from __future__ import annotations

from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bantai import BantaiError, create_memory_storage, create_redis_storage
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix

keys = st.sampled_from(["a", "b", "ключ", "x:y", "*"])
values = st.lists(st.integers(-(2**53), 2**53), max_size=4)
updaters = st.sampled_from(["append-len", "none", "reset", "bad"])
operations = st.one_of(
    st.tuples(st.just("set"), keys, values),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("append"), keys, st.integers(-5, 5) | st.just("not-an-int")),
    st.tuples(st.just("update"), keys, updaters),
    st.tuples(st.just("get_many"), st.lists(keys, max_size=4)),
    st.tuples(st.just("set_many"), st.dictionaries(keys, values, max_size=3)),
    st.tuples(st.just("delete_many"), st.lists(keys, max_size=3)),
    st.tuples(st.just("update_many"), st.lists(keys, max_size=3, unique=True), updaters),
)


def _updater(kind: str) -> Any:
    def update(current: list[int] | None) -> Any:
        if kind == "none":
            return None
        if kind == "reset":
            return {"value": []}
        if kind == "bad":
            return {"value": ["x"]}
        return {"value": [*(current or []), len(current or [])]}

    return update


def _apply(storage: Any, op: tuple[Any, ...]) -> Any:
    name, *args = op
    try:
        if name == "update":
            return storage.update(args[0], _updater(args[1]))
        if name == "update_many":
            fn = _updater(args[1])
            return storage.update_many(args[0], lambda key, current: fn(current))
        return getattr(storage, name)(*args)
    except BantaiError as exc:
        return type(exc).__name__


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(operations, max_size=12))
def test_memory_and_redis_agree(redis_server: LocalRedisServer, ops: list[tuple[Any, ...]]) -> None:
    prefix = unique_prefix()
    client = redis.Redis.from_url(redis_server.url)
    on_redis = create_redis_storage({"client": client}, list[int], {"prefix": prefix})
    in_memory = create_memory_storage(list[int], {"prefix": prefix})
    for op in ops:
        assert _apply(on_redis, op) == _apply(in_memory, op), op
    assert client.keys(prefix + "*lock") == []
    client.close()
