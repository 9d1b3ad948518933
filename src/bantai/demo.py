"""`make demo` / `python -m bantai.demo`: the adapter doing its job, narrated.

Starts a throwaway `redis-server` on a free loopback port (or uses $REDIS_URL when set);
when no redis-server can be found it falls back to the in-memory storage and says so.

Needs no pydantic (an extra): the schemas are pydantic-core schemas, so values are plain
dicts; with `bantai[pydantic]` a model class works the same (see the README).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from contextlib import ExitStack
from typing import Any, TypedDict

from pydantic_core import core_schema as cs

from bantai import (
    InvalidValueError,
    LockTimeoutError,
    RuleContext,
    RuleResult,
    allow,
    create_async_memory_storage,
    create_async_redis_storage,
    create_memory_storage,
    create_redis_storage,
    define_context,
    define_policy,
    define_rate_limit_rule,
    define_rule,
    deny,
    evaluate_policy,
    evaluate_policy_sync,
    rate_limit,
    rate_limit_schema,
    with_rate_limit,
    with_storage,
)
from bantai.ratelimit.algorithms import RateLimitConfigDict
from bantai.testing import LocalRedisServer, RedisServerNotFound


class UserData(TypedDict):
    """The demo's user record (the shape of USER below)."""

    userId: str
    name: str
    lastLogin: int


class Counter(TypedDict):
    """The demo's counter (the shape of COUNTER below)."""

    count: int


# pydantic-core schemas: validation on write and on read, compact JSON, no pydantic needed.
USER = cs.typed_dict_schema(
    {
        "userId": cs.typed_dict_field(cs.str_schema()),
        "name": cs.typed_dict_field(cs.str_schema()),
        "lastLogin": cs.typed_dict_field(cs.int_schema()),
    }
)
COUNTER = cs.typed_dict_schema({"count": cs.typed_dict_field(cs.int_schema(ge=0))})
LOGIN = cs.typed_dict_schema({"userId": cs.typed_dict_field(cs.str_schema())})


def increment(current: Counter | None) -> dict[str, Counter]:
    """The updater of every counter here: +1 (from 0 when there is none yet)."""
    return {"value": {"count": (current["count"] if current else 0) + 1}}


def say(text: str) -> None:
    """Print a line of the demo."""
    print(f"  {text}")


def open_storages(stack: ExitStack) -> tuple[Any, Any, str]:
    """The demo's storages: on a throwaway local redis-server, or in memory when none is found."""
    url = os.environ.get("REDIS_URL")
    if not url:
        try:
            server = stack.enter_context(LocalRedisServer())
            url = server.url
        except RedisServerNotFound as exc:
            print(f"NOTICE: {exc}\nNOTICE: falling back to the in-memory storage.\n")
            opts = {"prefix": "demo:", "lock_timeout_ms": 300, "lock_ttl_ms": 2000}
            return (
                create_memory_storage(USER, opts),
                create_memory_storage(COUNTER, opts),
                "memory",
            )
    users = create_redis_storage({"url": url}, USER, {"prefix": "demo:"})
    counters = create_redis_storage(
        {"url": url},
        COUNTER,
        {"prefix": "demo:", "lock_timeout_ms": 300, "lock_ttl_ms": 2000, "lock_retry_ms": 5},
    )
    stack.callback(users.close)
    stack.callback(counters.close)
    return users, counters, url


def open_limiter(stack: ExitStack, where: str) -> Any:
    """The demo's rate-limit storage, next to the others."""
    if where == "memory":
        return create_memory_storage(rate_limit_schema, {"prefix": "demo:rl:"})
    limits = create_redis_storage({"url": where}, rate_limit_schema, {"prefix": "demo:rl:"})
    stack.callback(limits.close)
    return limits


async def asyncio_section(where: str) -> None:
    """6. The asyncio adapter: concurrent tasks on one auto-pipelined connection."""
    options = {"prefix": "demo:async:"}
    if where == "memory":
        counters: Any = create_async_memory_storage(COUNTER, options)
    else:
        counters = create_async_redis_storage({"url": where}, COUNTER, options)
    try:
        await counters.delete("visits")
        started = time.monotonic()
        await asyncio.gather(*(counters.update("visits", increment) for _ in range(50)))
        final = await counters.get("visits")
        elapsed = time.monotonic() - started
        say(f"asyncio.gather of 50 updates: count = {final['count']} (expected 50) "
            f"in {elapsed * 1000:.0f} ms")  # fmt: skip

        async def slow_increment(current: Counter | None) -> dict[str, Counter]:
            await asyncio.sleep(0.01)  # an updater may await: the lock is held meanwhile
            return increment(current)

        await asyncio.gather(*(counters.update("visits", slow_increment) for _ in range(5)))
        reads = await asyncio.gather(*(counters.get("visits") for _ in range(200)))
        counts = {read["count"] for read in reads}
        say(f"5 awaiting updaters, then 200 concurrent gets: they all read {counts} "
            "(expected {55})")  # fmt: skip
    finally:
        await counters.close()


