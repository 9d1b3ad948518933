"""Contexts: the input schema, its default values, and the tools rules can use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bantai.codec import ValueCodec, codec_for
from bantai.errors import InvalidOptionError, InvalidValueError


class Tools:
    """The tools of a context, by attribute (`ctx.tools.storage`) or by name."""

    def __init__(self, tools: Mapping[str, Any] | None = None) -> None:
        self._tools = dict(tools or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._tools[name]
        except KeyError:
            raise AttributeError(f"this context has no tool {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def as_dict(self) -> dict[str, Any]:
        """The tools as a plain dict (a copy)."""
        return dict(self._tools)

    def __repr__(self) -> str:
        return f"Tools({sorted(self._tools)})"


@dataclass(frozen=True)
class Context:
    """Create with `define_context`. `extensions` validate extra input sections (such as
    `rate_limit`) that travel beside the schema's fields."""

    codec: ValueCodec[Any]
    default_values: Mapping[str, Any]
    tools: Tools
    extensions: Mapping[str, Callable[[Any], Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    extension_defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def parse_input(self, data: object) -> tuple[Any, dict[str, Any]]:
        """Merge `data` over the defaults and validate it; returns the validated input and
        the validated extension sections."""
        if hasattr(data, "model_dump"):
            data = data.model_dump()
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"policy input must be a mapping, not {type(data).__name__}")
        merged = {**self.default_values, **data}
        extras: dict[str, Any] = {}
        for name, validate in self.extensions.items():
            # The section as given; its owner merges it over `extension_defaults`.
            extras[name] = validate(merged.pop(name, None))
        return self.codec.validate(merged, what="policy input"), extras


def define_context(
    schema: object,
    default_values: Mapping[str, Any] | None = None,
    tools: Mapping[str, Any] | None = None,
) -> Context:
    """A context for rules: `schema` (pydantic model, TypeAdapter, type or CoreSchema) of
    the input, `default_values` merged under every input (each is checked against its
    field now, when the schema has named fields), and `tools`."""
    codec = codec_for(schema)
    defaults = dict(default_values or {})
    _check_defaults(schema, defaults)
    return Context(codec, MappingProxyType(defaults), Tools(tools))


def _check_defaults(schema: object, defaults: dict[str, Any]) -> None:
    if not defaults:
        return
    fields = getattr(schema, "model_fields", None)
    if fields is None:
        return  # no named fields to check one by one: the whole input is validated later
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise InvalidOptionError(f"default_values: unknown field(s) {unknown}")
    from pydantic import TypeAdapter, ValidationError

    for name, value in defaults.items():
        try:
            TypeAdapter(fields[name].annotation).validate_python(value)
        except ValidationError as exc:
            raise InvalidOptionError(f"default_values[{name!r}] is invalid: {exc}") from None


def extend_context(
    context: Context,
    *,
    tools: Mapping[str, Any] | None = None,
    extensions: Mapping[str, Callable[[Any], Any]] | None = None,
    extension_defaults: Mapping[str, Any] | None = None,
) -> Context:
    """A copy of `context` with more tools and input extensions (existing ones are kept
    unless replaced by name)."""
    return Context(
        context.codec,
        context.default_values,
        Tools({**context.tools.as_dict(), **(tools or {})}),
        MappingProxyType({**context.extensions, **(extensions or {})}),
        MappingProxyType({**context.extension_defaults, **(extension_defaults or {})}),
    )
