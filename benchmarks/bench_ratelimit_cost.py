"""What one rate-limit decision costs the Redis server, per algorithm, at limits of 100
and 10,000 with the window full: server time per decision (INFO commandstats, every
command the decision sent) and the size of the stored state — bantai's five algorithms
beside the `limits` package's (when installed). Needs a server of its own: it resets the
statistics."""

from __future__ import annotations

import json
import sys
from typing import Any

import redis

from bantai import create_redis_storage, rate_limit, rate_limit_schema
from bantai.ratelimit.algorithms import ALGORITHMS

LIMITS = (100, 10_000)
NOW = 1_700_000_000_000


def _server_usec(client: redis.Redis) -> tuple[float, int]:
    stats = client.info("commandstats")
    return sum(v["usec"] for v in stats.values()), sum(v["calls"] for v in stats.values())


def measure(
    url: str, decisions: int = 1000, limits: tuple[int, ...] = LIMITS
) -> dict[str, dict[str, float]]:
    client = redis.Redis.from_url(url)
    out: dict[str, dict[str, float]] = {}
    for limit in limits:
        for kind in ALGORITHMS:
            storage = create_redis_storage({"url": url}, rate_limit_schema, {"prefix": "c:"})
            config = {"type": kind, "limit": limit, "period": "1h", "key": f"{kind}-{limit}"}
            tick = _ticking_clock()

            if kind == "sliding-window":  # a full log, written at once (filling it one
                stamps = ",".join(str(NOW - i) for i in range(limit))  # decision at a time
                client.set(  # costs O(limit) each)
                    f"c:{kind}-{limit}",
                    f'{{"type":"sliding-window","timestamps":[{stamps}]}}',
                    px=3_600_000,
                )
            else:
                for _ in range(limit + 10):  # fill the window
                    rate_limit.consume(storage, config, clock=tick)
            client.config_resetstat()
            for _ in range(decisions):
                rate_limit.consume(storage, config, clock=tick)
            usec, _ = _server_usec(client)
            size = sum(client.memory_usage(k) or 0 for k in client.keys(f"c:{kind}-{limit}*"))
            out[f"{kind} @{limit}"] = {"server_us": usec / decisions, "bytes": float(size)}
            storage.close()
        out.update(_limits_package(url, client, limit, decisions))
    client.close()
    return out


def _ticking_clock() -> Any:
    """An injected clock one millisecond further at every call (one window: 1 h)."""
    clock = [NOW]

    def tick() -> int:
        clock[0] += 1
        return clock[0]

    return tick


def _limits_package(
    url: str, client: redis.Redis, limit: int, decisions: int
) -> dict[str, dict[str, float]]:
    try:
        from limits import parse, storage, strategies
    except ImportError:
        return {}
    backend = storage.storage_from_string(url)
    out: dict[str, dict[str, float]] = {}
    for name, strategy in (
        ("limits moving-window", strategies.MovingWindowRateLimiter),
        ("limits sliding-window-counter", strategies.SlidingWindowCounterRateLimiter),
        ("limits fixed-window", strategies.FixedWindowRateLimiter),
    ):
        limiter: Any = strategy(backend)
        item = parse(f"{limit}/hour")
        key = f"lim-{name.split()[1]}-{limit}"
        for _ in range(limit + 10):
            limiter.hit(item, key)
        client.config_resetstat()
        for _ in range(decisions):
            limiter.hit(item, key)
        usec, _ = _server_usec(client)
        size = sum(client.memory_usage(k) or 0 for k in client.keys(f"*{key}*"))
        out[f"{name} @{limit}"] = {"server_us": usec / decisions, "bytes": float(size)}
    return out


if __name__ == "__main__":
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    sizes = tuple(int(x) for x in sys.argv[3].split(",")) if len(sys.argv) > 3 else LIMITS
    print(json.dumps(measure(sys.argv[1], count, sizes)))
