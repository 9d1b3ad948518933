"""Rate limits and policies in front of a Starlette or FastAPI app (`pip install
"bantai[fastapi]"`, or starlette alone): `RateLimit` and `PolicyGuard` decide per request;
use one as a FastAPI dependency (`Depends(guard)`) or through `BantaiMiddleware`. Refusals
are 429 with `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` headers."""

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        'bantai.web needs Starlette: pip install "bantai[fastapi]" (or starlette)'
    ) from exc

from bantai.web.guards import PolicyGuard, RateLimit, client_address
from bantai.web.http import Verdict, rate_limit_headers
from bantai.web.middleware import BantaiMiddleware

__all__ = [
    "BantaiMiddleware",
    "PolicyGuard",
    "RateLimit",
    "Verdict",
    "client_address",
    "rate_limit_headers",
]
