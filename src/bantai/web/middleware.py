"""`BantaiMiddleware`: a pure ASGI middleware that runs a guard (`RateLimit` or
`PolicyGuard`) before every HTTP request; a refusal is answered here, an admission passes
on with the guard's headers added to the app's response."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bantai.errors import InvalidOptionError
from bantai.web.guards import PolicyGuard, RateLimit


class BantaiMiddleware:
    """`app.add_middleware(BantaiMiddleware, guard=RateLimit(...))`. Websockets and
    lifespan events pass untouched. The guard sees the request's scope and headers, not
    its body (reading it here would take it from the app)."""

    def __init__(self, app: ASGIApp, guard: RateLimit | PolicyGuard) -> None:
        if not isinstance(guard, (RateLimit, PolicyGuard)):
            raise InvalidOptionError(f"guard must be a RateLimit or a PolicyGuard, not {guard!r}")
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        verdict, _ = await self.guard.check(Request(scope))
        if not verdict.allowed:
            refusal = JSONResponse(
                {"detail": verdict.detail}, verdict.status, headers=dict(verdict.headers)
            )
            await refusal(scope, receive, send)
            return
        if not verdict.headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in verdict.headers:
                    headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
