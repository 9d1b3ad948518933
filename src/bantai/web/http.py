"""HTTP answers to rate-limit and policy decisions — status, headers, detail — without I/O
or a web framework, so the ASGI middleware and the FastAPI dependency answer alike.

Headers follow the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "api";q=100;w=60` (quota,
window in seconds) and `RateLimit: "api";r=42;t=17` (remaining, seconds until the quota
resets), plus `Retry-After` (seconds, RFC 9110) on a 429.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bantai.core.policy import PolicyResult
from bantai.errors import InvalidOptionError
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult

TOO_MANY_REQUESTS = 429
SERVICE_UNAVAILABLE = 503
FORBIDDEN = 403

# A policy name goes into a Structured Fields string: keep it to characters that need no
# escaping and read well in a header.
_POLICY_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer: pass the request on (`allowed`, with `headers` added to the
    response), or answer `status` with `headers` and a JSON body `{"detail": detail}`."""

    allowed: bool
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    detail: str = ""


PASS = Verdict(True)


def check_policy_name(name: object) -> str:
    """A policy name for the headers, or `InvalidOptionError` saying what is allowed."""
    if not isinstance(name, str) or not _POLICY_NAME.fullmatch(name):
        raise InvalidOptionError(
            f"name must be 1-64 characters of letters, digits and _.:/-, not {name!r} "
            "(it is the policy identifier in the RateLimit headers)"
        )
    return name


def _seconds(ms: int) -> int:
    """Whole seconds, rounded up: a client that waits this long is never early."""
    return -(-ms // 1000)


def rate_limit_headers(
    name: str, config: RateLimitConfig, result: RateLimitResult
) -> tuple[tuple[str, str], ...]:
    """`RateLimit-Policy`, `RateLimit`, and on a denial with a known wait, `Retry-After`."""
    headers = [
        ("RateLimit-Policy", f'"{name}";q={config.limit};w={max(1, _seconds(config.period_ms))}'),
        ("RateLimit", f'"{name}";r={result.remaining};t={_seconds(result.reset_after_ms)}'),
    ]
    if not result.allowed and result.retry_after_ms is not None:
        headers.append(("Retry-After", str(max(1, _seconds(result.retry_after_ms)))))
    return tuple(headers)


def rate_limit_verdict(name: str, config: RateLimitConfig, result: RateLimitResult) -> Verdict:
    """Admitted: pass on with the headers. Denied: 429 with them and the reason."""
    headers = rate_limit_headers(name, config, result)
    if result.allowed:
        return Verdict(True, 200, headers)
    return Verdict(False, TOO_MANY_REQUESTS, headers, result.reason)


def storage_error_verdict(name: str) -> Verdict:
    """The limiter could not decide (its storage failed) and fails closed: 503, not 429 —
    the client is not over its limit, and may retry soon."""
    return Verdict(
        False,
        SERVICE_UNAVAILABLE,
        (("Retry-After", "1"),),
        f"rate limit {name!r} is unavailable (its storage failed)",
    )


def policy_verdict(result: PolicyResult, deny_status: int = FORBIDDEN) -> Verdict:
    """Allowed: pass on. Denied by a rate-limit rule: 429 with its headers (the rule's name
    is the policy identifier); by a rate-limit rule whose storage failed: 503; by any other
    rule: `deny_status` with that rule's reason."""
    if result.is_allowed:
        return PASS
    first = result.violated_rules[0]
    meta = first.result.meta
    limited = meta.get("rate_limit_result")
    config = meta.get("rate_limit_config")
    if isinstance(limited, RateLimitResult) and isinstance(config, RateLimitConfig):
        name = first.name if _POLICY_NAME.fullmatch(first.name) else "rate-limit"
        return rate_limit_verdict(name, config, limited)
    if first.result.reason == "rate_limit_storage_error":
        return storage_error_verdict(first.name)
    return Verdict(False, deny_status, (), first.result.reason or result.reason)
