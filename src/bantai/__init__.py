"""bantai: a fast, correct Redis storage adapter with Bantai policies and rate limiting.

The public API is what this package and its subpackages (`bantai.core`, `bantai.storage`,
`bantai.redis`, `bantai.ratelimit`, `bantai.errors`, `bantai.testing`) export in their
`__all__`; every other module and every name starting with `_` is internal and may change
without notice. Names are grouped below by layer, bottom-up.
"""

from importlib.metadata import PackageNotFoundError, version

from bantai.core import (
    Context,
    Policy,
    PolicyResult,
    Rule,
    RuleContext,
    RuleResult,
    allow,
    define_context,
    define_policy,
    define_rule,
    deny,
    evaluate_policy,
    evaluate_policy_sync,
    skip,
)
from bantai.errors import (
    BantaiError,
    InvalidInputError,
    InvalidKeyError,
    InvalidOptionError,
    InvalidRuleError,
    InvalidTTLError,
    InvalidUpdaterError,
    InvalidValueError,
    LockError,
    LockLostError,
    LockTimeoutError,
    PurePythonWarning,
    StorageClosedError,
    StorageError,
    StoredValueError,
    UnsupportedOperationError,
    UpdateOutcomeUnknownError,
    WriteOutcomeUnknownError,
    WrongTypeError,
)
from bantai.ratelimit import (
    RateLimitConfig,
    RateLimitConfigDict,
    RateLimitResult,
    define_rate_limit_rule,
    rate_limit,
    rate_limit_check_result_schema,
    rate_limit_schema,
    with_rate_limit,
)
from bantai.redis import (
    AsyncRedisStorage,
    CacheStats,
    LocalCacheOptions,
    RedisStorage,
    RedisStorageOptions,
    create_async_redis_storage,
    create_redis_storage,
)
from bantai.storage import (
    AsyncMemoryStorage,
    MemoryStorage,
    StorageAdapter,
    StorageOptions,
    StorageTools,
    UpdateResult,
    create_async_memory_storage,
    create_memory_storage,
    with_storage,
)

try:
    __version__ = version("bantai")
except PackageNotFoundError:  # pragma: no cover - running from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # errors (bantai.errors)
    "BantaiError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidOptionError",
    "InvalidRuleError",
    "InvalidTTLError",
    "InvalidUpdaterError",
    "InvalidValueError",
    "StorageError",
    "StorageClosedError",
    "StoredValueError",
    "WrongTypeError",
    "UnsupportedOperationError",
    "LockError",
    "LockTimeoutError",
    "LockLostError",
    "WriteOutcomeUnknownError",
    "UpdateOutcomeUnknownError",
    "PurePythonWarning",
    # core: contexts, rules, policies (bantai.core)
    "Context",
    "define_context",
    "Rule",
    "RuleContext",
    "RuleResult",
    "define_rule",
    "allow",
    "deny",
    "skip",
    "Policy",
    "PolicyResult",
    "define_policy",
    "evaluate_policy",
    "evaluate_policy_sync",
    # storage: the protocol, options, the memory storages, with_storage (bantai.storage)
    "StorageAdapter",
    "StorageOptions",
    "UpdateResult",
    "MemoryStorage",
    "AsyncMemoryStorage",
    "create_memory_storage",
    "create_async_memory_storage",
    "StorageTools",
    "with_storage",
    # the Redis adapter (bantai.redis)
    "RedisStorage",
    "AsyncRedisStorage",
    "RedisStorageOptions",
    "LocalCacheOptions",
    "CacheStats",
    "create_redis_storage",
    "create_async_redis_storage",
    # rate limiting (bantai.ratelimit)
    "RateLimitConfig",
    "RateLimitConfigDict",
    "RateLimitResult",
    "rate_limit",
    "rate_limit_schema",
    "rate_limit_check_result_schema",
    "with_rate_limit",
    "define_rate_limit_rule",
]
