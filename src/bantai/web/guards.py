"""The two guards a web app puts in front of its endpoints: `RateLimit` (one limit, keyed
per client) and `PolicyGuard` (a whole bantai policy). Each decides once per request in
`check(request)`; `bantai.web.BantaiMiddleware` and FastAPI's `Depends(guard)` only turn
that verdict into a response."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Literal, TypeVar, cast

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bantai.core.policy import Policy, PolicyResult, Strategy, evaluate_policy
from bantai.errors import InvalidInputError, InvalidOptionError
from bantai.ratelimit import rate_limit
from bantai.ratelimit.algorithms import (
    RateLimitConfig,
    RateLimitConfigDict,
    RateLimitResult,
    check_cost,
)
from bantai.storage.protocol import AsyncKeyValueStorage, KeyValueStorage
from bantai.web.http import (
    FORBIDDEN,
    PASS,
    Verdict,
    check_policy_name,
    policy_verdict,
    rate_limit_verdict,
    storage_error_verdict,
)

_log = logging.getLogger("bantai")
T = TypeVar("T")
KeyFunction = Callable[[Request], "str | Awaitable[str | None] | None"]
CostFunction = Callable[[Request], int]
StorageErrorChoice = Literal["deny", "allow", "raise"]


def client_address(request: Request) -> str | None:
    """The default key: the peer address the ASGI server reports. Behind a reverse proxy
    that is the proxy's, unless the server is told to trust its `X-Forwarded-For` (uvicorn
    `--proxy-headers --forwarded-allow-ips=<proxy>`); otherwise pass your own `key`."""
    return request.client.host if request.client is not None else None


async def _resolve(value: T | Awaitable[T]) -> T:
    return await value if inspect.isawaitable(value) else value


def _raise_or_set(verdict: Verdict, response: Response) -> None:
    """The FastAPI dependency's half: refuse with an HTTPException, or add the headers."""
    if not verdict.allowed:
        raise HTTPException(verdict.status, verdict.detail, headers=dict(verdict.headers))
    for name, value in verdict.headers:
        response.headers.append(name, value)


