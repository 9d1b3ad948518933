"""valkey-glide (a Rust core with a Python asyncio API), get/set with the same validation,
as a peer."""

from __future__ import annotations

from urllib.parse import urlparse

from benchmarks.common import ASYNC_SHAPES, ITEM, Item, Results, cli, run_loop

VALIDATOR = Item.__pydantic_validator__
SERIALIZER = Item.__pydantic_serializer__


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    try:
        import glide  # noqa: F401
    except ImportError:
        return {}
    return run_loop(_asyncio(url, count)) if suite == "async" else {}  # type: ignore[no-any-return]


async def _asyncio(url: str, count: int) -> dict[str, float]:
    from glide import (
        ExpirySet,
        ExpiryType,
        GlideClient,
        GlideClientConfiguration,
        NodeAddress,
    )

    where = urlparse(url)
    client = await GlideClient.create(
        GlideClientConfiguration([NodeAddress(where.hostname or "127.0.0.1", where.port or 6379)])
    )
    data = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))
    await client.mset({f"gl:g{t}": data for t in range(50)})
    expiry = ExpirySet(ExpiryType.MILLSEC, 60_000)

    async def get(t: int, i: int) -> object:
        raw = await client.get(f"gl:g{t}")
        return None if raw is None else VALIDATOR.validate_json(raw)

    async def set_ttl(t: int, i: int) -> None:
        value = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))
        await client.set(f"gl:s{t}", value, expiry=expiry)

    out = Results()
    for tasks, label in ASYNC_SHAPES:
        await out.timed_tasks(f"get {label}", get, count, tasks)
        await out.timed_tasks(f"set {label}", set_ttl, count, tasks)
    await client.close()
    return out


if __name__ == "__main__":
    cli(measure)
