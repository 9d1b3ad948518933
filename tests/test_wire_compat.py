"""Mixed fleets: a Python and a Node service (the TypeScript original) on one Redis.

Values are checked against bytes exactly as the original writes them (hand-written here:
`JSON.stringify` output, zod's rules), in both directions, on Redis and on the memory
storage; and the rate-limiting gaps the original's own tests exposed."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from bantai import (
    InvalidValueError,
    StoredValueError,
    allow,
    create_memory_storage,
    create_redis_storage,
    define_context,
    define_policy,
    define_rate_limit_rule,
    evaluate_policy_sync,
    rate_limit,
    rate_limit_check_result_schema,
    rate_limit_schema,
    with_rate_limit,
)
from bantai.codec import codec_for
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix
from tests.models import Counter


class Profile(BaseModel):
    name: str
    nickname: str | None = None  # zod: z.string().optional()
    bio: str | None  # zod: z.string().nullable() — required, may be null
    tags: list[str] = []


@pytest.fixture(params=["redis", "memory"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _make(kind: str, url: str, schema: object, **options: Any) -> Any:
    options.setdefault("prefix", unique_prefix())
    if kind == "memory":
        return create_memory_storage(schema, options)
    return create_redis_storage({"url": url}, schema, options)


def test_omit_none_defaults_writes_what_zod_optional_accepts(
    redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    plain = create_redis_storage({"url": redis_server.url}, Profile, {"prefix": "p1:"})
    node_safe = create_redis_storage(
        {"url": redis_server.url}, Profile, {"prefix": "p2:", "omit_none_defaults": True}
    )
    value = {"name": "ada", "bio": None}
    plain.set("u", value)
    node_safe.set("u", value)
    # The default: every field, None as null (zod's .optional() would reject "nickname").
    assert raw.get("p1:u") == b'{"name":"ada","nickname":null,"bio":null,"tags":[]}'
    # With the option: the None-defaulted field is left out like `undefined`; the required
    # nullable one keeps its null, as zod's .nullable() expects.
    assert raw.get("p2:u") == b'{"name":"ada","bio":null,"tags":[]}'
    assert node_safe.get("u") == Profile(name="ada", bio=None)
    # What the original writes (no nickname key at all) reads back either way.
    raw.set("p1:n", '{"name":"grace","bio":"hi","tags":["x"]}')
    assert plain.get("n") == Profile(name="grace", bio="hi", tags=["x"])
    node_safe.update("u", lambda current: {"value": current.model_copy(update={"tags": ["t"]})})
    assert raw.get("p2:u") == b'{"name":"ada","bio":null,"tags":["t"]}'
    plain.close()
    node_safe.close()


def test_omit_none_defaults_reaches_nested_values() -> None:
    class Inner(BaseModel):
        a: int | None = None
        b: int | None

    class Outer(BaseModel):
        x: Inner | None = None
        many: list[Inner] = []
        by_name: dict[str, Inner] = {}

    codec = codec_for(Outer).with_wire_rules(omit_none_defaults=True, js_safe_integers=False)
    _, data = codec.encode(
        {"many": [{"b": None}, {"a": 1, "b": 2}], "by_name": {"k": {"b": 3}}}, "k"
    )
    assert data == b'{"many":[{"b":null},{"a":1,"b":2}],"by_name":{"k":{"b":3}}}'


def test_js_safe_integers_refuses_what_javascript_would_change(
    storage_kind: str, redis_server: LocalRedisServer
) -> None:
    strict = _make(storage_kind, redis_server.url, dict[str, int], js_safe_integers=True)
    loose = _make(storage_kind, redis_server.url, dict[str, int])
    strict.set("ok", {"n": 2**53 - 1, "m": -(2**53 - 1)})
    with pytest.raises(InvalidValueError, match="safe integers") as err:
        strict.set("big", {"n": 2**53})
    assert err.value.key == "big" and "at n" in str(err.value)
    assert strict.get("big") is None  # refused before anything was written
    with pytest.raises(InvalidValueError):
        strict.update("ok", lambda current: {"value": {"n": 2**60}})
    assert strict.get("ok") == {"n": 2**53 - 1, "m": -(2**53 - 1)}
    loose.set("big", {"n": 2**60})  # without the option: Python's own integers
    assert loose.get("big") == {"n": 2**60}


def test_the_original_s_value_under_the_empty_key_is_read(
    redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    raw.set("app:", '{"count":3}')  # the original's set("", ...) with prefix "app:"
    storage = create_redis_storage({"url": redis_server.url}, Counter, {"prefix": "app:"})
    assert storage.get("") == Counter(count=3)
    storage.close()


def test_append_refuses_the_corrupt_list_the_original_can_leave(
    storage_kind: str, redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    storage = _make(storage_kind, redis_server.url, list[str], prefix="ap:")
    if storage_kind == "redis":
        raw.set("ap:log", '["a1","a2"]["b1"]')
    else:
        storage._core._data[b"ap:log"] = (b'["a1","a2"]["b1"]', None)
    with pytest.raises(StoredValueError) as err:
        storage.append("log", "c1")
    assert err.value.key == "log"
    if storage_kind == "redis":
        assert raw.get("ap:log") == b'["a1","a2"]["b1"]'  # untouched
    storage.set("log", ["a"])
    storage.append("log", "b")
    assert storage.get("log") == ["a", "b"]


def test_lone_surrogates_are_refused_both_ways(
    storage_kind: str, redis_server: LocalRedisServer, raw: redis.Redis
) -> None:
    """Node's JSON.stringify writes a lone surrogate as the escape \\ud800; Python cannot
    hold it in valid UTF-8 text. Decided: refused both ways, with typed errors — never a
    silently replaced character that would then be written back."""
    storage = _make(storage_kind, redis_server.url, dict[str, str], prefix="sg:")
    with pytest.raises(InvalidValueError) as err:
        storage.set("k", {"name": "\ud800"})
    assert err.value.key == "k"
    assert storage.get("k") is None
    if storage_kind == "redis":
        raw.set("sg:node", b'{"name":"\\ud800"}')  # exactly what the original writes
        with pytest.raises(StoredValueError) as stored:
            storage.get("node")
        assert stored.value.key == "node"


# --- rate limiting, parity with the original's tests --------------------------------------


@pytest.fixture
def limits(storage_kind: str, redis_server: LocalRedisServer) -> Any:
    return _make(storage_kind, redis_server.url, rate_limit_schema, prefix="rlc:")


@pytest.mark.parametrize("kind", ["fixed-window", "sliding-window", "token-bucket"])
def test_limit_zero_always_denies(limits: Any, kind: str) -> None:
    config = {"type": kind, "limit": 0, "period": "1m", "key": f"zero-{kind}"}
    for _ in range(3):
        result = rate_limit.consume(limits, config)
        assert (result.allowed, result.remaining) == (False, 0)
        assert result.reset_at > time.time() * 1000
    check = rate_limit.check(limits, config)
    assert (check.allowed, check.remaining) == (False, 0)


class GetSetOnly:
    """A storage with only get / set / delete: the original's StorageAdapter makes
    `update` optional."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any, ttl_ms: int | None = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def test_a_storage_without_update_still_counts() -> None:
    storage = GetSetOnly()
    config = {"type": "fixed-window", "limit": 2, "period": "1h", "key": "api"}
    rate_limit.increment(storage, config)
    assert rate_limit.check(storage, config).remaining == 0  # one counted, one would pass
    assert rate_limit.consume(storage, config).allowed is True
    assert rate_limit.consume(storage, config).allowed is False
    (stored,) = storage.data.values()
    assert stored == {"type": "fixed-window", "count": 2}


