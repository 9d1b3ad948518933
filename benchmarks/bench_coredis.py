"""coredis (an asyncio Redis client), get/set with the same validation, as a peer."""

from __future__ import annotations

from benchmarks.common import ASYNC_SHAPES, ITEM, Item, Results, cli, run_loop

VALIDATOR = Item.__pydantic_validator__
SERIALIZER = Item.__pydantic_serializer__


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    try:
        import coredis  # noqa: F401
    except ImportError:
        return {}
    return run_loop(_asyncio(url, count)) if suite == "async" else {}  # type: ignore[no-any-return]


async def _asyncio(url: str, count: int) -> dict[str, float]:
    import coredis

    client = coredis.Redis.from_url(url)
    data = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))

    async def get(t: int, i: int) -> object:
        raw = await client.get(f"cd:g{t}")
        return None if raw is None else VALIDATOR.validate_json(raw)

    async def set_ttl(t: int, i: int) -> None:
        value = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))
        await client.set(f"cd:s{t}", value, px=60_000)

    out = Results()
    async with client:
        await client.mset({f"cd:g{t}": data for t in range(50)})
        for tasks, label in ASYNC_SHAPES:
            await out.timed_tasks(f"get {label}", get, count, tasks)
            await out.timed_tasks(f"set {label}", set_ttl, count, tasks)
    return out


if __name__ == "__main__":
    cli(measure)
