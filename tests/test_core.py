"""Bantai core: the examples of the TypeScript original's documentation, ported, and the
policy engine's rules."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from bantai import (
    InvalidOptionError,
    InvalidRuleError,
    InvalidValueError,
    UnsupportedOperationError,
    allow,
    create_async_memory_storage,
    create_redis_storage,
    define_context,
    define_policy,
    define_rule,
    deny,
    evaluate_policy,
    evaluate_policy_sync,
    skip,
    with_storage,
)
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix
from tests.models import Counter, UserData


class UserInput(BaseModel):
    userId: str


class Session(BaseModel):
    userId: str
    expiresAt: int


# --- the TypeScript original's documented examples --------------------------------


def test_original_quick_start(redis_server: LocalRedisServer) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url},
        UserData,
        {"prefix": unique_prefix(), "lock_timeout_ms": 5000, "lock_ttl_ms": 10000},
    )
    context = with_storage(define_context(UserInput), storage)

    def get_user(data: UserInput, ctx: Any) -> Any:
        user = ctx.tools.storage.get(f"user:{data.userId}")
        if not user:
            return deny(reason="User not found")
        return allow(reason=f"User: {user.name}")

    policy = define_policy(context, "users", [define_rule(context, "get-user", get_user)])
    assert evaluate_policy_sync(policy, {"userId": "1"}).violated_rules[0].result.reason == (
        "User not found"
    )
    storage.set("user:1", {"userId": "1", "name": "Ada", "lastLogin": 0})
    result = evaluate_policy_sync(policy, {"userId": "1"})
    assert result.is_allowed and result.evaluated_rules[0].result.reason == "User: Ada"
    storage.close()


def test_original_session_counter_and_cache(redis_server: LocalRedisServer) -> None:
    async def main() -> None:
        from bantai import create_async_redis_storage

        prefix = unique_prefix()
        sessions = create_async_redis_storage(
            {"url": redis_server.url}, Session, {"prefix": prefix}
        )
        counters = create_async_redis_storage(
            {"url": redis_server.url}, Counter, {"prefix": prefix}
        )
        context = with_storage(
            with_storage(define_context(dict[str, str]), sessions), counters, "counters"
        )

        async def check_session(data: dict[str, str], ctx: Any) -> Any:
            session = await ctx.tools.storage.get(data["sessionId"])
            if not session:
                return deny(reason="Session not found")
            if session.expiresAt < time.time() * 1000:
                await ctx.tools.storage.delete(data["sessionId"])
                return deny(reason="Session expired")
            return allow(reason="Session valid")

        async def increment(data: dict[str, str], ctx: Any) -> Any:
            new = await ctx.tools.storage["counters"].update(
                data["sessionId"] + ":hits",
                lambda c: {"value": {"count": (c.count if c else 0) + 1}, "ttl_ms": 3_600_000},
            )
            return allow(reason=f"Counter: {new.count}")

        policy = define_policy(
            context,
            "session",
            [
                define_rule(context, "check-session", check_session),
                define_rule(context, "increment", increment),
            ],
        )
        denied = await evaluate_policy(policy, {"sessionId": "s1"})
        assert denied.decision == "deny" and denied.violated_rules[0].result.reason == (
            "Session not found"
        )
        await sessions.set(
            "s1", {"userId": "u", "expiresAt": int(time.time() * 1000) + 60_000}, ttl_ms=60_000
        )
        ok = await evaluate_policy(policy, {"sessionId": "s1"})
        assert ok.is_allowed and ok.evaluated_rules[1].result.reason == "Counter: 1"
        await sessions.set("s2", {"userId": "u", "expiresAt": 1})
        expired = await evaluate_policy(policy, {"sessionId": "s2"})
        assert expired.violated_rules[0].result.reason == "Session expired"
        assert await sessions.get("s2") is None
        assert sorted(context.tools.storage) == ["counters", "default"]
        await sessions.close()
        await counters.close()

    asyncio.run(main())


# --- policies ----------------------------------------------------------------------------


def _recording_rules(context: Any, log: list[str]) -> list[Any]:
    def rule(name: str, result: Any) -> Any:
        def evaluate(data: Any, ctx: Any) -> Any:
            log.append(f"eval:{name}")
            return result

        return define_rule(
            context,
            name,
            evaluate,
            on_allow=lambda r, d, c: log.append(f"allow:{name}"),
            on_deny=lambda r, d, c: log.append(f"deny:{name}"),
        )

    return [rule("a", allow()), rule("b", deny(reason="no")), rule("c", skip())]


def test_preemptive_and_exhaustive() -> None:
    context = define_context(UserInput)
    log: list[str] = []
    policy = define_policy(context, "p", _recording_rules(context, log))
    result = evaluate_policy_sync(policy, {"userId": "u"})
    assert log == ["eval:a", "allow:a", "eval:b", "deny:b"]  # stops at the first deny
    assert (result.decision, result.reason, result.strategy) == (
        "deny",
        "policy_violated",
        "preemptive",
    )
    assert [o.name for o in result.violated_rules] == ["b"]
    assert [o.name for o in result.evaluated_rules] == ["a", "b"]
    log.clear()
    result = evaluate_policy_sync(policy, {"userId": "u"}, strategy="exhaustive")
    # all rules evaluated, then hooks by the final decision (deny): only deny hooks run
    assert log == ["eval:a", "eval:b", "eval:c", "deny:b"]
    assert [o.name for o in result.evaluated_rules] == ["a", "b", "c"]
    assert result.evaluated_rules[2].result.skipped
    assert (
        len(result.evaluation_id) == 36
        and result.evaluation_id != evaluate_policy_sync(policy, {"userId": "u"}).evaluation_id
    )


def test_allowed_policy_runs_allow_hooks_exhaustive() -> None:
    context = define_context(UserInput)
    log: list[str] = []
    rules = _recording_rules(context, log)
    policy = define_policy(context, "p", [rules[0], rules[2]], default_strategy="exhaustive")
    result = evaluate_policy_sync(policy, {"userId": "u"})
    assert result.is_allowed and result.reason == "policy_enforced"
    assert log == ["eval:a", "eval:c", "allow:a", "allow:c"]


def test_async_rules_and_errors() -> None:
    context = define_context(UserInput, default_values={"userId": "anonymous"})
    boom = RuntimeError("boom")

    async def async_allow(data: UserInput, ctx: Any) -> Any:
        await asyncio.sleep(0)
        return allow(reason=data.userId)

    def raises(data: Any, ctx: Any) -> Any:
        raise boom

    policy = define_policy(
        context,
        "p",
        [
            define_rule(context, "async", async_allow),
            define_rule(context, "raises", raises),
        ],
    )
    result = asyncio.run(evaluate_policy(policy, {}))
    assert result.evaluated_rules[0].result.reason == "anonymous"  # defaults merged
    failed = result.violated_rules[0].result
    assert failed.reason == "rule_evaluation_error" and failed.error is boom
    with pytest.raises(UnsupportedOperationError, match="coroutine"):
        evaluate_policy_sync(policy, {})


def test_input_and_definition_errors() -> None:
    with pytest.raises(InvalidOptionError, match="userId"):
        define_context(UserInput, default_values={"userId": 5})
    with pytest.raises(InvalidOptionError, match="unknown"):
        define_context(UserInput, default_values={"nope": 1})
    context = define_context(UserInput)
    policy = define_policy(context, "p", [define_rule(context, "a", lambda d, c: allow())])
    with pytest.raises(InvalidValueError):
        evaluate_policy_sync(policy, {"userId": 42})
    with pytest.raises(InvalidOptionError):
        define_policy(context, "p", [], default_strategy="sometimes")  # type: ignore[arg-type]
    rule = define_rule(context, "a", lambda d, c: allow())
    with pytest.raises(InvalidOptionError, match="unique"):
        define_policy(context, "p", [rule, rule])
    # Definition mistakes are typed errors (InvalidRuleError is a ValueError and a TypeError).
    with pytest.raises(InvalidRuleError, match="name"):
        define_rule(context, "", lambda d, c: allow())
    with pytest.raises(InvalidRuleError, match="evaluate must be callable"):
        define_rule(context, "r", "allow")  # type: ignore[arg-type]
    with pytest.raises(InvalidRuleError, match="on_deny must be callable"):
        define_rule(context, "r", lambda d, c: allow(), on_deny=42)  # type: ignore[arg-type]
    odd = define_policy(context, "odd", [define_rule(context, "r", lambda d, c: "yes")])
    result = evaluate_policy_sync(odd, {"userId": "u"})
    assert result.decision == "deny" and isinstance(
        result.violated_rules[0].result.error, InvalidRuleError
    )


def test_with_storage_keeps_names_and_works_with_async_memory() -> None:
    first = create_async_memory_storage(Counter)
    second = create_async_memory_storage(Counter)
    context = with_storage(with_storage(define_context(UserInput), first), second, "other")
    assert context.tools.storage["default"] is first
    assert context.tools.storage["other"] is second
    assert context.tools.storage.update == first.update  # attribute access: the default


class CacheEntry(BaseModel):
    data: str
    cachedAt: int


def test_original_cache_rule_with_ttl(redis_server: LocalRedisServer) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url}, CacheEntry, {"prefix": unique_prefix()}
    )
    context = with_storage(define_context(dict[str, str]), storage)
    fetches: list[str] = []

    def get_cached(data: dict[str, str], ctx: Any) -> Any:
        if ctx.tools.storage.get(data["cacheKey"]):
            return allow(reason="Cache hit")
        fetches.append(data["cacheKey"])
        ctx.tools.storage.set(
            data["cacheKey"],
            {"data": "payload", "cachedAt": int(time.time() * 1000)},
            5 * 60 * 1000,
        )
        return allow(reason="Data cached")

    policy = define_policy(context, "cache", [define_rule(context, "get-cached", get_cached)])
    reasons = [
        evaluate_policy_sync(policy, {"cacheKey": "c"}).evaluated_rules[0].result.reason
        for _ in range(2)
    ]
    assert reasons == ["Data cached", "Cache hit"] and fetches == ["c"]
    assert 0 < storage.client.pttl(storage.options.prefix + "c") <= 300_000
    storage.close()
