"""Rule results: `allow`, `deny`, `skip` (the TypeScript `RuleResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What a rule decided. `skipped` results count as allowed. `error` keeps the exception
    of a rule that raised (its result is then `deny(reason="rule_evaluation_error")`)."""

    allowed: bool
    reason: str | None = None
    skipped: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


def allow(reason: str | None = None, meta: Mapping[str, Any] | None = None) -> RuleResult:
    """The rule admits the input."""
    return RuleResult(True, reason, False, dict(meta or {}))


def deny(reason: str | None = None, meta: Mapping[str, Any] | None = None) -> RuleResult:
    """The rule refuses the input; the policy's decision becomes deny."""
    return RuleResult(False, reason, False, dict(meta or {}))


def skip(reason: str | None = "skipped", meta: Mapping[str, Any] | None = None) -> RuleResult:
    """The rule does not apply; counts as allowed."""
    return RuleResult(True, reason, True, dict(meta or {}))
