"""Schema handling: turn whatever the caller gave as a schema into one `ValueCodec`.

A codec validates a value before it is written and encodes it as compact JSON (the bytes
`JSON.stringify` would produce for the same data, so the TypeScript original can read
them); it decodes and validates stored JSON in one pass with pydantic-core's
`validate_json`. Stored data is only ever parsed as JSON, never unpickled.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

import pydantic_core
from pydantic_core import (
    PydanticSerializationError,
    SchemaSerializer,
    SchemaValidator,
    ValidationError,
)
from pydantic_core import core_schema as cs

from bantai.errors import (
    InvalidOptionError,
    InvalidValueError,
    StoredValueError,
    UnsupportedOperationError,
)
from bantai.wire import NonePruner, check_js_safe

Key = str | bytes

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ValidatorOf(Protocol[T_co]):
    """For typing only: what a pydantic `TypeAdapter[T]` looks like to a type checker, so a
    storage made from one is a storage of `T` (without importing pydantic here)."""

    def validate_python(self, object: Any, /) -> T_co:
        """Validate Python data into a `T`."""
        ...


# NaN and Infinity have no JSON form. pydantic-core writes them as bare constants when
# configured to (then a substring test plus an exact `json.loads` catches them), but a
# pydantic model's prebuilt serializer keeps its own config and writes `null` instead, which
# would silently change the value. So output that contains `null` is read back once and
# compared: a value that does not survive its own JSON round trip is refused.
_SERIALIZER_CONFIG = cs.CoreConfig(ser_json_inf_nan="constants")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _describe(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<value>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class ValueCodec(Generic[T]):
    """Validation and JSON encoding for one schema. Thread-safe and immutable."""

    __slots__ = ("_js_safe", "_prune", "_serializer", "_validator", "core_schema", "item_codec")

    def __init__(
        self,
        core_schema: cs.CoreSchema,
        validator: Any | None = None,
        *,
        omit_none_defaults: bool = False,
        js_safe_integers: bool = False,
    ) -> None:
        self.core_schema = core_schema
        self._validator: SchemaValidator = validator or SchemaValidator(core_schema)
        self._serializer = SchemaSerializer(core_schema, _SERIALIZER_CONFIG)
        # Node-compatibility rules (see `bantai.wire`); off by default: they cost a pass
        # over the value.
        self._prune = NonePruner(core_schema).prune if omit_none_defaults else None
        self._js_safe = js_safe_integers
        # `append` can be done server-side only for a plain list with no length limits:
        # then appending a valid item always leaves a valid list.
        self.item_codec: ValueCodec[Any] | None = None
        items = _plain_list_items_schema(core_schema)
        if items is not None:
            self.item_codec = ValueCodec(
                items, omit_none_defaults=omit_none_defaults, js_safe_integers=js_safe_integers
            )

    def validate(self, value: object, *, what: str) -> T:
        """Validate `value` (described as `what` in the error, e.g. "policy input")."""
        try:
            return cast(T, self._validator.validate_python(value))
        except ValidationError as exc:
            raise InvalidValueError(f"{what} does not match the schema: {_describe(exc)}") from None

    def encode(self, value: object, key: Key) -> tuple[T, bytes]:
        """Validate the value for `key` and return `(validated value, compact JSON bytes)`.
        (Error messages are built only on failure: this is on every write's hot path.)"""
        try:
            validated = self._validator.validate_python(value)
        except ValidationError as exc:
            raise InvalidValueError(
                f"value for key {key!r} does not match the schema: {_describe(exc)}", key=key
            ) from None
        try:
            if self._prune is None and not self._js_safe:
                data: bytes = self._serializer.to_json(validated, by_alias=True)
            else:
                data = self._for_node(validated, key)
        except PydanticSerializationError as exc:
            # e.g. an `any` field holding an object JSON has no form for
            raise InvalidValueError(
                f"value for key {key!r} cannot be serialised as JSON: {exc}", key=key
            ) from None
        if b"NaN" in data or b"Infinity" in data:
            try:
                json.loads(data, parse_constant=_reject_constant)
            except ValueError:
                raise InvalidValueError(
                    f"value for key {key!r} contains NaN or Infinity, which JSON cannot represent",
                    key=key,
                ) from None
        if b"null" in data and not self._survives_round_trip(validated, data):
            raise InvalidValueError(
                f"value for key {key!r} cannot be stored as JSON without changing it "
                "(NaN and Infinity become null)",
                key=key,
            )
        return cast(T, validated), data

    def _for_node(self, validated: object, key: Key) -> bytes:
        plain = self._serializer.to_python(validated, mode="json", by_alias=True)
        if self._js_safe:
            check_js_safe(plain, key)
        if self._prune is not None:
            plain = self._prune(plain)
        return pydantic_core.to_json(plain)

    def with_wire_rules(self, *, omit_none_defaults: bool, js_safe_integers: bool) -> ValueCodec[T]:
        """This codec with the Node-compatibility rules switched on or off."""
        if not omit_none_defaults and not js_safe_integers:
            return self
        return ValueCodec(
            self.core_schema,
            self._validator,
            omit_none_defaults=omit_none_defaults,
            js_safe_integers=js_safe_integers,
        )

    def append_item_codec(self) -> ValueCodec[Any] | None:
        """For `append`: the item codec of a plain list schema; None for a list whose
        length is constrained (the whole list must then be re-validated, under a lock);
        `UnsupportedOperationError` for a schema that is not a list."""
        if self.item_codec is None:
            schema = self.core_schema
            inner = schema["schema"] if schema.get("type") == "definitions" else schema
            if inner.get("type") != "list":
                raise UnsupportedOperationError(
                    "append needs a list schema (e.g. list[Item]); this storage's schema is "
                    f"{schema.get('type')!r}"
                )
        return self.item_codec

    def _survives_round_trip(self, validated: object, data: bytes) -> bool:
        try:
            return bool(self._validator.validate_json(data) == validated)
        except ValidationError:
            return False

    def decode(self, raw: bytes | str | None, key: Key) -> T | None:
        """Parse and validate a stored value in one pass (None when the key is absent)."""
        if raw is None:
            return None
        try:
            return cast(T, self._validator.validate_json(raw))
        except ValidationError as exc:
            raise StoredValueError(
                f"value stored under key {key!r} is not valid JSON for the schema: "
                f"{_describe(exc)}",
                key=key,
            ) from None


def _plain_list_items_schema(schema: Mapping[str, Any]) -> cs.CoreSchema | None:
    definitions = None
    if schema.get("type") == "definitions":
        definitions = schema["definitions"]
        schema = schema["schema"]
    if schema.get("type") != "list":
        return None
    if schema.get("min_length") or schema.get("max_length") is not None:
        return None
    if schema.get("strict") or schema.get("ref") or schema.get("serialization"):
        return None
    items = cast(cs.CoreSchema, schema.get("items_schema") or cs.any_schema())
    if definitions:
        return cs.definitions_schema(items, list(definitions))
    return items


def codec_for(schema: object) -> ValueCodec[Any]:
    """Build a codec from a pydantic-core `CoreSchema` (a dict), a pydantic model class, a
    pydantic `TypeAdapter`, or a plain type annotation (the last three need pydantic)."""
    if isinstance(schema, ValueCodec):
        return schema
    if isinstance(schema, Mapping):
        if "type" not in schema:
            raise InvalidOptionError(
                "schema: a mapping must be a pydantic-core CoreSchema (it has no 'type')"
            )
        core = cast(cs.CoreSchema, copy.deepcopy(dict(schema)))
        try:
            return ValueCodec(core)
        except Exception as exc:  # pydantic-core raises SchemaError (an Exception subclass)
            raise InvalidOptionError(f"schema: invalid CoreSchema: {exc}") from exc
    try:
        import pydantic
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise InvalidOptionError(
            f"schema: {schema!r} needs pydantic (pip install 'bantai[pydantic]'), or pass a "
            "pydantic-core CoreSchema"
        ) from None
    if isinstance(schema, pydantic.TypeAdapter):
        return ValueCodec(schema.core_schema, schema.validator)
    if isinstance(schema, type) and issubclass(schema, pydantic.BaseModel):
        schema.model_rebuild()
        return ValueCodec(schema.__pydantic_core_schema__, schema.__pydantic_validator__)
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(cast(Any, schema))
    except pydantic.PydanticUserError as exc:
        raise InvalidOptionError(f"schema: cannot build a validator for {schema!r}: {exc}") from exc
    except pydantic.PydanticSchemaGenerationError as exc:
        raise InvalidOptionError(f"schema: cannot build a validator for {schema!r}: {exc}") from exc
    return ValueCodec(adapter.core_schema, adapter.validator)
