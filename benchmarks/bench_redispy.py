"""The baseline: what a careful developer writes by hand with redis-py + hiredis +
pydantic-core (the same Lua scripts for the locked update, registered the usual way)."""

from __future__ import annotations

import asyncio
import secrets
import time

import redis
import redis.asyncio

from bantai.redis import scripts
from benchmarks.common import ASYNC_SHAPES, BATCH, ITEM, Item, Results, bump, cli, run_loop

VALIDATOR = Item.__pydantic_validator__
SERIALIZER = Item.__pydantic_serializer__


def measure(url: str, count: int, suite: str) -> dict[str, float]:
    if suite == "async":
        return run_loop(_asyncio(url, count))  # type: ignore[no-any-return]
    return _sync(url, count) if suite == "sync" else {}


def _sync(url: str, count: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    acquire = client.register_script(scripts.ACQUIRE.source)
    commit = client.register_script(scripts.COMMIT.source)
    keys = [f"base:many:{i}" for i in range(BATCH)]
    client.mset({k: SERIALIZER.to_json(VALIDATOR.validate_python(ITEM)) for k in keys})
    client.set("base:k", SERIALIZER.to_json(VALIDATOR.validate_python(ITEM)))

    def get() -> object:
        raw = client.get("base:k")
        return None if raw is None else VALIDATOR.validate_json(raw)

    def set_ttl() -> None:
        client.set("base:s", SERIALIZER.to_json(VALIDATOR.validate_python(ITEM)), px=60_000)

    def update() -> object:
        token = secrets.token_hex(16)
        while True:
            (entry,) = acquire(keys=["base:u", "base:u:lock"], args=[token, 10_000])
            if entry[0] == 1:
                break
            time.sleep(0.05)
        current = VALIDATOR.validate_json(entry[1]) if len(entry) > 1 else None
        new = VALIDATOR.validate_python(bump(current)["value"])
        commit(keys=["base:u", "base:u:lock"], args=[token, "keep", SERIALIZER.to_json(new), ""])
        return new

    def get_many() -> object:
        return [None if r is None else VALIDATOR.validate_json(r) for r in client.mget(keys)]

    def update_many() -> object:
        token = secrets.token_hex(16)
        pipe = client.pipeline(transaction=False)
        for k in keys:
            acquire(keys=[k, k + ":lock"], args=[token, 10_000], client=pipe)
        entries = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for k, (entry,) in zip(keys, entries, strict=True):
            current = VALIDATOR.validate_json(entry[1]) if len(entry) > 1 else None
            data = SERIALIZER.to_json(VALIDATOR.validate_python(bump(current)["value"]))
            commit(keys=[k, k + ":lock"], args=[token, "keep", data, ""], client=pipe)
        return pipe.execute()

    out = Results()
    out.timed("get", get, count)
    out.timed("set_ttl", set_ttl, count)
    out.timed("update", update, count // 2)
    out.timed("get_many_100", get_many, count // 20, BATCH)
    out.timed("update_many_100", update_many, count // 50, BATCH)
    client.close()
    return out


async def _asyncio(url: str, count: int) -> dict[str, float]:
    """Tasks sharing one redis.asyncio.Redis, written the obvious way."""
    client = redis.asyncio.Redis.from_url(url, max_connections=1000)
    acquire = client.register_script(scripts.ACQUIRE.source)
    commit = client.register_script(scripts.COMMIT.source)
    data = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))
    await client.mset({f"base:g{t}": data for t in range(50)})

    async def get(t: int, i: int) -> object:
        raw = await client.get(f"base:g{t}")
        return None if raw is None else VALIDATOR.validate_json(raw)

    async def set_ttl(t: int, i: int) -> None:
        value = SERIALIZER.to_json(VALIDATOR.validate_python(ITEM))
        await client.set(f"base:s{t}", value, px=60_000)

    async def update(t: int, i: int) -> object:
        key = f"base:u{t}"
        token = secrets.token_hex(16)
        while True:
            (entry,) = await acquire(keys=[key, key + ":lock"], args=[token, 10_000])
            if entry[0] == 1:
                break
            await asyncio.sleep(0.05)
        current = VALIDATOR.validate_json(entry[1]) if len(entry) > 1 else None
        new = VALIDATOR.validate_python(bump(current)["value"])
        await commit(keys=[key, key + ":lock"], args=[token, "keep", SERIALIZER.to_json(new), ""])
        return new

    out = Results()
    for tasks, label in ASYNC_SHAPES:
        await out.timed_tasks(f"get {label}", get, count, tasks)
        await out.timed_tasks(f"set {label}", set_ttl, count, tasks)
        await out.timed_tasks(f"update {label}", update, count // 2, tasks)
    await client.aclose()
    return out


if __name__ == "__main__":
    cli(measure)
