"""What observing costs: the same sync `get` and `update` workloads on three adapters over
one server, measured in interleaved rounds in one process — without instrumentation (the
plain class), with a do-nothing `Instrumentation` (the observed subclass: the price of the
hooks themselves), and with `bantai.otel` on the OpenTelemetry SDK (spans kept in memory,
metrics aggregated) when it is installed.

`python -m benchmarks.bench_instrumentation URL COUNT ROUNDS` prints one JSON object:
variant -> workload -> median ops/s."""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from bantai import create_redis_storage
from bantai.observe import Instrumentation
from benchmarks.common import ITEM, Item, bump


def _variants() -> dict[str, Instrumentation | None]:
    variants: dict[str, Instrumentation | None] = {"off": None, "no-op hooks": Instrumentation()}
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from bantai.otel import OpenTelemetryInstrumentation
    except ImportError:  # the otel extra / SDK is not installed: not measured
        return variants
    tracer_provider = TracerProvider()
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    variants["opentelemetry"] = OpenTelemetryInstrumentation(tracer_provider, meter_provider)
    variants["_exporter"] = exporter  # type: ignore[assignment]  # cleared between rounds
    return variants


def measure(url: str, count: int, rounds: int) -> dict[str, dict[str, float]]:
    variants = _variants()
    exporter: Any = variants.pop("_exporter", None)
    storages = {
        name: create_redis_storage(
            {"url": url}, Item, {"prefix": f"instr:{i}:", "instrumentation": hooks}
        )
        for i, (name, hooks) in enumerate(variants.items())
    }
    samples: dict[str, dict[str, list[float]]] = {n: {"get": [], "update": []} for n in storages}
    for storage in storages.values():
        storage.set("k", ITEM)
        for _ in range(max(1, count // 10)):  # warm: connections, scripts, caches
            storage.get("k")
            storage.update("k", bump)
    for round_no in range(rounds):
        order = list(storages)
        order = order[round_no % len(order) :] + order[: round_no % len(order)]
        for name in order:
            storage = storages[name]
            started = time.perf_counter()
            for _ in range(count):
                storage.get("k")
            samples[name]["get"].append(count / (time.perf_counter() - started))
            started = time.perf_counter()
            for _ in range(count):
                storage.update("k", bump)
            samples[name]["update"].append(count / (time.perf_counter() - started))
            if exporter is not None:
                exporter.clear()
    for storage in storages.values():
        storage.close()
    return {n: {w: statistics.median(v) for w, v in s.items()} for n, s in samples.items()}


if __name__ == "__main__":
    url, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure(url, count, rounds)))
