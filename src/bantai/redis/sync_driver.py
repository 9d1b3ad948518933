"""Runs operations (see `operations`) over a redis-py connection pool, synchronously.

The driver only does I/O: it packs a round trip's commands into one write, reads one reply
per command, recovers NOSCRIPT, and reports a lost reply of a non-retry-safe round trip as
`ReplyLost`. It deliberately bypasses redis-py's command layer (response callbacks and its
automatic `Retry`, which would resend a commit whose first attempt may have landed) while
keeping redis-py's connections: auth, TLS, ACL, db selection, Sentinel, fork safety.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.redis.operations import (
    CallUpdater,
    Command,
    Operation,
    ReplyLost,
    RoundTrip,
    Sleep,
    merge_resend,
    noscript_resend,
)

R = TypeVar("R")


class SyncDriver:
    """Drives operations over `client.connection_pool` (a `redis.Redis`, including
    Sentinel-managed clients)."""

    __slots__ = ("_pool",)

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool

    def run(self, op: Operation[R]) -> R:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = op.send(value) if error is None else op.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            if type(step) is RoundTrip:
                try:
                    value = self.round_trip(step)
                except BaseException as exc:
                    error = exc
            elif type(step) is Sleep:
                time.sleep(step.seconds)
            else:
                assert type(step) is CallUpdater
                try:
                    value = step.updater(*step.args)
                except BaseException as exc:
                    error = exc

    def round_trip(self, step: RoundTrip) -> list[Any]:
        retried = False
        while True:
            # Connects (and authenticates) if needed.
            conn: Any = self._pool.get_connection()
            try:
                replies = self._exchange(conn, step.commands)
                resend = noscript_resend(step.commands, replies)
                if resend is not None:
                    failed, commands = resend
                    replies = merge_resend(replies, failed, self._exchange(conn, commands))
                return replies
            except (RedisConnectionError, RedisTimeoutError) as exc:
                conn.disconnect()
                if step.retry_safe:
                    # One immediate resend covers a connection that died while idle in the
                    # pool (server restart). Not for auth failures or timeouts: no storms.
                    if not retried and type(exc) is RedisConnectionError:
                        retried = True
                        continue
                    raise
                # The write may have reached the server: only the operation knows what
                # a lost reply means (for a commit: outcome unknown, never a resend).
                raise ReplyLost() from exc
            except BaseException:
                # Interrupted mid-exchange: unread replies would poison the next user.
                conn.disconnect()
                raise
            finally:
                self._pool.release(conn)

    @staticmethod
    def _exchange(conn: Any, commands: Sequence[Command]) -> list[Any]:
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except ResponseError as exc:
                replies.append(exc)
        return replies