def test_check_results_have_a_schema() -> None:
    from pydantic_core import SchemaValidator

    validator = SchemaValidator(rate_limit_check_result_schema)
    storage = create_memory_storage(rate_limit_schema)
    result = rate_limit.consume(storage, {"type": "token-bucket", "limit": 2, "period": "1s",
                                          "key": "k"})  # fmt: skip
    assert validator.validate_python(result.to_json()) == result.to_json()
    with pytest.raises(Exception, match="greater than or equal"):
        validator.validate_python({**result.to_json(), "remaining": -1})


@pytest.mark.parametrize(
    "planted",
    [
        '{"type":"fixed-window","count":-10}',
        '{"type":"fixed-window","count":1.5}',
        '{"type":"fixed-window"}',
        "not json",
        '{"type":"leaky-bucket","count":1}',
        '["fixed-window"]',
    ],
    ids=["negative", "fraction", "missing", "not-json", "unknown-type", "not-an-object"],
)
def test_a_planted_state_is_never_trusted(
    storage_kind: str, redis_server: LocalRedisServer, raw: redis.Redis, planted: str
) -> None:
    """A planted {"count":-10} used to admit 13 of 20 at limit 3 on Redis."""
    now = 1_700_000_000_000
    config = {"type": "fixed-window", "limit": 3, "period": "1h", "key": "k"}
    window = f"k:{now // 3_600_000 * 3_600_000}"
    limits = _make(storage_kind, redis_server.url, rate_limit_schema, prefix="pl:")
    if storage_kind == "redis":
        raw.set(f"pl:{window}", planted)
    else:
        limits._core._data[f"pl:{window}".encode()] = (planted.encode(), None)
    admitted = 0
    for _ in range(5):
        with pytest.raises(StoredValueError) as err:
            admitted += rate_limit.consume(limits, config, clock=lambda: now).allowed
        assert err.value.key in (window, "k")
    assert admitted == 0
    if storage_kind == "redis":
        assert raw.get(f"pl:{window}") == planted.encode()  # nothing written


@pytest.mark.parametrize("choice", ["deny", "allow", "raise"])
def test_on_storage_error(
    own_redis_server: Any, caplog: pytest.LogCaptureFixture, choice: str
) -> None:
    server = own_redis_server()
    storage = create_redis_storage(
        {"client": redis.Redis.from_url(server.url, socket_timeout=0.5)},
        rate_limit_schema,
        {"prefix": "se:"},
    )
    context = with_rate_limit(define_context(dict[str, str]), storage=storage)
    rule = define_rate_limit_rule(
        context,
        "api-limit",
        lambda data, ctx: allow(reason="own logic"),
        config={"type": "fixed-window", "limit": 5, "period": "1m", "key": "k"},
        on_storage_error=choice,  # type: ignore[arg-type]
    )
    policy = define_policy(context, "p", [rule])
    assert evaluate_policy_sync(policy, {}).decision == "allow"
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    with caplog.at_level(logging.WARNING, logger="bantai"):
        if choice == "raise":
            with pytest.raises(redis.exceptions.ConnectionError):
                evaluate_policy_sync(policy, {})
        else:
            result = evaluate_policy_sync(policy, {})
            if choice == "deny":
                assert result.decision == "deny"
                assert result.violated_rules[0].result.reason == "rate_limit_storage_error"
            else:
                assert result.decision == "allow"
                assert result.evaluated_rules[0].result.reason == "own logic"
    warnings = [r.getMessage() for r in caplog.records if r.name == "bantai"]
    assert warnings and "'api-limit'" in warnings[0] and choice in warnings[0]
    storage.close()
