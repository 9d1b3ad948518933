"""`make demo` / `python -m bantai.demo`: the adapter doing its job, narrated.

Starts a throwaway `redis-server` on a free loopback port (or uses $REDIS_URL when set);
when no redis-server can be found it falls back to the in-memory storage and says so.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from typing import Any

from pydantic import BaseModel

from bantai import (
    InvalidValueError,
    LockTimeoutError,
    create_memory_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from bantai.ratelimit.algorithms import RateLimitConfigDict
from bantai.testing import LocalRedisServer, RedisServerNotFound


class UserData(BaseModel):
    """The demo's user record."""

    userId: str
    name: str
    lastLogin: int


class Counter(BaseModel):
    """The demo's counter."""

    count: int


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
                create_memory_storage(UserData, opts),
                create_memory_storage(Counter, opts),
                "memory",
            )
    users = create_redis_storage({"url": url}, UserData, {"prefix": "demo:"})
    counters = create_redis_storage(
        {"url": url},
        Counter,
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


def main() -> None:
    """Run the demo (`make demo`)."""
    with ExitStack() as stack:
        users, counters, where = open_storages(stack)
        print(f"bantai demo on {where}\n")

        print("1. set / get (validated on write and on read)")
        users.set("user:1", {"userId": "1", "name": "Ada", "lastLogin": int(time.time() * 1000)})
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
                counters.update("hits", lambda c: {"value": {"count": (c.count if c else 0) + 1}})

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        say(f"count = {counters.get('hits').count} (expected 400) in {elapsed:.2f} s")

        print("\n4. lock timeout: a slow holder keeps the lock, a second caller gives up")
        holding = threading.Event()

        def slow(current: Counter | None) -> dict[str, Any]:
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
        say(f"the holder committed: count = {counters.get('hits').count}")

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
        print("\ndone.")


if __name__ == "__main__":
    main()
