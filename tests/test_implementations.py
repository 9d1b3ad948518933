"""The compiled hot path and its pure twin: the right one is active, and both produce the
same bytes and the same replies (Hypothesis). The whole suite runs once per
implementation (`make test`); these tests compare them directly."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import hiredis
import pydantic_core
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import bantai.redis
from bantai.codec import codec_for
from bantai.redis import _speedups_pure as pure
from bantai.redis import speedups
from bantai.redis.speedups import IMPLEMENTATION

try:
    from bantai.redis import _speedups as compiled
except ImportError:  # pragma: no cover - only where the extension was not built
    compiled = None

needs_compiled = pytest.mark.skipif(
    compiled is None and os.environ.get("BANTAI_EXPECT_IMPLEMENTATION") != "cython",
    reason="the compiled extension is not built here",
)


def test_the_expected_implementation_is_active() -> None:
    """`make test` sets BANTAI_EXPECT_IMPLEMENTATION, so a build that silently fell back to
    pure Python fails CI instead of shipping slow."""
    forced_pure = os.environ.get("BANTAI_NO_EXTENSIONS", "") not in ("", "0")
    expected = os.environ.get("BANTAI_EXPECT_IMPLEMENTATION") or (
        "python" if forced_pure or compiled is None else "cython"
    )
    assert expected == IMPLEMENTATION
    assert bantai.redis.IMPLEMENTATION == IMPLEMENTATION


# Imports bantai with the compiled modules made unimportable (a meta path finder in front
# of every other), recording every warning ("always": a second one would show), and prints
# the implementation chosen and the warnings as JSON.
_WITHOUT_COMPILED = """
import json, sys, warnings
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name in ("bantai.redis._speedups", "bantai.redis._single_key"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import bantai
    import bantai.redis
    from bantai.redis import speedups
    print(json.dumps({
        "implementation": bantai.redis.IMPLEMENTATION,
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
    }))
"""


@pytest.mark.parametrize("no_extensions", ["", "1"], ids=["fallback", "BANTAI_NO_EXTENSIONS=1"])
def test_pure_python_fallback_warns_once(no_extensions: str) -> None:
    """A missing compiled extension where wheels carry one warns once (PurePythonWarning,
    saying how to fix or silence it); choosing pure Python with BANTAI_NO_EXTENSIONS=1
    does not warn. Elsewhere (Windows, PyPy, other CPUs) the fallback is silent."""
    env = {**os.environ, "BANTAI_NO_EXTENSIONS": no_extensions}
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_COMPILED],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["implementation"] == "python"
    ours = [message for category, message in report["warnings"] if category == "PurePythonWarning"]
    if no_extensions or not speedups._compiled_expected():
        assert ours == []
    else:
        assert len(ours) == 1, ours
        assert "compiled extension is missing" in ours[0]
        assert "(blocked)" in ours[0]  # the import error is named
        assert "BANTAI_NO_EXTENSIONS=1" in ours[0]


def test_where_the_compiled_extension_is_expected() -> None:
    """The platforms the binary wheels cover (pyproject.toml [tool.cibuildwheel])."""
    expected = speedups._compiled_expected
    assert expected("cpython", "linux", "x86_64")
    assert expected("cpython", "linux", "aarch64")
    assert expected("cpython", "darwin", "arm64")
    assert expected("cpython", "darwin", "x86_64")
    assert not expected("cpython", "win32", "AMD64")  # the pure wheel serves Windows
    assert not expected("pypy", "linux", "x86_64")
    assert not expected("cpython", "linux", "ppc64le")
    assert not expected("cpython", "linux", "i686")
    assert issubclass(bantai.PurePythonWarning, RuntimeWarning)


args = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(b""),
    st.tuples(st.binary(min_size=1, max_size=4), st.integers(10_000, 40_000)).map(
        lambda t: t[0] * t[1]  # large arguments, cheap to generate
    ),
)
commands = st.lists(st.lists(args, min_size=1, max_size=6), min_size=1, max_size=5)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(commands)
def test_packing_identical_to_pure_and_hiredis(cmds: list[list[Any]]) -> None:
    assert compiled is not None
    expected = b"".join(hiredis.pack_command(tuple(c)) for c in cmds)
    assert pure.pack_commands(cmds) == expected
    assert compiled.pack_commands(cmds) == expected


@needs_compiled
def test_packing_refuses_the_same_types() -> None:
    assert compiled is not None
    for bad in (1.5, None, True, object()):
        for impl in (pure, compiled):
            with pytest.raises(TypeError, match="cannot send"):
                impl.pack_commands([(b"SET", bad)])


@needs_compiled
def test_tokens() -> None:
    assert compiled is not None
    for impl in (pure, compiled):
        tokens = {impl.new_token() for _ in range(1000)}
        assert len(tokens) == 1000
        assert all(len(t) == 32 and int(t, 16) >= 0 and t == t.lower() for t in tokens)


# --- replies under random chunking ------------------------------------------------------


class ScriptedServer:
    """A loopback socket server that answers one request with fixed bytes, written in the
    chunks the test chooses (so replies arrive split at arbitrary points)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.chunks = chunks
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed: the client gave up before connecting
            return
        with conn, contextlib.suppress(OSError):  # the client may hang up first
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.recv(65536)
            for chunk in self.chunks:
                conn.sendall(chunk)
                time.sleep(0.0005)  # let the client see each chunk on its own
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


REPLIES = [
    b"+OK\r\n",
    b"$5\r\nhello\r\n",
    b"$-1\r\n",
    b":42\r\n",
    b"-NOSCRIPT No matching script.\r\n",
    b"*3\r\n:1\r\n$3\r\nabc\r\n*0\r\n",
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    b"-OOM command not allowed\r\n",
    b"$0\r\n\r\n",
    b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",  # a RESP3 push: skipped, not counted
    b"_\r\n",
    b"#f\r\n",
]


def _normalise(reply: Any) -> Any:
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [_normalise(r) for r in reply]
    return reply


def _exchange_via(impl: Any, payload: bytes, cuts: list[int], count: int, spin_us: int) -> Any:
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    server = ScriptedServer([c for c in chunks if c])
    conn = redis.Connection(host="127.0.0.1", port=server.port, protocol=2)
    conn._sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        wire = impl.Wire(conn)
        replies = wire.exchange([(b"PING",)] * count, spin_us)
        assert wire.errors == sum(isinstance(r, Exception) for r in replies)
        return _normalise(replies)
    finally:
        conn.disconnect()
        server.close()


@needs_compiled
@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(REPLIES), min_size=1, max_size=8), st.data())
def test_replies_identical_under_random_splits(replies: list[bytes], data: Any) -> None:
    payload = b"".join(replies)
    count = sum(1 for r in replies if not r.startswith(b">"))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(payload)]
    spin_us = data.draw(st.sampled_from([0, 0, 50, 2000]))
    got_pure = _exchange_via(pure, payload, cuts, count, spin_us)
    got_compiled = _exchange_via(compiled, payload, cuts, count, spin_us)
    assert got_pure == got_compiled
    assert len(got_pure) == count