class RateLimit:
    """One rate limit per client, for every request it guards.

    `storage` holds the limiter state (a storage made with `rate_limit_schema`; an asyncio
    storage is awaited, a blocking one runs in the thread pool), `config` is a limit
    (`{"type": "gcra", "limit": 100, "period": "1m"}`), `name` the policy identifier in the
    headers and part of the storage key (`http:<name>:<key>`), `key(request)` names the
    client (default: its address; return None to let a request through unlimited), `cost`
    an int or `cost(request)`. `on_storage_error`: "deny" answers 503, "allow" lets the
    request through, "raise" lets the storage's exception propagate; each is logged at
    WARNING (logger "bantai")."""

    def __init__(
        self,
        storage: KeyValueStorage[Any] | AsyncKeyValueStorage[Any],
        config: RateLimitConfig | RateLimitConfigDict,
        *,
        name: str = "default",
        key: KeyFunction = client_address,
        cost: int | CostFunction | None = None,
        on_storage_error: StorageErrorChoice = "deny",
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.config = RateLimitConfig.parse(config)
        self.name = check_policy_name(name)
        if not callable(key):
            raise InvalidOptionError(f"key must be a function of the request, not {key!r}")
        if cost is not None and not callable(cost):
            check_cost(cost)
        if on_storage_error not in ("deny", "allow", "raise"):
            raise InvalidOptionError(
                f"on_storage_error must be 'deny', 'allow' or 'raise', not {on_storage_error!r}"
            )
        self.storage = storage
        self._key = key
        self._cost = cost
        self._on_storage_error = on_storage_error
        self._clock = clock
        # An asyncio storage's methods are coroutine functions (get is always there).
        self._asynchronous = inspect.iscoroutinefunction(getattr(storage, "get", None))
        self._warned_no_key = False

    async def check(self, request: Request) -> tuple[Verdict, RateLimitResult | None]:
        """Consume for this request; the verdict, and the decision (None when the request
        was not limited: no key, or the storage failed with on_storage_error="allow")."""
        subject = await _resolve(self._key(request))
        if subject is None:
            if not self._warned_no_key:
                self._warned_no_key = True
                _log.warning(
                    "rate limit %r: a request without a key (no client address?) passes "
                    "unlimited; pass key= to name the client", self.name,
                )  # fmt: skip
            return PASS, None
        cost = self._cost(request) if callable(self._cost) else self._cost
        storage_key = f"http:{self.name}:{subject}"
        try:
            if self._asynchronous:
                result = await rate_limit.consume_async(
                    cast("AsyncKeyValueStorage[Any]", self.storage),
                    self.config,
                    cost,
                    key=storage_key,
                    clock=self._clock,
                )
            else:
                consume = partial(rate_limit.consume, key=storage_key, clock=self._clock)
                result = await run_in_threadpool(consume, self.storage, self.config, cost)
        except InvalidInputError:
            raise  # a bad key or cost from the app, not a storage failure
        except Exception as exc:
            _log.warning(
                "rate limit %r: storage error (%s: %s); on_storage_error=%r",
                self.name, type(exc).__name__, exc, self._on_storage_error,
            )  # fmt: skip
            if self._on_storage_error == "raise":
                raise
            if self._on_storage_error == "allow":
                return PASS, None
            return storage_error_verdict(self.name), None
        return rate_limit_verdict(self.name, self.config, result), result

    async def __call__(self, request: Request, response: Response) -> RateLimitResult | None:
        """As a FastAPI dependency: 429 / 503 as an HTTPException, else the headers."""
        verdict, result = await self.check(request)
        _raise_or_set(verdict, response)
        return result


class PolicyGuard:
    """Evaluate a bantai policy for every request it guards: `input(request)` (a function,
    possibly async) returns the policy's input. A denial by a rate-limit rule answers 429
    with the RateLimit headers (503 when its storage failed with on_storage_error="deny");
    by any other rule, `deny_status` (403) with the rule's reason.

    When the policy's rate limits have no `generate_key` (every request would share one
    bucket), the guard keys them by `key(request)` (default: the client address) through
    the input's `rate_limit.key`, and says so once at WARNING."""

    def __init__(
        self,
        policy: Policy,
        input: Callable[[Request], Any],
        *,
        key: KeyFunction = client_address,
        deny_status: int = FORBIDDEN,
        strategy: Strategy | None = None,
    ) -> None:
        if not callable(input):
            raise InvalidOptionError(f"input must be a function of the request, not {input!r}")
        if not isinstance(deny_status, int) or not 400 <= deny_status <= 599:
            raise InvalidOptionError(
                f"deny_status must be a 4xx or 5xx status, not {deny_status!r}"
            )
        self.policy = policy
        self._input = input
        self._key = key
        self._deny_status = deny_status
        self._strategy = strategy
        tools = policy.context.tools
        self._key_rate_limits = "rate_limit" in tools and tools.rate_limit.generate_key is None
        if self._key_rate_limits:
            _log.warning(
                "policy %r: its rate limits have no generate_key; PolicyGuard keys them by "
                "%s(request)", policy.name, getattr(key, "__name__", "key"),
            )  # fmt: skip

    async def check(self, request: Request) -> tuple[Verdict, PolicyResult]:
        """Evaluate the policy for this request: the verdict and the policy's result."""
        data = await _resolve(self._input(request))
        if self._key_rate_limits:
            data = await self._keyed(data, request)
        result = await evaluate_policy(self.policy, data, self._strategy)
        return policy_verdict(result, self._deny_status), result

    async def _keyed(self, data: Any, request: Request) -> Any:
        if not isinstance(data, Mapping):
            raise InvalidOptionError(
                f"policy {self.policy.name!r}: input(request) must return a mapping so the "
                "guard can key its rate limits by client (or give with_rate_limit a "
                f"generate_key), not {type(data).__name__}"
            )
        section = data.get("rate_limit") or {}
        if section.get("key"):
            return data
        subject = await _resolve(self._key(request))
        if subject is None:
            return data
        return {**data, "rate_limit": {**section, "key": subject}}

    async def __call__(self, request: Request, response: Response) -> PolicyResult:
        """As a FastAPI dependency: the denial as an HTTPException, else the result."""
        verdict, result = await self.check(request)
        _raise_or_set(verdict, response)
        return result
