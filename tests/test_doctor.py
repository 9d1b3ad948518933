"""`python -m bantai doctor`: against real servers started here (a single server, servers
reconfigured per test, the local cluster, a Sentinel set), in-process through `main(argv)`
and once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis

from bantai import __main__ as cli
from bantai import doctor as doctor_module
from bantai.doctor import main, mask_url
from bantai.redis import IMPLEMENTATION
from bantai.redis.keys import KeyLayout
from bantai.testing import LocalRedisCluster, LocalRedisServer, LocalSentinel, free_port
from tests import test_sentinel

sentinel_set = test_sentinel.sentinel_set  # the fixture: a master, a replica, a sentinel

# Every command bantai sends, or its scripts call, on keys under the prefix.
LIBRARY_COMMANDS = "+get +set +del +mset +exists +time +ping +evalsha +script|load"


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run the doctor in-process with --json: the exit code and the parsed report."""
    capsys.readouterr()
    code = main([*args, "--json", "--pings", "5"])
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def test_a_fresh_server_is_ready(
    redis_server: LocalRedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor(capsys, redis_server.url)
    checks = by_name(report)
    assert code == 0 and report["ok"] is True
    assert report["target"] == redis_server.url and report["kind"] == "standalone"
    assert list(checks) == [
        "connect", "mode", "version", "eviction", "persistence", "latency", "scripts", "acl",
        "local_cache", "build",
    ]  # fmt: skip
    assert checks["local_cache"]["status"] == "ok"
    assert {c["status"] for c in report["checks"]} <= {"ok", "info"}, report
    assert checks["version"]["version"].startswith("7.")
    assert checks["eviction"]["policy"] == "noeviction"
    assert checks["persistence"]["detail"] == "none: values are lost on restart"
    assert 0 < checks["latency"]["p50_us"] <= checks["latency"]["p99_us"]
    assert checks["acl"]["user"] == "default" and checks["acl"]["method"] == "ACL DRYRUN"
    assert checks["build"]["implementation"] == IMPLEMENTATION


def test_the_command_line_prints_a_table(redis_server: LocalRedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bantai", "doctor", redis_server.url, "--pings", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"bantai doctor: {redis_server.url} (prefix '')"
    assert lines[2].split() == ["check", "status", "detail"]
    # The status column is aligned: every row has it at the same offset.
    assert {line.index(" ok ") for line in lines[3:] if " ok " in line} == {
        lines[2].index("status") - 1
    }
    assert lines[-1].endswith("-> ready")


def test_an_evicting_policy_warns_and_fails_under_strict(
    own_redis_server: Callable[..., LocalRedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = own_redis_server()
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", "10mb")
    admin.config_set("maxmemory-policy", "allkeys-lru")
    code, report = doctor(capsys, server.url)
    eviction = by_name(report)["eviction"]
    assert code == 0 and eviction["status"] == "warn"
    assert eviction["detail"].startswith("allkeys-lru with maxmemory 10mb: values and lock keys")
    assert doctor(capsys, server.url, "--strict")[0] == 1

    admin.config_set("maxmemory-policy", "volatile-ttl")
    code, report = doctor(capsys, server.url)
    assert code == 0 and "lock keys (they have a TTL)" in by_name(report)["eviction"]["detail"]

    admin.config_set("maxmemory", "0")  # no limit: nothing is ever evicted
    code, report = doctor(capsys, server.url, "--strict")
    assert code == 0 and by_name(report)["eviction"]["status"] == "ok"
    admin.close()


def test_an_unreachable_server_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, report = doctor(capsys, f"redis://127.0.0.1:{port}/0", "--timeout", "1")
    assert code == 1 and report["ok"] is False
    connect = by_name(report)["connect"]
    assert connect["status"] == "fail"
    assert connect["detail"].startswith(f"cannot connect to 127.0.0.1:{port}")
    assert [c["name"] for c in report["checks"]] == ["connect", "build"]


@pytest.mark.parametrize(
    "args",
    [
        ["http://localhost:1"],
        ["redis://127.0.0.1:notaport"],
        ["redis://"],
        ["redis+sentinel://127.0.0.1:1"],
        ["unix:///tmp/x.sock", "--cluster"],
        ["--sentinel", "127.0.0.1:1"],
        ["redis://127.0.0.1:1", "--pings", "0"],
        ["redis+cluster://127.0.0.1:1", "--prefix", "a{}"],
        ["redis://127.0.0.1:1", "--no-such-option"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "error" in capsys.readouterr().err


def test_python_m_bantai_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: python -m bantai <command>" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0


def test_passwords_are_never_printed(
    own_redis_server: Callable[..., LocalRedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = own_redis_server("--requirepass", "s3cret-pw")
    code, report = doctor(capsys, f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
    assert code == 0 and report["target"] == f"redis://:***@127.0.0.1:{server.port}/0"
    code = main([f"redis://:wrong-pw@127.0.0.1:{server.port}/0"])
    out = capsys.readouterr().out
    assert code == 1 and "authentication failed" in out
    assert "wrong-pw" not in out and "s3cret-pw" not in out
    assert mask_url("rediss://u:p@h:1/0?ssl_password=k&db=1") == (
        "rediss://u:***@h:1/0?ssl_password=***&db=1"
    )


def test_a_unix_socket(
    own_redis_server: Callable[..., LocalRedisServer],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    path = tmp_path / "redis.sock"
    own_redis_server("--unixsocket", str(path))
    code, report = doctor(capsys, f"unix://{path}")
    assert code == 0 and by_name(report)["connect"]["detail"] == str(path)


def test_a_cluster_is_checked_master_by_master(
    redis_cluster: LocalRedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = redis_cluster.startup_nodes[0]
    code, report = doctor(capsys, f"redis+cluster://{host}:{port}", "--prefix", "app:")
    checks = by_name(report)
    assert code == 0 and report["kind"] == "cluster", report
    assert report["target"] == f"redis+cluster://{host}:{port}"
    assert checks["mode"]["masters"] == 3 and "cluster_state ok" in checks["mode"]["detail"]
    assert len(checks["connect"]["detail"].split(", ")) == 3
    assert checks["acl"]["status"] == "ok" and checks["acl"]["detail"].endswith("; all 3 masters")

    # One master with an evicting policy: the worst is reported, naming it.
    last = redis.Redis(host=host, port=redis_cluster.startup_nodes[-1][1])
    last.config_set("maxmemory", "100mb")
    last.config_set("maxmemory-policy", "volatile-lru")
    try:
        code, report = doctor(capsys, f"redis://{host}:{port}", "--cluster")
    finally:
        last.config_set("maxmemory-policy", "noeviction")
        last.config_set("maxmemory", "0")
        last.close()
    eviction = by_name(report)["eviction"]
    assert code == 0 and eviction["status"] == "warn"
    assert eviction["node"] == f"{host}:{redis_cluster.startup_nodes[-1][1]}"


def test_a_sentinel_names_the_master(
    sentinel_set: tuple[LocalRedisServer, LocalRedisServer, LocalSentinel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    master, replica, sentinel = sentinel_set
    code, report = doctor(capsys, f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster")
    mode = by_name(report)["mode"]
    assert code == 0 and report["kind"] == "sentinel", report
    assert mode["master"] == f"127.0.0.1:{master.port}" and mode["sentinels"] == 1
    assert mode["status"] == "warn"  # a single sentinel
    assert by_name(report)["connect"]["detail"] == f"127.0.0.1:{master.port}"

    code, report = doctor(capsys, replica.url)  # the replica, as if it were the server
    assert code == 1 and by_name(report)["mode"]["detail"].startswith(
        f"a replica of 127.0.0.1:{master.port}: writes fail"
    )

    code, report = doctor(
        capsys, "--sentinel", f"127.0.0.1:{sentinel.port}", "--service", "nosuchservice"
    )
    assert code == 1 and "no sentinel names a master" in by_name(report)["connect"]["detail"]


@pytest.fixture
def acl_server(own_redis_server: Callable[..., LocalRedisServer]) -> LocalRedisServer:
    """A server with users: `other` (every command, but only on `other:*` keys), `app`
    (just bantai's commands on `app:*`, no ACL DRYRUN), `noeval` (everything on `app:*`
    but EVALSHA) and `appnoeval` (bantai's commands but EVALSHA, no DRYRUN)."""
    server = own_redis_server()
    admin = redis.Redis(port=server.port)
    for user, rules in [
        ("other", "~other:* +@all"),
        ("app", f"~app:* {LIBRARY_COMMANDS}"),
        ("noeval", "~app:* +@all -evalsha"),
        ("appnoeval", f"~app:* {LIBRARY_COMMANDS} -evalsha"),
    ]:
        admin.execute_command("ACL", "SETUSER", user, "on", ">pw", *rules.split())
    admin.close()
    return server


def test_acl_a_user_without_access_to_the_prefix_fails(
    acl_server: LocalRedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor(
        capsys, f"redis://other:pw@127.0.0.1:{acl_server.port}", "--prefix", "app:"
    )
    acl = by_name(report)["acl"]
    assert code == 1 and acl["status"] == "fail" and acl["method"] == "ACL DRYRUN"
    cache = by_name(report)["local_cache"]  # informational: the option is optional
    assert cache["status"] == "info" and set(cache["refused"]) == {"SUBSCRIBE", "PTTL"}
    assert set(acl["refused"]) == {"GET", "SET", "DEL", "MSET", "EXISTS", "EVALSHA"}
    assert "no permissions to access the 'app:doctor:" in acl["detail"]


def test_acl_a_user_with_just_the_needed_commands_is_ok(
    acl_server: LocalRedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor(capsys, f"redis://app:pw@127.0.0.1:{acl_server.port}", "--prefix", "app:")
    checks = by_name(report)
    acl = checks["acl"]
    assert code == 0 and acl["status"] == "ok", acl
    assert acl["method"] == "tried them" and acl["user"] is None  # no ACL WHOAMI / DRYRUN
    assert checks["scripts"]["status"] == "ok"
    assert checks["eviction"]["status"] == "warn"  # CONFIG GET refused: cannot tell
    assert "could not read" in checks["eviction"]["detail"]
    assert redis.Redis(port=acl_server.port).dbsize() == 0  # the probe key is gone


@pytest.mark.parametrize("user", ["noeval", "appnoeval"])
def test_acl_a_user_missing_evalsha_fails_naming_it(
    user: str, acl_server: LocalRedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor(
        capsys, f"redis://{user}:pw@127.0.0.1:{acl_server.port}", "--prefix", "app:"
    )
    acl = by_name(report)["acl"]
    assert code == 1 and acl["status"] == "fail"
    assert list(acl["refused"]) == ["EVALSHA"], acl
    who = "user noeval" if user == "noeval" else "the connected user"
    assert acl["detail"].startswith(f"{who} may not run EVALSHA on keys under prefix 'app:'")
    assert by_name(report)["scripts"]["status"] == "fail"


class FakeInfo:
    """Answers INFO server as an older server would (no such server is installed here)."""

    def __init__(self, version: str) -> None:
        self.version = version

    def info(self, section: str) -> dict[str, str]:
        return {"redis_version": self.version, "redis_mode": "standalone"}


@pytest.mark.parametrize(("version", "status"), [("6.2.14", "fail"), ("7.0.0", "ok")])
def test_below_redis_7_the_version_check_fails(version: str, status: str) -> None:
    node = doctor_module.Node("fake", cast(Any, FakeInfo(version)), KeyLayout(b""), None)
    check = doctor_module.version_check(node, doctor_module.Settings(prefix=b""))
    assert check.status == status
    if status == "fail":
        assert "`#!lua` flags, which need Redis >= 7.0" in check.detail


def test_the_build_check_warns_only_where_wheels_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_module, "IMPLEMENTATION", "python")
    monkeypatch.setattr(doctor_module, "NO_EXTENSIONS", False)
    monkeypatch.setattr(doctor_module, "_wheels_exist", lambda: True)
    assert doctor_module.build_check().status == "warn"
    monkeypatch.setattr(doctor_module, "NO_EXTENSIONS", True)  # asked for: fine
    assert doctor_module.build_check().status == "ok"
    monkeypatch.setattr(doctor_module, "NO_EXTENSIONS", False)
    monkeypatch.setattr(doctor_module, "_wheels_exist", lambda: False)
    assert doctor_module.build_check().status == "ok"