# --- JSON round trips -------------------------------------------------------------------


class Leaf(BaseModel):
    name: str
    weight: float
    tags: list[str]


class Tree(BaseModel):
    id: int
    leaves: list[Leaf]
    meta: dict[str, int | None]


trees = st.builds(
    Tree,
    id=st.integers(-(2**53), 2**53),
    leaves=st.lists(
        st.builds(
            Leaf,
            name=st.text(max_size=20),
            weight=st.floats(allow_nan=False, allow_infinity=False),
            tags=st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=4,
    ),
    meta=st.dictionaries(st.text(max_size=8), st.none() | st.integers(), max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(trees)
def test_json_round_trip(tree: Tree) -> None:
    """Encode then decode gives the value back, and the bytes are compact JSON (what
    JSON.stringify writes: no whitespace outside strings, UTF-8 not escaped)."""
    codec = codec_for(Tree)
    validated, data = codec.encode(tree, "k")
    assert validated == tree
    assert codec.decode(data, "k") == tree
    parsed = json.loads(data)
    assert parsed == tree.model_dump(mode="json")
    assert pydantic_core.to_json(parsed) == data


@pytest.mark.parametrize("has_poll", [True, False], ids=["poll", "select"])
def test_readiness_checks_without_poll(has_poll: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no `select.poll` (and gets no compiled extension): the idle-connection
    check before a write and the pure busy-poll fall back to `select()` there. Both ways
    see no data, then data, then a closed peer."""
    from bantai.redis import sync_driver

    if not hasattr(select, "poll"):  # Windows
        has_poll = False
    monkeypatch.setattr(pure, "_HAS_POLL", has_poll)
    readable = sync_driver._readable_by_poll if has_poll else sync_driver._readable_by_select
    a, b = socket.socketpair()
    with a, b:
        assert not readable(a)
        started = time.perf_counter()
        pure._spin_until_readable(a, 20_000)  # nothing arrives: spins the whole 20 ms
        assert time.perf_counter() - started >= 0.02
        b.sendall(b"+OK\r\n")
        started = time.perf_counter()
        pure._spin_until_readable(a, 5_000_000)  # returns as soon as it is readable
        assert time.perf_counter() - started < 1
        assert readable(a)
        assert a.recv(16) == b"+OK\r\n"
        assert not readable(a)
        b.close()
        assert readable(a)  # the peer closed: a stale connection
    native = "poll" if hasattr(select, "poll") else "select"
    assert sync_driver._readable.__name__ == f"_readable_by_{native}"
