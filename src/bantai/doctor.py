"""`python -m bantai doctor URL`: is this Redis ready for bantai?

Connects to the server (or cluster, or the master a Sentinel names) a service will use and
checks what bantai relies on: the server version (the Lua scripts need Redis 7.0), the
mode, the eviction policy (lock keys must not be evicted), persistence, round-trip
latency, the script cache, the ACL permissions of the connected user on keys under the
prefix, and which build of bantai is active. Each check is a row: ok, info, warn or fail.

Traffic goes only to the given address, the cluster nodes it names, or the master the
given sentinels name. Nothing is read from the keyspace but a probe key that does not
exist. Besides loading bantai's scripts into the script cache (as bantai itself does), the
only writes are to that probe key (with a 5-second TTL, deleted at once), and only when
ACL DRYRUN is not allowed. Values and passwords are never printed.

Exit codes: 0 ready (warnings allowed unless --strict), 1 a check failed (or warned, with
--strict), 2 a usage error (bad URL or arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bantai.errors import InvalidOptionError
from bantai.redis import scripts
from bantai.redis.keys import ClusterKeyLayout, KeyLayout
from bantai.redis.speedups import IMPLEMENTATION, NO_EXTENSIONS
from bantai.storage.options import StorageOptions

Status = Literal["ok", "info", "warn", "fail"]
Kind = Literal["standalone", "cluster", "sentinel"]

SEVERITY: dict[Status, int] = {"ok": 0, "info": 1, "warn": 2, "fail": 3}
MIN_VERSION = (7, 0)  # `#!lua` script flags
SLOW_P99_US = 20_000  # a p99 round trip above this is a warning
DEFAULT_PINGS = 50
DEFAULT_TIMEOUT = 2.0
SENTINEL_PORT = 26379
PROBE_TTL_MS = 5000
# Where compiled wheels are built (.github/workflows/wheels.yml, [tool.cibuildwheel]).
WHEEL_PLATFORMS = {
    ("linux", "x86_64"),
    ("linux", "aarch64"),
    ("darwin", "x86_64"),
    ("darwin", "arm64"),
}  # not Windows: the extension uses POSIX sockets; the pure wheel serves it
WHEEL_PYTHONS = ((3, 10), (3, 14))
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)


# --- what is checked, and how it is reported ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report: `extra` holds the numbers behind `detail` (for --json)."""

    name: str
    status: Status
    detail: str
    extra: Mapping[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The row as a JSON object: name, status, detail, then the extra numbers."""
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.extra}


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect. `url` is what redis-py reads (standalone, cluster); a Sentinel
    target has its sentinels, the service name and the master's credentials instead.
    `shown` is the address as printed (password masked); `secrets` never appear."""

    kind: Kind
    shown: str
    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    master_options: Mapping[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    """The command-line options that shape the checks."""

    prefix: bytes
    pings: int = DEFAULT_PINGS
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Node:
    """A server whose keys bantai uses (the master; every master of a cluster).
    `probe` is a key (before the layout) that lives on this node, None when no key under
    the prefix can (a cluster prefix holding a hash tag pins every key to one node)."""

    name: str
    client: redis.Redis
    layout: KeyLayout
    probe: bytes | None


class Unreachable(Exception):
    """Connecting failed; the message says why (the `connect` check's detail)."""


# --- parsing the target -----------------------------------------------------------------


def parse_target(
    url: str | None,
    *,
    cluster: bool = False,
    sentinels: Sequence[str] = (),
    service: str | None = None,
) -> Target:
    """The target named on the command line; `InvalidOptionError` when it is not one."""
    if sentinels or service:
        if not (sentinels and service):
            raise InvalidOptionError("--sentinel and --service go together")
        if cluster:
            raise InvalidOptionError("--cluster cannot be combined with --sentinel")
        return _sentinel_from_flags(url, sentinels, service)
    if not url:
        raise InvalidOptionError("a Redis URL is required (redis://host:port/db)")
    scheme = url.partition("://")[0].lower()
    if scheme == "redis+sentinel":
        if cluster:
            raise InvalidOptionError("--cluster cannot be combined with a sentinel URL")
        return _sentinel_from_url(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        plain = scheme.partition("+")[0] + url[len(scheme) :]
        return _standalone_or_cluster(plain, True, shown=mask_url(url))
    if scheme in ("redis", "rediss", "unix"):
        if cluster and scheme == "unix":
            raise InvalidOptionError("--cluster needs a redis:// or rediss:// URL")
        return _standalone_or_cluster(url, cluster)
    raise InvalidOptionError(
        f"unsupported URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster:// or redis+sentinel://"
    )


def _standalone_or_cluster(url: str, cluster: bool, shown: str | None = None) -> Target:
    parts = _split(url)
    if parts.scheme != "unix" and not parts.hostname:
        raise InvalidOptionError(f"the URL names no host: {mask_url(url)}")
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise InvalidOptionError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    kind: Kind = "cluster" if cluster else "standalone"
    return Target(kind, shown or mask_url(url), url=url, secrets=_secrets(url))


def _sentinel_from_url(url: str) -> Target:
    """`redis+sentinel://[user:password@]host:port[,host:port]/service[/db]`; the
    credentials are the master's."""
    parts = _split(url)
    hosts = parts.netloc.rpartition("@")[2]
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2:
        raise InvalidOptionError(
            f"a sentinel URL is redis+sentinel://host:port[,host:port]/service[/db], "
            f"not {mask_url(url)}"
        )
    options = _credentials(parts.username, parts.password, path[1] if len(path) > 1 else None)
    return Target(
        "sentinel",
        mask_url(url),
        sentinels=tuple(_host_port(h, SENTINEL_PORT) for h in hosts.split(",")),
        service=path[0],
        master_options=options,
        secrets=_secrets(url),
    )


def _sentinel_from_flags(url: str | None, sentinels: Sequence[str], service: str) -> Target:
    """`--sentinel host:port ... --service NAME [URL]`: the URL, if given, carries only the
    master's credentials, database and TLS (its host is not contacted)."""
    options: dict[str, Any] = {}
    if url:
        parts = _split(url)
        if parts.scheme not in ("redis", "rediss"):
            raise InvalidOptionError("with --sentinel, the URL must be redis:// or rediss://")
        options = _credentials(parts.username, parts.password, parts.path.strip("/") or None)
        options["ssl"] = parts.scheme == "rediss"
    addresses = tuple(_host_port(s, SENTINEL_PORT) for s in sentinels)
    shown = f"sentinel {','.join(f'{h}:{p}' for h, p in addresses)} service {service}"
    return Target(
        "sentinel",
        shown,
        sentinels=addresses,
        service=service,
        master_options=options,
        secrets=_secrets(url or ""),
    )


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # a sentinel list has no single port: checked one by one
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise InvalidOptionError(f"invalid URL {mask_url(url)}: {exc}") from None
    return parts


def _credentials(username: str | None, password: str | None, db: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "username": unquote(username) if username else None,
        "password": unquote(password) if password else None,
    }
    if db is not None:
        if not db.isdigit():
            raise InvalidOptionError(f"the database must be a number, not {db!r}")
        options["db"] = int(db)
    return options


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if not host or (port and not port.isdigit()):
        raise InvalidOptionError(f"expected host:port, not {text!r}")
    return host, int(port) if port else default_port


def mask_url(url: str) -> str:
    """`url` with its password (and any `...password=` query argument) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    query = [
        (k, "***" if "password" in k.lower() else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = f"{userinfo}@{hosts}" if at else hosts
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def _secrets(url: str) -> tuple[str, ...]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = [parts.netloc.rpartition("@")[0].partition(":")[2]]
    found += [v for k, v in parse_qsl(parts.query) if "password" in k.lower()]
    return tuple(sorted({f for s in found if s for f in (s, unquote(s))}, key=len, reverse=True))


def layout_for(target: Target, prefix: bytes) -> KeyLayout:
    """The key layout bantai uses there (`InvalidOptionError` for a prefix a cluster
    cannot use)."""
    return ClusterKeyLayout(prefix) if target.kind == "cluster" else KeyLayout(prefix)


# --- connecting ---------------------------------------------------------------------------


def _timeouts(settings: Settings) -> dict[str, Any]:
    return {"socket_timeout": settings.timeout, "socket_connect_timeout": settings.timeout}


def _probe_key() -> bytes:
    return b"doctor:" + uuid.uuid4().hex.encode()


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs["path"]) if "path" in kwargs else f"{kwargs['host']}:{kwargs['port']}"


def open_nodes(target: Target, settings: Settings, stack: ExitStack) -> tuple[list[Node], Check]:
    """Connect; the nodes to check and the `mode` check. `Unreachable` when nothing
    answers (or authentication fails)."""
    layout = layout_for(target, settings.prefix)
    if target.kind == "cluster":
        return _open_cluster(target, settings, layout, stack)
    if target.kind == "sentinel":
        return _open_sentinel(target, settings, layout, stack)
    client = redis.Redis.from_url(target.url, **_timeouts(settings))
    stack.callback(client.close)
    node = Node(_address(client), client, layout, _probe_key())
    _reach(node)
    return [node], _standalone_mode(client)


def _reach(node: Node) -> None:
    """PING (an error reply such as NOPERM still means connected)."""
    try:
        node.client.ping()
    except AuthenticationError as exc:
        raise Unreachable(f"{node.name}: authentication failed: {exc}") from None
    except ResponseError:
        return
    except _UNREACHABLE as exc:
        raise Unreachable(f"cannot connect to {node.name}: {exc}") from None


def _open_cluster(
    target: Target, settings: Settings, layout: KeyLayout, stack: ExitStack
) -> tuple[list[Node], Check]:
    try:
        cluster = RedisCluster.from_url(target.url, **_timeouts(settings))
    except AuthenticationError as exc:
        raise Unreachable(f"authentication failed: {exc}") from None
    except (*_UNREACHABLE, ResponseError) as exc:
        raise Unreachable(f"cannot reach the cluster at {mask_url(target.url)}: {exc}") from None
    stack.callback(cluster.close)
    nodes = [
        Node(m.name, cluster.get_redis_connection(m), layout, _probe_on(cluster, layout, m.name))
        for m in cast(Any, cluster).get_primaries()
    ]
    for node in nodes:
        _reach(node)
    return nodes, _cluster_mode(nodes)


def _probe_on(cluster: RedisCluster, layout: KeyLayout, node_name: str) -> bytes | None:
    """A probe key whose slot `node_name` serves (a few tries: slots spread evenly)."""
    for _ in range(2000):
        key = _probe_key()
        if cast(Any, cluster).get_node_from_key(layout.value_key(key)).name == node_name:
            return key
    return None


def _open_sentinel(
    target: Target, settings: Settings, layout: KeyLayout, stack: ExitStack
) -> tuple[list[Node], Check]:
    state: dict[str, Any] | None = None
    errors = []
    for host, port in target.sentinels:
        sentinel = redis.Redis(host=host, port=port, **_timeouts(settings))
        stack.callback(sentinel.close)
        try:
            state = cast(dict[str, Any], sentinel.sentinel_master(target.service))
            break
        except (*_UNREACHABLE, ResponseError) as exc:
            errors.append(f"{host}:{port}: {exc}")
    if state is None:
        raise Unreachable(f"no sentinel names a master for {target.service!r}: {'; '.join(errors)}")
    client = redis.Redis(
        host=state["ip"], port=state["port"], **target.master_options, **_timeouts(settings)
    )
    stack.callback(client.close)
    node = Node(_address(client), client, layout, _probe_key())
    _reach(node)
    return [node], _sentinel_mode(node, target, state)


# --- the checks ---------------------------------------------------------------------------


def _command(client: object, *args: Any) -> Any:
    """`client.execute_command(*args)` (redis-py leaves it untyped)."""
    return cast(Any, client).execute_command(*args)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return dict(client.info(section))


def _config(client: redis.Redis, name: str) -> str:
    reply = _command(client, "CONFIG", "GET", name)
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=False)
    return next((_text(v) for k, v in pairs if _text(k) == name), "")


def _standalone_mode(client: redis.Redis) -> Check:
    try:
        server, replication = _info(client, "server"), _info(client, "replication")
    except ResponseError as exc:
        return Check("mode", "warn", f"standalone; could not read INFO: {exc}")
    mode, role = server.get("redis_mode", "standalone"), replication.get("role", "master")
    if mode == "cluster":
        return Check("mode", "fail", "the server is a cluster node: use --cluster")
    if mode == "sentinel":
        return Check("mode", "fail", "this is a Sentinel: use redis+sentinel://host:port/service")
    if role != "master":
        where = f"{replication.get('master_host')}:{replication.get('master_port')}"
        return Check("mode", "fail", f"a replica of {where}: writes fail; connect to the master")
    replicas = int(replication.get("connected_slaves", 0))
    return Check("mode", "ok", f"standalone master, {replicas} replica(s)", {"replicas": replicas})


def _cluster_mode(nodes: Sequence[Node]) -> Check:
    states: dict[str, dict[str, str]] = {}
    for node in nodes:
        try:
            states[node.name] = _cluster_info(node.client)
        except ResponseError as exc:
            return Check("mode", "warn", f"cluster; could not read CLUSTER INFO: {exc}")
    extra = {
        "masters": len(nodes),
        "nodes": max(int(s.get("cluster_known_nodes", 0)) for s in states.values()),
    }
    for name, state in states.items():
        if state.get("cluster_state") != "ok":
            return Check("mode", "fail", f"{name} says cluster_state {state.get('cluster_state')}")
        if state.get("cluster_slots_assigned") != "16384":
            assigned = state.get("cluster_slots_assigned")
            return Check("mode", "fail", f"only {assigned} of 16384 slots are assigned", extra)
    detail = f"cluster: {extra['masters']} masters, {extra['nodes']} nodes, cluster_state ok"
    return Check("mode", "ok", detail, extra)


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    reply = _command(client, "CLUSTER", "INFO")
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    pairs = (line.partition(":") for line in _text(reply).splitlines())
    return {key: value for key, sep, value in pairs if sep}


def _sentinel_mode(node: Node, target: Target, state: Mapping[str, Any]) -> Check:
    sentinels = int(state.get("num-other-sentinels", 0)) + 1
    replicas = int(state.get("num-slaves", 0))
    extra = {"master": node.name, "sentinels": sentinels, "replicas": replicas}
    detail = (
        f"sentinel: master {node.name} for {target.service!r}, {sentinels} sentinel(s), "
        f"{replicas} replica(s), quorum {state.get('quorum')}"
    )
    if state.get("is_sdown") or state.get("is_odown"):
        return Check("mode", "fail", f"{detail}; the master is marked down", extra)
    if sentinels < 3:
        return Check(
            "mode", "warn", f"{detail}; fewer than 3 sentinels cannot fail over safely", extra
        )
    return Check("mode", "ok", detail, extra)


def version_check(node: Node, settings: Settings) -> Check:
    """The server version: the scripts' `#!lua` flags need Redis 7.0."""
    try:
        server = _info(node.client, "server")
    except ResponseError as exc:
        return Check("version", "warn", f"could not read INFO server: {exc}")
    version = _text(server.get("redis_version", "?"))
    shown = f"Redis {version}"
    if "valkey_version" in server:
        shown = f"Valkey {server['valkey_version']} (redis_version {version})"
    numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if numbers < MIN_VERSION:
        detail = f"{shown}: bantai's Lua scripts use `#!lua` flags, which need Redis >= 7.0"
        return Check("version", "fail", detail, {"version": version})
    return Check("version", "ok", shown, {"version": version})


def eviction_check(node: Node, settings: Settings) -> Check:
    """maxmemory-policy: lock keys carry a TTL; an evicted lock lets two updates in."""
    try:
        policy = _config(node.client, "maxmemory-policy")
        maxmemory = int(_config(node.client, "maxmemory") or 0)
    except ResponseError as exc:
        return Check(
            "eviction",
            "warn",
            f"could not read maxmemory-policy ({exc}); it should be noeviction",
        )
    extra = {"policy": policy, "maxmemory": maxmemory}
    if policy == "noeviction":
        return Check("eviction", "ok", "maxmemory-policy noeviction", extra)
    if maxmemory == 0:
        detail = f"maxmemory-policy {policy}, but no maxmemory: nothing is evicted"
        return Check("eviction", "ok", detail, extra)
    limit = f"{policy} with maxmemory {_size(maxmemory)}"
    if policy.startswith("allkeys-"):
        detail = f"{limit}: values and lock keys can be evicted; use noeviction"
    elif policy.startswith("volatile-"):
        detail = f"{limit}: lock keys (they have a TTL) can be evicted; use noeviction"
    else:
        detail = f"{limit}: keys may be evicted; use noeviction"
    return Check("eviction", "warn", detail, extra)


def _size(n: int) -> str:
    for unit in ("b", "kb", "mb", "gb"):
        if n < 1024 or unit == "gb":
            return f"{n}{unit}"
        if n % 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}gb"  # pragma: no cover


def persistence_check(node: Node, settings: Settings) -> Check:
    """RDB / AOF: informational, unless the last save failed (Redis then refuses writes
    while `stop-writes-on-bgsave-error` is on)."""
    try:
        info = _info(node.client, "persistence")
    except ResponseError as exc:
        return Check("persistence", "info", f"could not read INFO persistence: {exc}")
    try:
        save: str | None = _config(node.client, "save")
    except ResponseError:
        save = None
    aof = info.get("aof_enabled") == 1
    used = (["AOF"] if aof else []) + ([f"RDB (save {save})"] if save else [])
    extra = {"aof": aof, "rdb": bool(save) if save is not None else None}
    if info.get("rdb_last_bgsave_status", "ok") != "ok":
        return Check("persistence", "warn", "the last RDB save failed: writes may be refused")
    if info.get("aof_last_write_status", "ok") != "ok":
        return Check("persistence", "warn", "the last AOF write failed: writes may be refused")
    if used:
        return Check("persistence", "info", " + ".join(used), extra)
    if save is None:
        return Check("persistence", "info", "no AOF; RDB schedule unknown (CONFIG GET refused)")
    return Check("persistence", "info", "none: values are lost on restart", extra)


def latency_check(node: Node, settings: Settings) -> Check:
    """p50 / p99 of `settings.pings` sequential PINGs, in microseconds."""
    samples = []
    try:
        for _ in range(settings.pings):
            started = time.perf_counter_ns()
            node.client.ping()
            samples.append((time.perf_counter_ns() - started) / 1000)
    except ResponseError as exc:
        return Check("latency", "warn", f"could not PING: {exc}")
    samples.sort()
    p50, p99 = _percentile(samples, 50), _percentile(samples, 99)
    extra = {
        "p50_us": round(p50),
        "p99_us": round(p99),
        "max_us": round(samples[-1]),
        "pings": len(samples),
    }
    detail = f"p50 {p50:.0f} us, p99 {p99:.0f} us over {len(samples)} PINGs"
    if p99 > SLOW_P99_US:
        return Check(
            "latency", "warn", f"{detail}: slow (every update takes 2+ round trips)", extra
        )
    return Check("latency", "ok", detail, extra)


def _percentile(sorted_samples: Sequence[float], p: int) -> float:
    """Nearest rank."""
    return sorted_samples[max(0, math.ceil(p / 100 * len(sorted_samples)) - 1)]


def scripts_check(node: Node, settings: Settings) -> Check:
    """SCRIPT LOAD every script bantai runs, then EVALSHA one (the release script, without
    keys: it does nothing) to see the cache holds."""
    loaded = scripts.SCRIPTS_BY_SHA.values()
    try:
        for script in loaded:
            sha = _text(_command(node.client, "SCRIPT", "LOAD", script.source))
            if sha != script.sha.decode():
                return Check("scripts", "fail", f"SCRIPT LOAD of {script.name} answered {sha}")
    except ResponseError as exc:
        return Check("scripts", "fail", f"SCRIPT LOAD refused: {exc}")
    try:
        _command(node.client, "EVALSHA", scripts.RELEASE.sha, 0, uuid.uuid4().hex)
    except NoScriptError:
        detail = "loaded, but EVALSHA answered NOSCRIPT: does a proxy spread commands over servers?"
        return Check("scripts", "fail", detail)
    except ResponseError as exc:
        return Check("scripts", "fail", f"loaded, but EVALSHA refused: {exc}")
    return Check("scripts", "ok", f"{len(loaded)} scripts loaded, EVALSHA runs")


def _library_commands(value: bytes, lock: bytes) -> list[tuple[str, tuple[Any, ...]]]:
    """What bantai sends (src/bantai/redis/operations.py, round_trip.py, storage.py) and
    what its scripts call (scripts.py: GET, SET, DEL, EXISTS, TIME), with keys under the
    prefix. Scripts run with the caller's permissions."""
    token = uuid.uuid4().hex
    return [
        ("GET", ("GET", value)),
        ("SET", ("SET", value, b"v", "PX", PROBE_TTL_MS)),
        ("DEL", ("DEL", value)),
        ("MSET", ("MSET", value, b"v")),
        ("EXISTS", ("EXISTS", lock)),
        ("TIME", ("TIME",)),
        ("PING", ("PING",)),
        ("SCRIPT LOAD", ("SCRIPT", "LOAD", scripts.RELEASE.source)),
        ("EVALSHA", ("EVALSHA", scripts.RELEASE.sha, 2, value, lock, token, PROBE_TTL_MS)),
    ]


def acl_check(node: Node, settings: Settings) -> Check:
    """May the connected user run bantai's commands on keys under the prefix? `ACL DRYRUN`
    when allowed; otherwise the commands are tried on a probe key."""
    shown = f"prefix {settings.prefix.decode(errors='replace')!r}"
    probe = node.probe or _probe_key()
    value, lock = node.layout.value_key(probe), node.layout.lock_key(probe)
    commands = _library_commands(value, lock)
    user: str | None
    try:
        user = _text(_command(node.client, "ACL", "WHOAMI"))
        refused = _dry_run(node.client, user, commands)
        how = "ACL DRYRUN"
    except ResponseError:  # ACL WHOAMI / DRYRUN not allowed (or Redis < 7)
        if node.probe is None:
            return Check("acl", "info", f"no key under {shown} lives on this node: not tried")
        user, how = None, "tried them"
        refused = _try_commands(node.client, value, lock)
    who = f"user {user}" if user else "the connected user"
    names = [name for name, _ in commands]
    extra: dict[str, object] = {"user": user, "commands": names, "method": how}
    if refused:
        reasons = "; ".join(f"{name}: {why}" for name, why in refused.items())
        detail = f"{who} may not run {', '.join(refused)} on keys under {shown} ({reasons})"
        return Check("acl", "fail", detail, {**extra, "refused": refused})
    detail = f"{who} may run bantai's {len(names)} commands on keys under {shown} ({how})"
    return Check("acl", "ok", detail, extra)


def _dry_run(
    client: redis.Redis, user: str, commands: Sequence[tuple[str, tuple[Any, ...]]]
) -> dict[str, str]:
    refused = {}
    for name, command in commands:
        reply = _text(_command(client, "ACL", "DRYRUN", user, *command))
        if reply != "OK":
            refused[name] = reply
    return refused


def _try_commands(client: redis.Redis, value: bytes, lock: bytes) -> dict[str, str]:
    """Run harmless forms of the commands: reads of keys that do not exist, a SET with a
    short TTL deleted at once, an MSET deleted in the same packet, the release script on a
    lock nobody holds."""
    refused: dict[str, str] = {}

    def attempt(name: str, *command: Any) -> bool:
        try:
            _command(client, *command)
        except ResponseError as exc:
            refused.setdefault(name, str(exc))
            return False
        return True

    for name, command in _library_commands(value, lock):
        if name in ("GET", "EXISTS", "TIME", "PING", "SCRIPT LOAD"):
            attempt(name, *command)
    can_delete = attempt("DEL", "DEL", value)  # the key does not exist
    if attempt("SET", "SET", value, b"bantai doctor", "PX", PROBE_TTL_MS) and can_delete:
        attempt("DEL", "DEL", value)
    if can_delete:  # MSET sets no TTL: its DEL goes in the same packet
        pipe = client.pipeline(transaction=False)
        _command(pipe, "MSET", value, b"bantai doctor")
        _command(pipe, "DEL", value)
        mset_reply = pipe.execute(raise_on_error=False)[0]
        if isinstance(mset_reply, ResponseError):
            refused["MSET"] = str(mset_reply)
    else:
        refused["MSET"] = "not tried (DEL is refused)"
    if "SCRIPT LOAD" not in refused:
        attempt("EVALSHA", "EVALSHA", scripts.RELEASE.sha, 1, lock, uuid.uuid4().hex)
    else:
        refused["EVALSHA"] = "not tried (SCRIPT LOAD is refused)"
    return refused


def local_cache_check(node: Node, settings: Settings) -> Check:
    """Could the `local_cache` option work for this user? It sends CLIENT ID / TRACKING /
    CACHING / LIST / SETNAME, SUBSCRIBEs to the invalidation channel and reads PTTL (`ACL DRYRUN`;
    informational: without them the cache stays empty and reads go to Redis)."""
    probe = node.probe or _probe_key()
    value = node.layout.value_key(probe)
    commands = [
        ("CLIENT ID", ("CLIENT", "ID")),
        ("CLIENT TRACKING", ("CLIENT", "TRACKING", "ON", "REDIRECT", "1", "OPTIN")),
        ("CLIENT CACHING", ("CLIENT", "CACHING", "YES")),
        ("CLIENT LIST", ("CLIENT", "LIST", "ID", "1")),
        ("CLIENT SETNAME", ("CLIENT", "SETNAME", "bantai-doctor")),
        ("SUBSCRIBE", ("SUBSCRIBE", "__redis__:invalidate")),
        ("PTTL", ("PTTL", value)),
    ]
    try:
        user = _text(_command(node.client, "ACL", "WHOAMI"))
        refused = _dry_run(node.client, user, commands)
    except ResponseError:
        return Check("local_cache", "info", "not checked (needs ACL WHOAMI and ACL DRYRUN)")
    extra: dict[str, object] = {"user": user, "commands": [name for name, _ in commands]}
    if refused:
        detail = (
            f"user {user} may not run {', '.join(refused)}: with the local_cache option "
            "the cache stays empty and every read goes to Redis"
        )
        return Check("local_cache", "info", detail, {**extra, "refused": refused})
    return Check("local_cache", "ok", f"user {user} may use the local_cache option", extra)


def build_check() -> Check:
    """Which implementation of the hot path is active."""
    extra = {"implementation": IMPLEMENTATION}
    if IMPLEMENTATION == "cython":
        return Check("build", "ok", "compiled (Cython) hot path", extra)
    if NO_EXTENSIONS:
        return Check("build", "ok", "pure Python (BANTAI_NO_EXTENSIONS=1 forces it)", extra)
    if _wheels_exist():
        detail = (
            "pure Python: the compiled extension did not load, though wheels exist for this "
            "platform; reinstall bantai from a wheel"
        )
        return Check("build", "warn", detail, extra)
    return Check("build", "ok", "pure Python (no compiled wheel for this platform)", extra)


def _wheels_exist() -> bool:
    machine = (sys.platform, platform.machine().lower())
    python = sys.version_info[:2]
    return (
        platform.python_implementation() == "CPython"
        and machine in WHEEL_PLATFORMS
        and WHEEL_PYTHONS[0] <= python <= WHEEL_PYTHONS[1]
    )


NODE_CHECKS: tuple[Callable[[Node, Settings], Check], ...] = (
    version_check,
    eviction_check,
    persistence_check,
    latency_check,
    scripts_check,
    acl_check,
    local_cache_check,
)


def _on_every_node(
    check: Callable[[Node, Settings], Check], nodes: Sequence[Node], settings: Settings
) -> Check:
    """Run a check on every node; report the worst (a cluster: naming its node)."""
    results = []
    for node in nodes:
        try:
            results.append((node.name, check(node, settings)))
        except (*_UNREACHABLE, RedisError) as exc:
            name = check.__name__.removesuffix("_check")
            results.append((node.name, Check(name, "fail", f"{type(exc).__name__}: {exc}")))
    if len(results) == 1:
        return results[0][1]
    name, worst = max(results, key=lambda r: (SEVERITY[r[1].status], _number(r[1], "p99_us")))
    if len({c.detail for _, c in results}) == 1:
        return Check(
            worst.name, worst.status, f"{worst.detail}; all {len(results)} masters", worst.extra
        )
    detail = f"{worst.detail}; worst of {len(results)} masters: {name}"
    return Check(worst.name, worst.status, detail, {**worst.extra, "node": name})


def _number(check: Check, key: str) -> float:
    value = check.extra.get(key, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def run(target: Target, settings: Settings) -> list[Check]:
    """Every check, in report order."""
    with ExitStack() as stack:
        try:
            nodes, mode = open_nodes(target, settings, stack)
        except Unreachable as exc:
            return [Check("connect", "fail", str(exc)), build_check()]
        where = ", ".join(n.name for n in nodes)
        checks = [Check("connect", "ok", where), mode]
        checks += [_on_every_node(check, nodes, settings) for check in NODE_CHECKS]
        return [*checks, build_check()]


# --- output -------------------------------------------------------------------------------


def exit_code(checks: Sequence[Check], *, strict: bool) -> int:
    """0 ready; 1 a failure (or, with `strict`, a warning)."""
    worst = max(SEVERITY[c.status] for c in checks)
    return 1 if worst == SEVERITY["fail"] or (strict and worst == SEVERITY["warn"]) else 0


def render_table(target: Target, settings: Settings, checks: Sequence[Check], code: int) -> str:
    """The human report: a header, aligned columns and a summary line."""
    prefix = settings.prefix.decode(errors="replace")
    rows = [("check", "status", "detail"), *((c.name, c.status, c.detail) for c in checks)]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"bantai doctor: {target.shown} (prefix {prefix!r})", ""]
    lines += [f"  {a:<{width[0]}}  {b:<{width[1]}}  {c}".rstrip() for a, b, c in rows]
    counts = {s: sum(c.status == s for c in checks) for s in SEVERITY}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    verdict = "ready" if code == 0 else "NOT READY"
    if code and counts["fail"] == 0:
        verdict += " (warnings fail under --strict)"
    return "\n".join([*lines, "", f"{len(checks)} checks: {tally} -> {verdict}"])


def render_json(target: Target, checks: Sequence[Check], code: int) -> str:
    """One JSON object: target, kind, checks, ok."""
    report = {
        "target": target.shown,
        "kind": target.kind,
        "checks": [c.as_json() for c in checks],
        "ok": code == 0,
    }
    return json.dumps(report, indent=2)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# --- the command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bantai doctor",
        description="Check that a Redis server, cluster or Sentinel set is ready for bantai.",
        epilog="Exit codes: 0 ready, 1 a check failed (or warned, with --strict), 2 usage.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        help="redis://, rediss://, unix://, redis+cluster://host:port or "
        "redis+sentinel://host:port[,host:port]/service",
    )
    parser.add_argument("--cluster", action="store_true", help="the URL is a cluster node")
    parser.add_argument(
        "--sentinel", action="append", default=[], metavar="HOST:PORT", help="a sentinel"
    )
    parser.add_argument("--service", help="the Sentinel service (master) name")
    parser.add_argument(
        "--prefix",
        default=StorageOptions().prefix,
        help="the storages' key prefix, for the ACL check (default: %(default)r)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--strict", action="store_true", help="warnings also exit 1")
    parser.add_argument("--pings", type=int, default=DEFAULT_PINGS, help="PINGs to time")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per connect / reply"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.pings < 1:
        raise InvalidOptionError(f"--pings must be at least 1, not {args.pings}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise InvalidOptionError(f"--timeout must be a positive number, not {args.timeout}")
    prefix = StorageOptions(prefix=args.prefix).prefix_bytes
    return Settings(prefix=prefix, pings=args.pings, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the doctor; returns the exit code (it never calls `sys.exit`)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        target = parse_target(
            args.url, cluster=args.cluster, sentinels=args.sentinel, service=args.service
        )
        settings = _settings(args)
        layout_for(target, settings.prefix)
    except InvalidOptionError as exc:
        print(f"python -m bantai doctor: error: {exc}", file=sys.stderr)
        return 2
    checks = [replace(c, detail=scrub(c.detail, target.secrets)) for c in run(target, settings)]
    code = exit_code(checks, strict=args.strict)
    if args.json:
        output = render_json(target, checks, code)
    else:
        output = render_table(target, settings, checks, code)
    print(output)
    return code


__all__ = ["Check", "Settings", "Target", "main", "mask_url", "parse_target", "run"]
