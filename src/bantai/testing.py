"""Throwaway local `redis-server` processes for tests, benchmarks and the demo.

Each server listens on a free loopback port, keeps nothing on disk (`--save ""`,
`--appendonly no`, a temporary directory) and is stopped by `stop()` / the context
manager. Nothing here ever touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

INSTALL_HINT = (
    "redis-server was not found on PATH (or in $BANTAI_REDIS_SERVER). Install it: "
    "Debian/Ubuntu `apt-get install -y redis-server`, macOS `brew install redis`, "
    "Fedora `dnf install redis`; or point BANTAI_REDIS_SERVER at the binary."
)


class RedisServerNotFound(RuntimeError):
    """No `redis-server` binary is available."""


def find_redis_server() -> str:
    """The `redis-server` binary ($BANTAI_REDIS_SERVER, else on PATH); `RedisServerNotFound`
    with install instructions otherwise."""
    configured = os.environ.get("BANTAI_REDIS_SERVER")
    path = shutil.which(configured) if configured else shutil.which("redis-server")
    if not path:
        raise RedisServerNotFound(INSTALL_HINT)
    return path


def free_port(*, below: int = 65536) -> int:
    """A free loopback port below `below` (a cluster node needs one below 55536: Redis
    listens for its cluster bus on port + 10000, which must be free too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below and (below == 65536 or _is_free(port + 10000)):
            return port
    raise RuntimeError(f"no free loopback port below {below}")


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalRedisServer:
    """A `redis-server` child process on 127.0.0.1 and a free port."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.extra_args: Sequence[str] = extra_args
        self._below = 55536 if "--cluster-enabled" in extra_args else 65536
        self.port = port or free_port(below=self._below)
        self.host = "127.0.0.1"
        self._dir = tempfile.mkdtemp(prefix="bantai-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedisServer:
        """Start the server and wait until it answers (on another free port if this one was
        taken meanwhile)."""
        binary = find_redis_server()
        for _attempt in range(5):
            args = self._command(binary)
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready(timeout):
                return self
            self._terminate()
            self.port = free_port(below=self._below)  # taken in the meantime: try another
        raise RuntimeError(f"redis-server did not start; see {self._dir}/redis.log")

    def _command(self, binary: str) -> list[str]:
        return [
            binary, "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "no", "--dir", self._dir,
            "--daemonize", "no", "--logfile", os.path.join(self._dir, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    # A password-protected server answers -NOAUTH: up all the same.
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def signal(self, sig: int) -> None:
        """Send a signal to the server (SIGSTOP / SIGCONT to freeze it, for fault tests)."""
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def restart(self) -> None:
        """Stop and start again on the same port (the script cache and data are lost)."""
        self._terminate()
        self.start()

    def stop(self) -> None:
        """Stop the server (resuming it first if it was SIGSTOPped) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
        self._terminate()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalSentinel(LocalRedisServer):
    """A Redis Sentinel watching `master_port` on 127.0.0.1 as `name` (quorum 1), with
    short timeouts so failovers in tests take a second or two."""

    def __init__(self, master_port: int, name: str = "mymaster") -> None:
        super().__init__()
        self.name = name
        conf = os.path.join(self._dir, "sentinel.conf")
        with open(conf, "w") as fh:
            fh.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
                f"sentinel monitor {name} 127.0.0.1 {master_port} 1\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 3000\n"
            )
        self.extra_args = ("--sentinel",)
        self._conf = conf

    def _command(self, binary: str) -> list[str]:
        return [binary, self._conf, "--port", str(self.port), *self.extra_args]


class LocalRedisCluster:
    """A local Redis Cluster of `masters` primaries and `replicas` replicas per primary,
    each a `LocalRedisServer`, joined with `redis-cli --cluster create`. A short
    `node_timeout_ms` makes failovers quick (a replica takes over about twice that long
    after its primary died)."""

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000) -> None:
        self.replicas = replicas
        self.nodes = [
            LocalRedisServer(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
            )
            for _ in range(masters * (1 + replicas))
        ]  # fmt: skip

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node."""
        return [(n.host, n.port) for n in self.nodes]

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        """Start every node and join them into a cluster; on failure, stop what started."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # never leave the nodes that did start running
            raise

    def _start(self, timeout: float) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerNotFound("redis-cli (from the redis-server package) is needed")
        addresses = [f"{n.host}:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while b"cluster_state:ok" not in self._ask(node, b"CLUSTER INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local cluster did not become ready")
                time.sleep(0.05)
        if self.replicas:  # every replica must have synced before a failover can be tested
            for node in self.nodes:
                while True:
                    info = self._ask(node, b"INFO replication")
                    if b"role:master" in info or b"master_link_status:up" in info:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("a replica of the local cluster did not sync")
                    time.sleep(0.05)
        return self

    @staticmethod
    def _ask(node: LocalRedisServer, command: bytes) -> bytes:
        with socket.create_connection((node.host, node.port), timeout=2) as sock:
            sock.sendall(command + b"\r\n")
            time.sleep(0.01)
            return sock.recv(65536)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "INSTALL_HINT",
    "LocalRedisCluster",
    "LocalRedisServer",
    "LocalSentinel",
    "RedisServerNotFound",
    "find_redis_server",
    "free_port",
]
