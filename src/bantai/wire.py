"""Rules for values that a Node service must read back (options `omit_none_defaults` and
`js_safe_integers`), applied to a value already validated and turned into plain JSON data.

- `JSON.stringify` omits `undefined`; zod's `.optional()` then rejects `null`. A pydantic
  field `x: str | None = None` is written `"x":null` — unreadable for the Node side once
  Python rewrites the value. `NonePruner` drops exactly the fields whose value is None and
  whose default is None (a required nullable field still writes `null`), at every depth
  the schema describes (models, typed dicts, dataclasses; inside lists, dicts, optionals).
- JavaScript numbers hold integers exactly only up to 2**53 - 1; zod's `.int()` rejects
  what a larger one turns into. `check_js_safe` refuses such integers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bantai.errors import InvalidValueError

JS_MAX_SAFE_INTEGER = 2**53 - 1

Prune = Callable[[Any], Any]


def check_js_safe(data: Any, key: str | bytes, path: str = "") -> None:
    """Raise `InvalidValueError` for an integer beyond ±(2**53 - 1) anywhere in `data`."""
    if type(data) is int:
        if not -JS_MAX_SAFE_INTEGER <= data <= JS_MAX_SAFE_INTEGER:
            raise InvalidValueError(
                f"value for key {key!r} holds the integer {data} at {path or '<value>'}, beyond "
                "JavaScript's safe integers (±(2**53 - 1)); a Node reader would change it "
                "(js_safe_integers is on)",
                key=key,
            )
    elif isinstance(data, dict):
        for name, item in data.items():
            check_js_safe(item, key, f"{path}.{name}" if path else str(name))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            check_js_safe(item, key, f"{path}[{index}]")


class NonePruner:
    """Built once per schema: drops None-valued fields whose default is None."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._definitions: dict[str, Mapping[str, Any]] = {}
        self._memo: dict[int, Prune | None] = {}
        self.prune = self._build(schema) or (lambda data: data)

    def _build(self, schema: Mapping[str, Any]) -> Prune | None:
        """A pruning function for data of `schema`, or None when nothing in it can be
        pruned. Recursive schemas (definition refs) are resolved lazily."""
        key = id(schema)
        if key in self._memo:
            memo = self._memo[key]
            return memo if memo is not None else None
        self._memo[key] = None  # a cycle through this schema prunes nothing more
        built = self._build_new(schema)
        self._memo[key] = built
        return built

    def _build_new(self, schema: Mapping[str, Any]) -> Prune | None:
        kind = schema.get("type")
        if kind == "definitions":
            for definition in schema.get("definitions", ()):
                self._definitions[definition["ref"]] = definition
            return self._build(schema["schema"])
        if kind == "definition-ref":
            target = self._definitions.get(schema["schema_ref"])
            if target is None:
                return None
            return _late(lambda: self._build(target))
        if kind in ("nullable", "default", "model", "dataclass"):
            return self._build(schema["schema"])
        if kind == "list":
            items = self._build(schema.get("items_schema") or {})
            if items is None:
                return None
            return lambda data: [items(x) for x in data] if isinstance(data, list) else data
        if kind == "dict":
            values = self._build(schema.get("values_schema") or {})
            if values is None:
                return None
            return lambda data: (
                {k: values(v) for k, v in data.items()} if isinstance(data, dict) else data
            )
        if kind in ("model-fields", "typed-dict", "dataclass-args"):
            return self._fields(schema)
        return None

    def _fields(self, schema: Mapping[str, Any]) -> Prune | None:
        fields = schema.get("fields", {})
        pairs = [(f["name"], f) for f in fields] if isinstance(fields, list) else fields.items()
        omittable: set[str] = set()
        nested: dict[str, Prune] = {}
        for field_name, field in pairs:
            name = field.get("serialization_alias") or field_name
            inner = field["schema"]
            if inner.get("type") == "default" and inner.get("default", ...) is None:
                omittable.add(name)
            sub = self._build(inner)
            if sub is not None:
                nested[name] = sub
        if not omittable and not nested:
            return None

        def prune(data: Any) -> Any:
            if not isinstance(data, dict):
                return data
            out = {}
            for name, value in data.items():
                if value is None and name in omittable:
                    continue
                sub = nested.get(name)
                out[name] = value if sub is None or value is None else sub(value)
            return out

        return prune


def _late(make: Callable[[], Prune | None]) -> Prune:
    """A pruner built on first use (a definition may refer to itself)."""
    cache: list[Prune] = []

    def prune(data: Any) -> Any:
        if not cache:
            cache.append(make() or (lambda d: d))
        return cache[0](data)

    return prune
