"""bantai.web against real Redis servers: the FastAPI dependency and the ASGI middleware
answer 429 with Retry-After and the IETF RateLimit / RateLimit-Policy headers, key by
client address, fail as `on_storage_error` says, and do the same under a real uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bantai import (
    InvalidOptionError,
    allow,
    create_async_redis_storage,
    create_redis_storage,
    define_context,
    define_policy,
    define_rate_limit_rule,
    define_rule,
    deny,
    rate_limit_schema,
    with_rate_limit,
)
from bantai.ratelimit import RateLimitConfig, RateLimitResult
from bantai.testing import LocalRedisServer, free_port
from bantai.web import BantaiMiddleware, PolicyGuard, RateLimit, rate_limit_headers
from tests.conftest import unique_prefix

T0 = 1_700_000_040_000  # on a minute boundary: fixed windows of 1 m start here


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def client(app: Any, address: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def headers_of(response: httpx.Response) -> tuple[int, str | None, str | None, str | None]:
    h = response.headers
    return response.status_code, h.get("RateLimit"), h.get("RateLimit-Policy"), h.get("Retry-After")


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())


def test_dependency_counts_per_client_and_answers_429(redis_server: LocalRedisServer) -> None:
    clock = Clock()

    async def main() -> None:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, rate_limit_schema, {"prefix": unique_prefix()}
        )
        limit = RateLimit(
            storage, {"type": "fixed-window", "limit": 3, "period": "1m"}, name="api", clock=clock
        )
        app = FastAPI()

        @app.get("/search", dependencies=[Depends(limit)])
        async def search() -> dict[str, str]:
            return {"ok": "yes"}

        policy = '"api";q=3;w=60'
        async with client(app) as alice, client(app, "10.0.0.2") as bob:
            answers = [headers_of(await alice.get("/search")) for _ in range(3)]
            assert answers == [
                (200, '"api";r=2;t=60', policy, None),
                (200, '"api";r=1;t=60', policy, None),
                (200, '"api";r=0;t=60', policy, None),
            ]
            clock.now += 15_000
            refused = await alice.get("/search")
            assert headers_of(refused) == (429, '"api";r=0;t=45', policy, "45")
            assert refused.json()["detail"].startswith("rate_limit_exceeded: limit of 3 reached")
            # another client address is another bucket
            assert headers_of(await bob.get("/search"))[:2] == (200, '"api";r=2;t=45')
            clock.now += 45_000  # the next window
            assert headers_of(await alice.get("/search"))[:2] == (200, '"api";r=2;t=60')
        await storage.close()

    run(main)


def test_gcra_retry_after_is_the_spacing(redis_server: LocalRedisServer) -> None:
    clock = Clock()

    async def main() -> list[tuple[int, str | None]]:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, rate_limit_schema, {"prefix": unique_prefix()}
        )
        limit = RateLimit(storage, {"type": "gcra", "limit": 2, "period": "10s"}, clock=clock)
        app = FastAPI(dependencies=[Depends(limit)])

        @app.get("/")
        async def root() -> str:
            return "ok"

        seen = []
        async with client(app) as http:
            for advance in (0, 0, 0, 4999, 1):
                clock.now += advance
                response = await http.get("/")
                seen.append((response.status_code, response.headers.get("Retry-After")))
        await storage.close()
        return seen

    # a burst of 2, then one per 5 s: the refusal says 5 s, 1 ms before it 1 s, then in
    assert run(main) == [(200, None), (200, None), (429, "5"), (429, "1"), (200, None)]


def test_middleware_keys_by_api_key_and_keeps_the_app_headers(
    redis_server: LocalRedisServer,
) -> None:
    async def homepage(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello", headers={"X-App": "kept"})

    def api_key(request: Request) -> str | None:
        return request.headers.get("X-API-Key")  # None: not limited

    async def main() -> None:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, rate_limit_schema, {"prefix": unique_prefix()}
        )
        guard = RateLimit(
            storage, {"type": "token-bucket", "limit": 2, "period": "1h"}, key=api_key, name="k"
        )
        app = Starlette(routes=[Route("/", homepage)])
        app.add_middleware(BantaiMiddleware, guard=guard)
        async with client(app) as http:
            first = await http.get("/", headers={"X-API-Key": "a"})
            assert first.text == "hello" and first.headers["X-App"] == "kept"
            assert first.headers["RateLimit"].startswith('"k";r=1;t=')
            assert first.headers["RateLimit-Policy"] == '"k";q=2;w=3600'
            assert (await http.get("/", headers={"X-API-Key": "a"})).status_code == 200
            refused = await http.get("/", headers={"X-API-Key": "a"})
            assert refused.status_code == 429 and "X-App" not in refused.headers
            # a token comes back every 30 minutes: Retry-After says so, rounded up (the
            # token bucket's retry_after_ms is never early and may be 1 ms late: 1801)
            assert 1799 <= int(refused.headers["Retry-After"]) <= 1801
            assert (await http.get("/", headers={"X-API-Key": "b"})).status_code == 200
            for _ in range(5):  # no key: not limited, no headers
                anonymous = await http.get("/")
                assert anonymous.status_code == 200 and "RateLimit" not in anonymous.headers
        await storage.close()

    run(main)


class ApiInput(BaseModel):
    userId: str
    endpoint: str


def test_policy_guard_keys_rate_limits_by_client_and_maps_denials(
    redis_server: LocalRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, rate_limit_schema, {"prefix": unique_prefix()}
        )
        context = with_rate_limit(define_context(ApiInput), storage=storage)  # no generate_key
        limited = define_rate_limit_rule(
            context, "per-client", lambda data, ctx: allow(),
            config={"type": "fixed-window", "limit": 2, "period": "1h"},
        )  # fmt: skip
        admin_only = define_rule(
            context,
            "admin-only",
            lambda data, ctx: deny(reason="admins only") if data.endpoint == "/admin" else allow(),
        )
        policy = define_policy(context, "api", [admin_only, limited])
        with caplog.at_level(logging.WARNING, logger="bantai"):
            guard = PolicyGuard(
                policy, lambda r: {"userId": r.headers.get("X-User", "-"), "endpoint": r.url.path}
            )
        assert "have no generate_key" in caplog.text
        app = FastAPI()

        @app.get("/{path:path}", dependencies=[Depends(guard)])
        async def anything(path: str) -> str:
            return path

        async with client(app) as alice, client(app, "10.0.0.9") as bob:
            assert [(await alice.get("/x")).status_code for _ in range(3)] == [200, 200, 429]
            refused = await alice.get("/x")
            assert refused.headers["RateLimit-Policy"] == '"per-client";q=2;w=3600'
            assert refused.headers["RateLimit"].startswith('"per-client";r=0;t=')
            assert int(refused.headers["Retry-After"]) >= 1
            assert (await bob.get("/x")).status_code == 200  # its own bucket
            forbidden = await bob.get("/admin")
            assert forbidden.status_code == 403 and forbidden.json() == {"detail": "admins only"}
        await storage.close()

    run(main)


@pytest.mark.parametrize("choice", ["deny", "allow", "raise"])
def test_storage_down(
    choice: Any, own_redis_server: Callable[..., LocalRedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_redis_server()
    url = server.url
    server.stop()  # nothing listens there now

    async def main() -> httpx.Response:
        storage = create_async_redis_storage({"url": url}, rate_limit_schema)
        limit = RateLimit(
            storage, {"type": "gcra", "limit": 5, "period": "1s"}, name="down",
            on_storage_error=choice,
        )  # fmt: skip
        app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
        app.add_middleware(BantaiMiddleware, guard=limit)
        try:
            async with client(app) as http:
                return await http.get("/")
        finally:
            await storage.close()

    with caplog.at_level(logging.WARNING, logger="bantai"):
        if choice == "raise":
            with pytest.raises(Exception) as raised:
                run(main)
            assert "ConnectionError" in type(raised.value).__name__
        else:
            response = run(main)
            if choice == "deny":
                assert response.status_code == 503 and response.headers["Retry-After"] == "1"
                assert "unavailable" in response.json()["detail"]
            else:
                assert response.status_code == 200 and "RateLimit" not in response.headers
    assert "rate limit 'down': storage error" in caplog.text


def test_a_blocking_storage_runs_off_the_event_loop(redis_server: LocalRedisServer) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url}, rate_limit_schema, {"prefix": unique_prefix()}
    )
    limit = RateLimit(storage, {"type": "sliding-window-counter", "limit": 20, "period": "1h"})
    app = FastAPI(dependencies=[Depends(limit)])

    @app.get("/")
    async def root() -> str:
        return "ok"

    async def main() -> list[int]:
        async with client(app) as http:
            responses = await asyncio.gather(*(http.get("/") for _ in range(30)))
        return sorted(r.status_code for r in responses)

    assert run(main) == [200] * 20 + [429] * 10  # concurrent, and exactly the limit
    storage.close()


def test_headers_for_each_kind_of_decision() -> None:
    config = RateLimitConfig.parse({"type": "token-bucket", "limit": 10, "period": "10s"})
    admitted = RateLimitResult(True, 9, T0 + 1000, "ok", T0, 0)
    assert rate_limit_headers("p", config, admitted) == (
        ("RateLimit-Policy", '"p";q=10;w=10'),
        ("RateLimit", '"p";r=9;t=1'),
    )
    never = RateLimitResult(False, 3, T0 + 7001, "cost 11 is more than the limit", T0, None)
    assert rate_limit_headers("p", config, never)[1:] == (("RateLimit", '"p";r=3;t=8'),)
    soon = RateLimitResult(False, 0, T0 + 10_000, "full", T0, 1)  # rounds up to 1 s
    assert rate_limit_headers("p", config, soon)[2] == ("Retry-After", "1")
    sub_second = RateLimitConfig.parse({"type": "gcra", "limit": 5, "period": "500ms"})
    assert rate_limit_headers("p", sub_second, admitted)[0] == ("RateLimit-Policy", '"p";q=5;w=1')


def test_bad_options_are_refused_when_defined(redis_server: LocalRedisServer) -> None:
    storage = create_redis_storage({"url": redis_server.url}, rate_limit_schema)
    good = {"type": "gcra", "limit": 5, "period": "1s"}
    for kwargs, words in [
        ({"name": 'a "quoted" name'}, "name must be"),
        ({"on_storage_error": "ignore"}, "on_storage_error"),
        ({"cost": -1}, "cost"),
        ({"key": "10.0.0.1"}, "key must be a function"),
    ]:
        with pytest.raises(InvalidOptionError, match=words):
            RateLimit(storage, good, **kwargs)
    with pytest.raises(InvalidOptionError):
        RateLimit(storage, {**good, "limit": -1})
    context = with_rate_limit(define_context(ApiInput), storage=storage, generate_key=str)
    policy = define_policy(context, "p", [])
    with pytest.raises(InvalidOptionError, match="deny_status"):
        PolicyGuard(policy, lambda r: {}, deny_status=200)
    with pytest.raises(InvalidOptionError, match="guard must be"):
        BantaiMiddleware(FastAPI(), guard=object())  # type: ignore[arg-type]
    storage.close()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"uvicorn did not answer on port {port} within {timeout} s")


def test_under_a_real_uvicorn_process(redis_server: LocalRedisServer) -> None:
    port = free_port()
    env = {
        **os.environ,
        "BANTAI_WEB_REDIS_URL": redis_server.url,
        "BANTAI_WEB_PREFIX": unique_prefix(),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.web_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=Path(__file__).resolve().parent.parent, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for_port(port, process, timeout=20)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            answers = [http.get("/search") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].json() == {"results": "none"}
        assert answers[0].headers["RateLimit-Policy"] == '"api";q=3;w=3600'
        assert answers[2].headers["RateLimit"].startswith('"api";r=0;t=')
        refused = answers[3]
        seconds_left = int(refused.headers["RateLimit"].rpartition("t=")[2])
        assert int(refused.headers["Retry-After"]) == seconds_left > 0  # the window's end
        assert refused.json()["detail"].startswith("rate_limit_exceeded")
    finally:
        process.terminate()
        process.wait(10)
