"""The `limits` package's fixed window on the same server (its `redis` extra pins
redis-py < 8, so the bench extra installs it without the extra). Reports nothing when it
is not installed."""

from __future__ import annotations

from benchmarks.common import Results, cli


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    try:
        from limits import parse, storage, strategies
    except ImportError:
        return {}
    if suite != "sync":
        return {}
    limiter = strategies.FixedWindowRateLimiter(storage.storage_from_string(url))
    item = parse("1000000000/hour")
    out = Results()
    out.timed("rate_limit_consume", lambda: limiter.hit(item, "api"), count)
    return out


if __name__ == "__main__":
    cli(measure)
