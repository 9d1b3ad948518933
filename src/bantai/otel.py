"""OpenTelemetry for bantai (`pip install "bantai[otel]"`): an `Instrumentation` that
turns every storage operation into a CLIENT span and into metrics, following the
OpenTelemetry database semantic conventions.

bantai moves its own bytes (it does not go through redis-py's command layer), so
`opentelemetry-instrumentation-redis` sees none of its traffic; this does.

- Span `bantai.<operation>` (get, set, update, get_many, consume, ...), kind CLIENT, with
  `db.system.name` = "redis", `db.operation.name`, `db.namespace` (the database index),
  `server.address`, `server.port`, `db.operation.batch.size` (batches), and bantai's own
  `bantai.key_count`, `bantai.outcome`, `bantai.lock.wait_ms`, `bantai.lock.retries`;
  `error.type` and an ERROR status when it raised. What happened on the way (lock waits,
  script reloads, redirects, resends) are span events named `bantai.<event>`.
- Histogram `db.client.operation.duration` (s) by operation, server and `error.type`;
  histogram `bantai.lock.wait.duration` (s) for operations that waited for a lock;
  counter `bantai.events` by event name; for storages with a local cache, observable
  counters `bantai.cache.hits` / `misses` / `invalidations` / `evictions` / `flushes`
  and the gauge `bantai.cache.entries`, by server.

Keys and values are never recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from bantai.observe import (
    Instrumentation,
    OperationEnd,
    OperationStart,
    set_default_instrumentation,
)

_SCOPE = "bantai"
# Semantic-conventions advice for db.client.operation.duration (seconds).
_CACHE_COUNTERS = {
    "hits": "Local cache lookups answered from the cache",
    "misses": "Local cache lookups that read from Redis",
    "invalidations": "Local cache entries dropped because the key changed",
    "evictions": "Local cache entries dropped to stay within max_entries",
    "flushes": "Times a local cache dropped everything (stream lost, FLUSHDB)",
}
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]


def _version() -> str:
    try:
        return version("bantai")
    except PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        return "0+unknown"


def _scalar(value: Any) -> str | int | float | bool:
    """An attribute value OpenTelemetry accepts."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple) and len(value) == 2:  # (host, port)
        return f"{value[0]}:{value[1]}"
    return str(value)


class OpenTelemetryInstrumentation(Instrumentation):
    """Spans and metrics for every operation of the storages it is given to (as the
    `instrumentation` option, or for all storages created afterwards with `instrument()`).
    Uses the global tracer and meter providers unless others are passed."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, _version(), tracer_provider)
        meter = metrics.get_meter(_SCOPE, _version(), meter_provider)
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of bantai storage operations",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._lock_wait = meter.create_histogram(
            "bantai.lock.wait.duration",
            unit="s",
            description="Time an operation waited for busy locks",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._events = meter.create_counter(
            "bantai.events", unit="{event}", description="Lock waits, redirects, reloads, resends"
        )
        # Local caches: their counters, read when metrics are collected.
        self._caches: list[tuple[Callable[[], Any], dict[str, Any]]] = []
        for field, description in _CACHE_COUNTERS.items():
            meter.create_observable_counter(
                f"bantai.cache.{field}",
                callbacks=[self._cache_reader(field)],
                unit="{" + field.rstrip("s") + "}",
                description=description,
            )
        meter.create_observable_gauge(
            "bantai.cache.entries",
            callbacks=[self._cache_reader("entries")],
            unit="{entry}",
            description="Entries held by local caches",
        )

    def local_cache(self, stats: Callable[[], Any], operation: OperationStart) -> None:
        """Report this cache's counters with the metrics (`bantai.cache.*`)."""
        attributes: dict[str, Any] = {"db.system.name": "redis"}
        if operation.server_address is not None:
            attributes["server.address"] = operation.server_address
        if operation.server_port is not None:
            attributes["server.port"] = operation.server_port
        self._caches.append((stats, attributes))

    def _cache_reader(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(options: CallbackOptions) -> Iterable[Observation]:
            alive = []
            for stats, attributes in self._caches:
                now = stats()
                if now is None:  # the storage is gone
                    continue
                alive.append((stats, attributes))
                yield Observation(getattr(now, field), attributes)
            self._caches[:] = alive

        return read

    def start(self, operation: OperationStart) -> Any:
        """Open the span (the current span while the operation runs)."""
        common: dict[str, Any] = {
            "db.system.name": "redis",
            "db.operation.name": operation.operation,
        }
        if operation.server_address is not None:
            common["server.address"] = operation.server_address
        if operation.server_port is not None:
            common["server.port"] = operation.server_port
        span_attributes = dict(common)
        span_attributes["bantai.key_count"] = operation.key_count
        if operation.database is not None:
            span_attributes["db.namespace"] = str(operation.database)
        if operation.key_count > 1:
            span_attributes["db.operation.batch.size"] = operation.key_count
        span = self._tracer.start_span(
            f"bantai.{operation.operation}", kind=SpanKind.CLIENT, attributes=span_attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token, common

    def event(self, context: Any, name: str, attributes: Mapping[str, Any]) -> None:
        """A span event, and one more on the events counter."""
        span, _, common = context
        span.add_event(f"bantai.{name}", {k: _scalar(v) for k, v in attributes.items()})
        self._events.add(
            1, {"bantai.event": name, "db.operation.name": common["db.operation.name"]}
        )

    def end(self, context: Any, result: OperationEnd) -> None:
        """Close the span; record the duration (and lock wait) metrics."""
        span, token, common = context
        span.set_attribute("bantai.outcome", result.outcome)
        span.set_attribute("bantai.lock.wait_ms", round(result.lock_wait_s * 1000, 3))
        span.set_attribute("bantai.lock.retries", result.lock_retries)
        metric_attributes = dict(common)
        if result.error is not None:
            error_type = type(result.error).__qualname__
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, result.outcome))
            metric_attributes["error.type"] = error_type
        span.end()
        otel_context.detach(token)
        self._duration.record(result.duration_s, metric_attributes)
        if result.lock_wait_s > 0:
            self._lock_wait.record(result.lock_wait_s, common)


def instrument(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> OpenTelemetryInstrumentation:
    """Observe every Redis storage created from now on with OpenTelemetry; returns the
    instrumentation (pass it as a storage's `instrumentation` option to be explicit)."""
    hooks = OpenTelemetryInstrumentation(tracer_provider, meter_provider)
    set_default_instrumentation(hooks)
    return hooks


def uninstrument() -> None:
    """Storages created from now on are not observed (existing ones keep their hooks)."""
    set_default_instrumentation(None)


__all__ = ["OpenTelemetryInstrumentation", "instrument", "uninstrument"]
