"""`with_rate_limit` and `define_rate_limit_rule`: rate limiting as a Bantai rule.

Unlike the original (check in the rule, increment in its on_allow hook: two steps, so
concurrent requests are over-admitted), the rule consumes atomically before the rule's own
logic runs. A request that the limiter admits is counted even if the rule's own
`evaluate` then denies it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, Literal

from bantai.core.context import Context, extend_context
from bantai.core.results import deny
from bantai.core.rules import AbortEvaluation, Evaluate, Hook, Rule, RuleContext, define_rule
from bantai.errors import InvalidInputError, InvalidOptionError
from bantai.ratelimit import rate_limit
from bantai.ratelimit.algorithms import RateLimitConfig, RateLimitResult, rate_limit_schema
from bantai.storage.memory import create_memory_storage
from bantai.storage.protocol import AsyncKeyValueStorage, KeyValueStorage
from bantai.storage.with_storage import with_storage

RATE_LIMIT_FIELD = "rate_limit"
_CONFIG_KEYS = {"type", "limit", "period", "cost", "key", "windowMs", "capacity", "refillRate"}


def _check_section(section: object) -> dict[str, Any]:
    """Validate a (partial) rate-limit section of the input or of default values."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InvalidOptionError(f"rate_limit must be a mapping, not {type(section).__name__}")
    unknown = sorted(set(section) - _CONFIG_KEYS)
    if unknown:
        raise InvalidOptionError(f"rate_limit: unknown field(s) {unknown}")
    out = dict(section)
    if {"limit", "period"} <= out.keys() or {"capacity", "refillRate"} <= out.keys():
        RateLimitConfig.parse(out)  # complete: check it now
    return out


def with_rate_limit(
    context: Context,
    storage: KeyValueStorage[Any] | AsyncKeyValueStorage[Any] | None = None,
    generate_key: Callable[[Any], str] | None = None,
    default_values: Mapping[str, Any] | None = None,
) -> Context:
    """Extend `context` for rate-limit rules: limiter state goes to `storage` (a storage
    created with `rate_limit_schema`; the in-memory storage by default), the input
    may carry a `rate_limit` section (type, limit, period, cost, key) over
    `default_values`, and `generate_key(input)` names the limited subject."""
    limiter_storage = storage if storage is not None else create_memory_storage(rate_limit_schema)
    defaults = _check_section(default_values)
    tools = SimpleNamespace(
        check=rate_limit.check,
        increment=rate_limit.increment,
        consume=rate_limit.consume,
        schema=rate_limit_schema,
        generate_key=generate_key,
        storage=limiter_storage,
    )
    extended = extend_context(
        context,
        tools={"rate_limit": tools},
        extensions={RATE_LIMIT_FIELD: _check_section},
        extension_defaults={RATE_LIMIT_FIELD: defaults},
    )
    return with_storage(extended, limiter_storage, storage_name="rate_limit")


StorageErrorChoice = Literal["deny", "allow", "raise"]
_log = logging.getLogger("bantai")


def define_rate_limit_rule(
    context: Context,
    name: str,
    evaluate: Evaluate,
    config: Mapping[str, Any] | None = None,
    on_allow: Hook | None = None,
    on_deny: Hook | None = None,
    *,
    on_storage_error: StorageErrorChoice = "deny",
) -> Rule:
    """A rule that first consumes from the limiter (key `rules:<name>:<key>`), denies when
    the limit is reached, and otherwise runs `evaluate(input, ctx)`, where
    `ctx.rate_limit` is the decision (allowed, remaining, reset_at, reason).

    `on_storage_error` says what happens when the limiter's storage fails (Redis down, a
    timeout, an outcome unknown): ``"deny"`` (the default: the request is refused, reason
    ``rate_limit_storage_error``), ``"allow"`` (fail open: the rule's own logic runs with
    ``ctx.rate_limit`` None), or ``"raise"`` (`evaluate_policy` raises the storage's error,
    e.g. to answer 503). Each time it is logged at WARNING (logger ``bantai``) with the
    rule's name."""
    if "rate_limit" not in context.tools:
        raise InvalidOptionError("define_rate_limit_rule needs a context from with_rate_limit")
    if on_storage_error not in ("deny", "allow", "raise"):
        raise InvalidOptionError(
            f"on_storage_error must be 'deny', 'allow' or 'raise', not {on_storage_error!r}"
        )
    tools = context.tools.rate_limit
    # Precedence: with_rate_limit's defaults < this rule's config < the input's section.
    base = {**context.extension_defaults.get(RATE_LIMIT_FIELD, {}), **_check_section(config)}
    if {"limit", "period"} <= base.keys() or {"capacity", "refillRate"} <= base.keys():
        RateLimitConfig.parse(base)  # invalid limits, periods, costs fail here, not later
    asynchronous = inspect.iscoroutinefunction(getattr(tools.storage, "get", None))

    shared_bucket_warned = False

    def plan(data: Any, ctx: RuleContext) -> tuple[RateLimitConfig, str]:
        nonlocal shared_bucket_warned
        section = {**base, **ctx.extras.get(RATE_LIMIT_FIELD, {})}
        cfg = RateLimitConfig.parse(section)
        subject = section.get("key") or (tools.generate_key(data) if tools.generate_key else None)
        if not subject and not shared_bucket_warned:  # as in the original; rarely what is meant
            shared_bucket_warned = True
            _log.warning(
                "rate limit rule %r: no key for this request (no generate_key in "
                "with_rate_limit, no rate_limit.key in the input), so every such request "
                "shares one bucket, 'rules:%s:unknown-key'",
                name, name,
            )  # fmt: skip
        return cfg, f"rules:{name}:{subject or 'unknown-key'}"

    def decided(result: RateLimitResult, cfg: RateLimitConfig, data: Any, ctx: RuleContext) -> Any:
        ctx.state["rate_limit"] = result
        if not result.allowed:
            # "rate_limit" is the original's meta; the other two serve HTTP answers.
            meta = {"rate_limit": result.to_json(), "rate_limit_result": result,
                    "rate_limit_config": cfg}  # fmt: skip
            return deny(reason=result.reason, meta=meta)
        return evaluate(data, ctx)

    def failed(exc: Exception, data: Any, ctx: RuleContext) -> Any:
        if isinstance(exc, InvalidInputError):  # a bad config, not a storage failure
            raise exc
        _log.warning(
            "rate limit rule %r: storage error (%s: %s); on_storage_error=%r",
            name, type(exc).__name__, exc, on_storage_error,
        )  # fmt: skip
        if on_storage_error == "raise":
            raise AbortEvaluation(exc) from exc
        if on_storage_error == "allow":
            ctx.state["rate_limit"] = None
            return evaluate(data, ctx)
        return deny(reason="rate_limit_storage_error", meta={"error": repr(exc)})

    if asynchronous:

        async def limited_async(data: Any, ctx: RuleContext) -> Any:
            cfg, key = plan(data, ctx)
            try:
                result = await rate_limit.consume_async(tools.storage, cfg, key=key)
            except Exception as exc:
                outcome = failed(exc, data, ctx)
            else:
                outcome = decided(result, cfg, data, ctx)
            return await outcome if inspect.isawaitable(outcome) else outcome

        return define_rule(context, name, limited_async, on_allow, on_deny)

    def limited(data: Any, ctx: RuleContext) -> Any:
        cfg, key = plan(data, ctx)
        try:
            result = rate_limit.consume(tools.storage, cfg, key=key)
        except Exception as exc:
            return failed(exc, data, ctx)
        return decided(result, cfg, data, ctx)

    return define_rule(context, name, limited, on_allow, on_deny)
