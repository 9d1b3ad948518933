"""The asyncio adapter's reply demultiplexer, fed bytes directly (as hiredis' own tests
feed its reader), on both twins in one process; and a Hypothesis parity test: for random
replies, groupings and split points, the compiled and the pure twin hand every waiter the
same replies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from tests.conftest import _compiled, _speedups_pure
from tests.test_implementations import REPLIES  # the same reply kinds as the Wire parity test


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _result(waiter: asyncio.Future[Any]) -> tuple[list[Any], int]:
    assert waiter.done()
    return waiter.result()  # type: ignore[no-any-return]


def test_replies_split_at_every_byte_reach_their_waiters_in_order(
    twin: Any, loop: asyncio.AbstractEventLoop
) -> None:
    mux = twin.Multiplexer()
    first, second = loop.create_future(), loop.create_future()
    mux.expect(first, 2)
    mux.expect(second, 1)
    assert mux.pending == 2
    stream = b"+OK\r\n-NOSCRIPT No matching script.\r\n$5\r\nhello\r\n"
    for i in range(len(stream)):
        mux.feed(stream[i : i + 1])
        if i < len(b"+OK\r\n-NOSCRIPT No matching script.\r\n") - 1:
            assert not first.done()
    replies, errors = _result(first)
    assert replies[0] == b"OK" and isinstance(replies[1], NoScriptError) and errors == 1
    assert _result(second) == ([b"hello"], 0)
    assert mux.pending == 0


def test_a_cancelled_waiters_replies_are_read_and_dropped(
    twin: Any, loop: asyncio.AbstractEventLoop
) -> None:
    mux = twin.Multiplexer()
    gone, next_one = loop.create_future(), loop.create_future()
    mux.expect(gone, 2)
    mux.expect(next_one, 1)
    gone.cancel()
    mux.feed(b":1\r\n:2\r\n:3\r\n")
    assert gone.cancelled()
    assert _result(next_one) == ([3], 0)  # in step: not the cancelled waiter's 1 or 2


def test_push_messages_are_skipped(twin: Any, loop: asyncio.AbstractEventLoop) -> None:
    mux = twin.Multiplexer()
    waiter = loop.create_future()
    mux.expect(waiter, 1)
    mux.feed(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n")
    assert _result(waiter) == ([b"v"], 0)


def test_a_reply_nobody_asked_for_is_a_connection_error(twin: Any) -> None:
    mux = twin.Multiplexer()
    with pytest.raises(RedisConnectionError, match="no command asked for"):
        mux.feed(b"+OK\r\n")


def test_fail_fails_every_pending_waiter(twin: Any, loop: asyncio.AbstractEventLoop) -> None:
    mux = twin.Multiplexer()
    half, whole, done = loop.create_future(), loop.create_future(), loop.create_future()
    mux.expect(done, 1)
    mux.expect(half, 2)
    mux.expect(whole, 1)
    mux.feed(b"+OK\r\n+OK\r\n")  # `done` complete, `half` half way
    error = RedisConnectionError("gone")
    mux.fail(error)
    assert _result(done) == ([b"OK"], 0)
    assert half.exception() is error and whole.exception() is error
    assert mux.pending == 0


def _normalise(value: Any) -> Any:
    if isinstance(value, Exception):
        return (type(value).__name__, str(value))
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _demultiplex(
    module: Any, replies: list[bytes], groups: list[int], cuts: list[int], cancel: set[int]
) -> list[Any]:
    loop = asyncio.new_event_loop()
    try:
        mux = module.Multiplexer()
        waiters = []
        for size in groups:
            waiter = loop.create_future()
            mux.expect(waiter, size)
            waiters.append(waiter)
        for index in cancel:
            waiters[index].cancel()
        stream = b"".join(replies)
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if a < b:
                mux.feed(stream[a:b])
        return [
            "cancelled" if w.cancelled() else _normalise(w.result()) if w.done() else "waiting"
            for w in waiters
        ]
    finally:
        loop.close()


@pytest.mark.skipif(_compiled is None, reason="the compiled extension is not built here")
@settings(max_examples=120, deadline=None)
@given(st.lists(st.sampled_from(REPLIES), min_size=1, max_size=12), st.data())
def test_twins_demultiplex_identically_under_random_splits(replies: list[bytes], data: Any) -> None:
    count = sum(1 for r in replies if not r.startswith(b">"))
    assume(count > 0)  # only push messages: no waiter to compare
    groups: list[int] = []
    left = count
    while left:
        size = data.draw(st.integers(1, left))
        groups.append(size)
        left -= size
    total = len(b"".join(replies))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, total - 1)), max_size=8))))
    cancel = set(data.draw(st.lists(st.integers(0, len(groups) - 1), max_size=2)))
    got_pure = _demultiplex(_speedups_pure, replies, groups, cuts, cancel)
    got_compiled = _demultiplex(_compiled, replies, groups, cuts, cancel)
    assert got_pure == got_compiled
    assert "waiting" not in got_pure
