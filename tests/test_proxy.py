"""The fault-injection proxy itself, against a real redis-server: the fault tests elsewhere are
only as trustworthy as the faults they inject. Every client here disables redis-py's own
retries, so each fault is seen exactly once and the outcome is deterministic."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bantai.testing import LocalRedisServer
from tests.proxy import FaultProxy

# The SET command as redis-py encodes it (a RESP bulk string). A bare b"SET" would also match
# the CLIENT SETINFO handshake redis-py sends on each new connection.
SET = b"\r\nSET\r\n"

ClientFactory = Callable[..., redis.Redis]


@pytest.fixture
def proxy(redis_server: LocalRedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_host=redis_server.host, upstream_port=redis_server.port) as p:
        yield p


@pytest.fixture
def direct(redis_server: LocalRedisServer) -> Iterator[redis.Redis]:
    """Looks at the server behind the proxy's back."""
    client: redis.Redis = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    keys = list(client.scan_iter(match=f"proxytest:{_RUN}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_client(proxy: FaultProxy) -> Iterator[ClientFactory]:
    clients: list[redis.Redis] = []

    def make(socket_timeout: float = 2.0) -> redis.Redis:
        client: redis.Redis = redis.Redis(
            host=proxy.host,
            port=proxy.port,
            socket_timeout=socket_timeout,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),  # no silent resend: we must see each fault once
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


_RUN = uuid.uuid4().hex[:8]


def key(name: str) -> str:
    return f"proxytest:{_RUN}:{name}:{uuid.uuid4().hex[:8]}"


def test_forwards_commands(proxy: FaultProxy, make_client: ClientFactory) -> None:
    client = make_client()
    k = key("plain")
    assert client.set(k, "v") is True
    assert client.get(k) == b"v"
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    assert proxy.connections == 1
    assert (proxy.replies_lost, proxy.requests_dropped) == (0, 0)


def test_large_values_pass_intact(make_client: ClientFactory) -> None:
    client = make_client()
    k = key("large")
    value = bytes(range(256)) * 20_000  # 5 MB: many chunks, and more than the high-water mark
    client.set(k, value)
    assert client.get(k) == value


def test_lose_reply_runs_the_command_but_the_client_never_hears(
    proxy: FaultProxy, make_client: ClientFactory, direct: redis.Redis
) -> None:
    client = make_client()
    client.ping()  # the fault also applies to connections opened before it was armed
    k = key("lost")
    proxy.lose_reply_after(SET)
    with pytest.raises(redis.exceptions.ConnectionError):
        client.set(k, "written")
    assert direct.get(k) == b"written"
    assert proxy.replies_lost == 1
    # One-shot: the client reconnects and the next SET goes through.
    assert client.set(k, "again") is True
    assert direct.get(k) == b"again"
    assert proxy.replies_lost == 1


def test_lose_reply_gives_up_waiting_for_an_answer_after_the_grace_period(
    proxy: FaultProxy, make_client: ClientFactory
) -> None:
    client = make_client()
    client.ping()
    proxy.lose_reply_after(b"\r\nBLPOP\r\n")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.blpop([key("empty")], timeout=1)  # the server would answer after 1 s
    assert time.monotonic() - started < 0.8  # cut after the 0.2 s grace, not the server's 1 s
    assert proxy.replies_lost == 1


def test_drop_request_never_reaches_the_server(
    proxy: FaultProxy, make_client: ClientFactory, direct: redis.Redis
) -> None:
    client = make_client()
    k = key("dropped")
    proxy.drop_request(SET)
    with pytest.raises(redis.exceptions.ConnectionError):
        client.set(k, "never")
    assert direct.get(k) is None
    assert proxy.requests_dropped == 1
    assert client.set(k, "later") is True
    assert direct.get(k) == b"later"


def test_count_fires_exactly_that_many_times(
    proxy: FaultProxy, make_client: ClientFactory, direct: redis.Redis
) -> None:
    client = make_client()
    k = key("count")
    proxy.drop_request(SET, count=2)
    for _ in range(2):
        with pytest.raises(redis.exceptions.ConnectionError):
            client.set(k, "v")
    assert client.set(k, "v") is True
    assert proxy.requests_dropped == 2
    assert direct.get(k) == b"v"


def test_non_matching_commands_are_untouched(proxy: FaultProxy, make_client: ClientFactory) -> None:
    client = make_client()
    proxy.drop_request(SET)
    k = key("untouched")
    assert client.get(k) is None
    assert client.incr(k) == 1
    assert proxy.requests_dropped == 0


def test_held_replies_look_like_a_frozen_server(
    proxy: FaultProxy, make_client: ClientFactory, direct: redis.Redis
) -> None:
    client = make_client(socket_timeout=0.3)
    client.ping()  # connect first: a new connection would already time out in its handshake
    k = key("held")
    proxy.hold_replies()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.set(k, "meanwhile")
    assert direct.get(k) == b"meanwhile"  # the server kept working
    proxy.release_replies()
    assert make_client().get(k) == b"meanwhile"


def test_release_delivers_buffered_replies_in_order(proxy: FaultProxy) -> None:
    # A raw socket, since redis-py gives up on a connection once it has timed out.
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        proxy.hold_replies()
        sock.sendall(b"*2\r\n$4\r\nECHO\r\n$1\r\na\r\n*2\r\n$4\r\nECHO\r\n$1\r\nb\r\n")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(64)
        sock.settimeout(2)
        proxy.release_replies()
        expected = b"$1\r\na\r\n$1\r\nb\r\n"
        received = b""
        while len(received) < len(expected):
            chunk = sock.recv(64)
            assert chunk
            received += chunk
        assert received == expected


def test_reset_all_breaks_open_connections(proxy: FaultProxy) -> None:
    # One dedicated connection, not a pool: see the next test for why.
    client = redis.Redis(
        host=proxy.host,
        port=proxy.port,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )
    try:
        assert client.ping() is True
        assert proxy.connections == 1
        proxy.reset_all()
        assert proxy.connections == 0
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    finally:
        client.close()


def test_pool_silently_replaces_an_idle_reset_connection(
    proxy: FaultProxy, make_client: ClientFactory
) -> None:
    """Not a proxy property but a trap for fault tests: redis-py's pool probes a connection
    before lending it out and reconnects one that was reset while idle. Only a command in
    flight (lose_reply_after, drop_request, hold_replies + reset_all) sees the failure."""
    client = make_client()
    assert client.ping() is True
    proxy.reset_all()
    assert client.ping() is True
    assert proxy.connections == 1


def test_disconnects_close_the_pair(
    proxy: FaultProxy, make_client: ClientFactory, direct: redis.Redis
) -> None:
    client = make_client()
    client.ping()
    client.close()  # client side goes away
    proxy.wait_for(lambda: proxy.connections == 0, timeout=2)

    name = f"proxytest-{uuid.uuid4().hex[:8]}"
    client.client_setname(name)
    assert proxy.connections == 1
    victims = [c for c in direct.client_list() if c.get("name") == name]
    assert len(victims) == 1
    direct.client_kill(victims[0]["addr"])  # server side goes away
    proxy.wait_for(lambda: proxy.connections == 0, timeout=2)


def test_stop_closes_everything_and_is_idempotent(redis_server: LocalRedisServer) -> None:
    proxy = FaultProxy(upstream_host=redis_server.host, upstream_port=redis_server.port).start()
    clients = [
        redis.Redis(host=proxy.host, port=proxy.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        for _ in range(2)
    ]
    try:
        for client in clients:
            assert client.ping() is True
        assert proxy.connections == 2
        proxy.stop()
        assert proxy.connections == 0
        assert not [t for t in threading.enumerate() if t.name == f"FaultProxy-{proxy.port}"]
        proxy.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=1).close()
        with pytest.raises(redis.exceptions.ConnectionError):
            clients[0].ping()
    finally:
        proxy.stop()
        for client in clients:
            client.close()


def test_unreachable_upstream_drops_the_client() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with FaultProxy(upstream_port=dead_port) as proxy:
        client = redis.Redis(
            host=proxy.host, port=proxy.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        assert proxy.connections == 0
        client.close()
