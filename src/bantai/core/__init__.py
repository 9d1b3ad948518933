"""Bantai core: contexts, rules and policies."""

from bantai.core.context import Context, Tools, define_context, extend_context
from bantai.core.policy import (
    Policy,
    PolicyResult,
    RuleOutcome,
    define_policy,
    evaluate_policy,
    evaluate_policy_sync,
)
from bantai.core.results import RuleResult, allow, deny, skip
from bantai.core.rules import Rule, RuleContext, define_rule

__all__ = [
    "Context",
    "Policy",
    "PolicyResult",
    "Rule",
    "RuleContext",
    "RuleOutcome",
    "RuleResult",
    "Tools",
    "allow",
    "define_context",
    "define_policy",
    "define_rule",
    "deny",
    "evaluate_policy",
    "evaluate_policy_sync",
    "extend_context",
    "skip",
]
