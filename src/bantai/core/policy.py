"""Policies: ordered rules evaluated with a strategy. The evaluation is written once as a
step generator and run blocking (`evaluate_policy_sync`) or on asyncio
(`evaluate_policy`), like the storage operations."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bantai.core.context import Context
from bantai.core.results import RuleResult
from bantai.core.rules import AbortEvaluation, Rule, RuleContext
from bantai.errors import InvalidOptionError, InvalidRuleError, UnsupportedOperationError
from bantai.steps import Call, Operation, run_async, run_sync

Strategy = Literal["preemptive", "exhaustive"]
STRATEGIES = ("preemptive", "exhaustive")


@dataclass(frozen=True, slots=True)
class Policy:
    """Created with `define_policy`: a context, a name, ordered rules and the default strategy."""

    context: Context
    name: str
    rules: tuple[Rule, ...]
    default_strategy: Strategy = "preemptive"


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One rule's name and its result, as listed in a `PolicyResult`."""

    name: str
    result: RuleResult


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What `evaluate_policy` decided: `decision` ("allow" / "deny"), `reason`, the violated
    and the evaluated rules (in order), a unique `evaluation_id`, and the strategy used."""

    decision: Literal["allow", "deny"]
    reason: str
    violated_rules: list[RuleOutcome]
    evaluated_rules: list[RuleOutcome]
    strategy: Strategy
    evaluation_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def is_allowed(self) -> bool:
        """True when the decision is "allow"."""
        return self.decision == "allow"


def define_policy(
    context: Context, name: str, rules: Sequence[Rule], default_strategy: Strategy = "preemptive"
) -> Policy:
    """A policy over `context`: `rules` are evaluated in order with `default_strategy`
    ("preemptive": stop at the first deny, hooks as it goes; "exhaustive": every rule, hooks
    by the final decision). Rule names must be unique."""
    if default_strategy not in STRATEGIES:
        raise InvalidOptionError(f"default_strategy must be one of {STRATEGIES}")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"policy {name!r}: rule names must be unique, got {names}")
    return Policy(context, name, tuple(rules), default_strategy)


def _evaluation(policy: Policy, data: object, strategy: Strategy | None) -> Operation[PolicyResult]:
    chosen = strategy or policy.default_strategy
    if chosen not in STRATEGIES:
        raise InvalidOptionError(f"strategy must be one of {STRATEGIES}")
    value, extras = policy.context.parse_input(data)
    ctx = RuleContext(policy.context.tools, extras, {})
    evaluated: list[RuleOutcome] = []
    violated: list[RuleOutcome] = []
    hooks_pending: list[tuple[Rule, RuleResult]] = []
    for rule in policy.rules:
        try:
            result = yield Call(rule.evaluate, (value, ctx))
        except AbortEvaluation as abort:
            raise abort.error from abort.error.__cause__
        except Exception as exc:  # a failing rule denies; the exception is kept on it
            result = RuleResult(False, "rule_evaluation_error", error=exc)
        else:
            _refuse_awaitable(result)
            if not isinstance(result, RuleResult):
                error = InvalidRuleError(
                    f"rule {rule.name!r} returned {type(result).__name__}; return allow(), "
                    "deny() or skip()"
                )
                result = RuleResult(False, "rule_evaluation_error", error=error)
        evaluated.append(RuleOutcome(rule.name, result))
        if not result.allowed:
            violated.append(RuleOutcome(rule.name, result))
        if chosen == "preemptive":
            yield from _run_hook(rule, result, value, ctx)
            if not result.allowed:
                return PolicyResult("deny", "policy_violated", violated, evaluated, chosen)
        else:
            hooks_pending.append((rule, result))
    decision: Literal["allow", "deny"] = "deny" if violated else "allow"
    for rule, result in hooks_pending:  # exhaustive: hooks follow the final decision
        if result.allowed == (decision == "allow"):
            yield from _run_hook(rule, result, value, ctx)
    reason = "policy_violated" if violated else "policy_enforced"
    return PolicyResult(decision, reason, violated, evaluated, chosen)


def _run_hook(rule: Rule, result: RuleResult, value: Any, ctx: RuleContext) -> Operation[None]:
    hook = rule.on_allow if result.allowed else rule.on_deny
    if hook is not None:
        _refuse_awaitable((yield Call(hook, (result, value, ctx))))


def _refuse_awaitable(value: object) -> None:
    """Only the blocking runner hands back an un-awaited coroutine."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise UnsupportedOperationError(
            "a rule or hook is a coroutine function: use `await evaluate_policy(...)`"
        )


def evaluate_policy_sync(
    policy: Policy, data: object, strategy: Strategy | None = None
) -> PolicyResult:
    """Evaluate with plain-function rules and hooks, blocking."""
    return run_sync(_evaluation(policy, data, strategy))


async def evaluate_policy(
    policy: Policy, data: object, strategy: Strategy | None = None
) -> PolicyResult:
    """Evaluate on asyncio; rules and hooks may be plain or coroutine functions."""
    return await run_async(_evaluation(policy, data, strategy))