def policy_section(users: Any, limits: Any) -> None:
    """7. A policy: a storage-backed rule and a rate-limit rule, evaluated in order."""
    context = with_rate_limit(
        with_storage(define_context(LOGIN), users),
        storage=limits,
        generate_key=lambda data: f"login:{data['userId']}",
    )

    def known_user(data: dict[str, str], ctx: RuleContext) -> RuleResult:
        user = ctx.tools.storage.get(f"user:{data['userId']}")
        return allow(reason=f"welcome, {user['name']}") if user else deny(reason="unknown user")

    def attempts_left(data: dict[str, str], ctx: RuleContext) -> RuleResult:
        return allow(reason=f"attempts left: {ctx.rate_limit.remaining}")

    policy = define_policy(
        context,
        "login",
        [
            define_rule(context, "known-user", known_user),
            define_rate_limit_rule(
                context,
                "login-attempts",
                attempts_left,
                config={"type": "fixed-window", "limit": 3, "period": "1m"},
            ),
        ],
    )
    limits.delete("rules:login-attempts:login:1")  # a fresh window, also on a long-lived Redis

    def narrate(label: str, data: dict[str, str]) -> None:
        result = evaluate_policy_sync(policy, data)
        reasons = "; ".join(f"{o.name}: {o.result.reason}" for o in result.evaluated_rules)
        say(f"{label}: {result.decision}  ({reasons})")

    for attempt in range(1, 5):
        narrate(f"user 1, attempt {attempt}", {"userId": "1"})
    narrate("user 404", {"userId": "404"})
    result = asyncio.run(evaluate_policy(policy, {"userId": "1"}))  # the asyncio twin
    say(f"evaluate_policy (asyncio), attempt 5: {result.decision}")


def main() -> None:
    """Run the demo (`make demo`)."""
    with ExitStack() as stack:
        users, counters, where = open_storages(stack)
        print(f"bantai demo on {where}\n")

        print("1. set / get (validated on write and on read)")
        ada: UserData = {"userId": "1", "name": "Ada", "lastLogin": int(time.time() * 1000)}
        users.set("user:1", ada)
        say(f"get('user:1') -> {users.get('user:1')!r}")
        if hasattr(users, "client"):
            say(f"stored as {users.client.get('demo:user:1')!r}  (compact JSON, like Node)")
        try:
            users.set("user:2", {"userId": 2, "name": "Bob"})
        except InvalidValueError as exc:
            say(f"set('user:2', bad) -> {type(exc).__name__}: {exc}")

        print("\n2. TTL")
        users.set("session", {"userId": "1", "name": "Ada", "lastLogin": 0}, ttl_ms=200)
        say(f"right after set(ttl_ms=200): {users.get('session') is not None}")
        time.sleep(0.3)
        say(f"300 ms later: {users.get('session')}")

        print("\n3. atomic update under contention: 8 threads x 50 increments")
        counters.delete("hits")
        started = time.monotonic()

        def work() -> None:
            for _ in range(50):
                counters.update("hits", increment)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        say(f"count = {counters.get('hits')['count']} (expected 400) in {elapsed:.2f} s")

        print("\n4. lock timeout: a slow holder keeps the lock, a second caller gives up")
        holding = threading.Event()

        def slow(current: Counter | None) -> dict[str, Counter]:
            holding.set()
            time.sleep(0.6)
            return {"value": {"count": 0}}

        holder = threading.Thread(target=counters.update, args=("hits", slow))
        holder.start()
        holding.wait()
        started = time.monotonic()
        try:
            counters.update("hits", lambda c: None)
        except LockTimeoutError as exc:
            say(f"{type(exc).__name__} after {time.monotonic() - started:.2f} s: {exc}")
        holder.join()
        say(f"the holder committed: count = {counters.get('hits')['count']}")

        print("\n5. rate limiting: 50 threads at once against 5 requests per minute")
        limits = open_limiter(stack, where)
        config: RateLimitConfigDict = {
            "type": "token-bucket",
            "limit": 5,
            "period": "1m",
            "key": "demo:user:1",
        }
        limits.delete("demo:user:1")  # a fresh bucket, also on a long-lived $REDIS_URL
        start = threading.Barrier(50)
        admitted: list[bool] = []

        def request() -> None:
            start.wait()
            admitted.append(rate_limit.consume(limits, config).allowed)

        burst = [threading.Thread(target=request) for _ in range(50)]
        for t in burst:
            t.start()
        for t in burst:
            t.join()
        say(f"admitted {sum(admitted)} of {len(admitted)} (expected 5: one atomic consume each)")

        print("\n6. asyncio: one adapter shared by many tasks, one connection")
        asyncio.run(asyncio_section(where))

        print("\n7. a policy: 'login' = a known user (storage) and 3 attempts a minute")
        policy_section(users, limits)
        print("\ndone.")


if __name__ == "__main__":
    main()
