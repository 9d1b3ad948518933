"""What the operations make of Redis replies and lost replies, shared by the generic
operations (`operations`) and the single-key update (`update_one`): error replies
naming the keys, WRONGTYPE, outcome-unknown writes, and when a cleanup must not make
anyone wait. No I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import (
    LockLostError,
    StoredValueError,
    UpdateOutcomeUnknownError,
    WriteOutcomeUnknownError,
    WrongTypeError,
)
from bantai.redis import scripts
from bantai.redis.round_trip import Command, ReplyLost
from bantai.storage.inputs import Key
from bantai.storage.locking import shown_keys

Arg = bytes | str | int


def evalsha(script: scripts.Script, keys: Sequence[bytes], args: Sequence[Arg]) -> Command:
    """An EVALSHA command for `script` (loaded on NOSCRIPT by the round-trip policy)."""
    return (b"EVALSHA", script.sha, len(keys), *keys, *args)


def lost_write(what: str, keys: Sequence[Key], lost: ReplyLost) -> WriteOutcomeUnknownError:
    """The error for a write whose reply was lost: it may or may not have happened."""
    return WriteOutcomeUnknownError(
        f"{what} of {shown_keys(keys)} was sent but its reply was lost ({lost.__cause__!r}); "
        "it may or may not have been applied, and it was not resent",
        keys=keys,
    )


def check_reply(reply: Any, keys: Sequence[Key]) -> Any:
    """Raise an error reply, naming the keys; return any other reply unchanged. A lost
    reply of a write (the drivers' `call` returns `ReplyLost` in its place) raises
    `WriteOutcomeUnknownError`."""
    if isinstance(reply, Exception):
        if type(reply) is ReplyLost:
            raise lost_write("write", keys, reply) from reply.__cause__
        if "WRONGTYPE" in str(reply):
            shown = keys[0] if len(keys) == 1 else list(keys)
            raise WrongTypeError(
                f"key {shown!r} holds a non-string Redis type, not a bantai value: {reply}",
                key=keys[0],
            ) from reply
        raise reply
    return reply


def unanswered(failure: BaseException | None) -> bool:
    """Whether a failure means the server is not answering (a timeout) or the caller has
    gone (cancelled): then a cleanup must not make anyone wait."""
    if isinstance(failure, ReplyLost):
        failure = failure.__cause__
    return isinstance(failure, (RedisTimeoutError, asyncio.CancelledError))


def commit_reply_lost(keys: Sequence[Key], lost: ReplyLost) -> UpdateOutcomeUnknownError:
    """The error for an update whose commit reply was lost."""
    return UpdateOutcomeUnknownError(
        f"commit of {shown_keys(keys)} was sent but its reply was lost "
        f"({lost.__cause__!r}); the write may or may not have happened",
        keys=keys,
    )


def lock_lost(keys: Sequence[Key], lock_ttl_ms: int, *, several_groups: bool) -> LockLostError:
    """The error for an update whose lock expired and was taken before its commit."""
    return LockLostError(
        f"lock on {shown_keys(keys)} expired (lock_ttl_ms={lock_ttl_ms}) "
        "and was taken by another client before the commit; nothing was written"
        + (" for their slot groups" if several_groups else ""),
        keys=keys,
    )


def release_command(lock_keys: Sequence[bytes], token: bytes) -> Command:
    """The script call that deletes the locks still holding `token`."""
    return evalsha(scripts.RELEASE, lock_keys, (token,))


def invalid_limiter_state(key: Key, reason: bytes | str) -> StoredValueError:
    """The rate-limit script found a state it cannot trust under `key` (reply {3, reason})."""
    why = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    return StoredValueError(
        f"rate limit state stored under key {key!r} is invalid: {why}; nothing was counted",
        key=key,
    )
