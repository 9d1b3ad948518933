"""Rules: a named decision over a context's input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bantai.core.context import Context
from bantai.core.results import RuleResult
from bantai.errors import BantaiError, InvalidRuleError

Evaluate = Callable[[Any, "RuleContext"], Any]  # returns RuleResult or an awaitable of it
Hook = Callable[[RuleResult, Any, "RuleContext"], Any]


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule's `evaluate` and hooks receive besides the input: the context's tools,
    and the validated extension sections of the input (e.g. `extras["rate_limit"]`).
    Rules may attach per-evaluation data in `state` (the rate-limit rule puts its
    decision there as `state["rate_limit"]`)."""

    tools: Any
    extras: dict[str, Any]
    state: dict[str, Any]

    @property
    def rate_limit(self) -> Any:
        """The current rate-limit decision, inside a rate-limit rule."""
        return self.state.get("rate_limit")


class AbortEvaluation(BantaiError):
    """Raised by a rule to abort the whole policy evaluation with `error` (which
    `evaluate_policy` then raises) instead of the usual deny of a failing rule — e.g. a
    rate-limit rule with ``on_storage_error="raise"`` when its storage is down."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class Rule:
    """Created with `define_rule`: a named decision over a context's input, with optional
    hooks."""

    context: Context
    name: str
    evaluate: Evaluate
    on_allow: Hook | None = None
    on_deny: Hook | None = None


def define_rule(
    context: Context,
    name: str,
    evaluate: Evaluate,
    on_allow: Hook | None = None,
    on_deny: Hook | None = None,
) -> Rule:
    """`evaluate(input, ctx)` (plain or coroutine function) returns `allow(...)`,
    `deny(...)` or `skip(...)`; `on_allow` / `on_deny(result, input, ctx)` run after it
    according to the policy's strategy."""
    if not isinstance(name, str) or not name:
        raise InvalidRuleError(f"a rule needs a non-empty name, not {name!r}")
    for what, fn in (("evaluate", evaluate), ("on_allow", on_allow), ("on_deny", on_deny)):
        if fn is not None and not callable(fn):
            raise InvalidRuleError(f"rule {name!r}: {what} must be callable")
    return Rule(context, name, evaluate, on_allow, on_deny)
