"""bantai.otel against a real Redis server, read back with the OpenTelemetry SDK's
in-memory exporters: spans for get / set / update / consume with the database semantic
conventions and the lock-wait attributes, span events, and the duration metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bantai import (
    LockTimeoutError,
    create_async_redis_storage,
    create_redis_storage,
    rate_limit,
    rate_limit_schema,
)
from bantai.otel import OpenTelemetryInstrumentation, instrument, uninstrument
from bantai.testing import LocalRedisServer
from tests.conftest import unique_prefix


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.hooks = OpenTelemetryInstrumentation(
            tracer_provider, MeterProvider(metric_readers=[self.reader])
        )

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def points(self, metric_name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == metric_name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield Telemetry()
    uninstrument()


def test_spans_follow_the_database_conventions(
    redis_server: LocalRedisServer, telemetry: Telemetry
) -> None:
    prefix = unique_prefix()
    options = {"prefix": prefix, "instrumentation": telemetry.hooks}
    storage = create_redis_storage({"url": redis_server.url}, dict[str, int], options)
    limits = create_redis_storage({"url": redis_server.url}, rate_limit_schema, options)
    storage.set("k", {"n": 1})
    assert storage.get("k") == {"n": 1}
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(f"{prefix}k:lock", b"another-process", px=60)  # the update waits ~60 ms
    storage.update("k", lambda current: {"value": {"n": 2}})
    rate_limit.consume(limits, {"type": "gcra", "limit": 5, "period": "1m", "key": "u"})
    storage.get_many(["k", "j"])
    spans = telemetry.finished()
    assert [s.name for s in spans] == [
        "bantai.set", "bantai.get", "bantai.update", "bantai.consume", "bantai.get_many",
    ]  # fmt: skip
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes["db.system.name"] == "redis"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == redis_server.port
        assert span.attributes["db.namespace"] == "0"
        assert span.attributes["bantai.outcome"] == "ok"
        assert span.status.status_code is StatusCode.UNSET
    update = spans[2]
    assert update.attributes["db.operation.name"] == "update"
    assert update.attributes["bantai.lock.retries"] >= 1
    assert 40 <= update.attributes["bantai.lock.wait_ms"] <= 200
    assert "bantai.lock_wait" in [e.name for e in update.events]
    assert spans[4].attributes["db.operation.batch.size"] == 2
    assert not any(v == "k" for s in spans for v in s.attributes.values())  # no keys
    # metrics: one duration point per operation name, lock waits for the update
    durations = {p.attributes["db.operation.name"]: p.count for p in
                 telemetry.points("db.client.operation.duration")}  # fmt: skip
    assert durations == {"set": 1, "get": 1, "update": 1, "consume": 1, "get_many": 1}
    waits = telemetry.points("bantai.lock.wait.duration")
    assert len(waits) == 1 and waits[0].attributes["db.operation.name"] == "update"
    assert waits[0].sum >= 0.04
    events = {p.attributes["bantai.event"]: p.value for p in telemetry.points("bantai.events")}
    assert events["lock_wait"] >= 1
    raw.close()
    storage.close()
    limits.close()


def test_failures_are_error_spans(redis_server: LocalRedisServer, telemetry: Telemetry) -> None:
    prefix = unique_prefix()
    storage = create_redis_storage(
        {"url": redis_server.url}, dict[str, int],
        {"prefix": prefix, "instrumentation": telemetry.hooks, "lock_timeout_ms": 30},
    )  # fmt: skip
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(f"{prefix}k:lock", b"another-process", px=5000)
    with pytest.raises(LockTimeoutError):
        storage.update("k", lambda current: None)
    (span,) = telemetry.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "LockTimeoutError"
    assert span.attributes["bantai.outcome"] == "lock_timeout"
    (point,) = telemetry.points("db.client.operation.duration")
    assert point.attributes["error.type"] == "LockTimeoutError"
    raw.close()
    storage.close()


def test_asyncio_spans_nest_under_the_caller(
    redis_server: LocalRedisServer, telemetry: Telemetry
) -> None:
    tracer = telemetry.hooks._tracer

    async def main() -> None:
        storage = create_async_redis_storage(
            {"url": redis_server.url}, dict[str, int],
            {"prefix": unique_prefix(), "instrumentation": telemetry.hooks},
        )  # fmt: skip

        async def handler(n: int) -> None:
            with tracer.start_as_current_span(f"request-{n}"):
                await storage.set(f"k{n}", {"n": n})
                await storage.update(f"k{n}", lambda c: {"value": {"n": (c or {"n": 0})["n"]}})

        await asyncio.gather(*(handler(n) for n in range(10)))
        await storage.close()

    asyncio.run(main())
    spans = telemetry.finished()
    requests = {s.context.span_id: s.name for s in spans if s.name.startswith("request-")}
    ours = [s for s in spans if s.name.startswith("bantai.")]
    assert len(ours) == 20
    for span in ours:  # each operation is a child of its own task's request span
        assert span.parent is not None and span.parent.span_id in requests


def test_instrument_observes_storages_created_afterwards(
    redis_server: LocalRedisServer, telemetry: Telemetry
) -> None:
    before = create_redis_storage({"url": redis_server.url}, dict[str, int])
    hooks = instrument()  # the global providers
    assert isinstance(hooks, OpenTelemetryInstrumentation)
    after = create_redis_storage({"url": redis_server.url}, dict[str, int])
    assert type(after) is not type(before)
    uninstrument()
    again = create_redis_storage({"url": redis_server.url}, dict[str, int])
    assert type(again) is type(before)
    for storage in (before, after, again):
        storage.close()


def test_local_cache_counters_are_metrics(
    redis_server: LocalRedisServer, telemetry: Telemetry
) -> None:
    storage = create_redis_storage(
        {"url": redis_server.url},
        int,
        {"prefix": unique_prefix(), "instrumentation": telemetry.hooks, "local_cache": True},
    )
    other = redis.Redis.from_url(redis_server.url)
    try:
        storage.set("k", 1)
        storage.get("k")  # a miss
        storage.get("k")  # a hit
        storage.get("k")  # a hit
        other.set(f"{storage.options.prefix}k", 2)
        assert storage.get("k") == 2  # the invalidation, then a miss

        def value(name: str) -> int:
            (point,) = telemetry.points(name)
            assert point.attributes["db.system.name"] == "redis"
            assert point.attributes["server.port"] == redis_server.port
            return int(point.value)

        assert value("bantai.cache.hits") == 2
        assert value("bantai.cache.misses") == 2
        assert value("bantai.cache.invalidations") == 1
        assert value("bantai.cache.evictions") == 0
        assert value("bantai.cache.entries") == 1
    finally:
        storage.close()
        other.close()
