"""`make demo` runs, with a throwaway redis-server and with the memory fallback — without
pydantic (an extra): the demo runs with every pydantic import refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# `python -m bantai.demo`, with a meta path finder in front that refuses pydantic (not
# pydantic_core, which bantai requires).
_WITHOUT_PYDANTIC = """
import runpy, sys
class NoPydantic:
    def find_spec(self, name, path=None, target=None):
        if name == "pydantic" or name.startswith("pydantic."):
            raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
        return None
sys.meta_path.insert(0, NoPydantic())
runpy.run_module("bantai.demo", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("server", ["redis", "memory-fallback"])
def test_demo_runs(server: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if server == "memory-fallback":
        env["BANTAI_REDIS_SERVER"] = "/nonexistent/redis-server"
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PYDANTIC],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "count = 400 (expected 400)" in out
    assert "Failed to acquire lock" in out
    assert "300 ms later: None" in out
    assert "admitted 5 of 50" in out
    # 6. asyncio: concurrent updates with asyncio.gather, awaiting updaters, shared reads
    assert "6. asyncio" in out
    assert "asyncio.gather of 50 updates: count = 50 (expected 50)" in out
    assert "they all read {55} (expected {55})" in out
    # 7. a policy: a storage rule and a rate-limit rule (3 a minute), sync and asyncio
    assert "7. a policy" in out
    for attempt in (1, 2, 3):
        assert f"user 1, attempt {attempt}: allow  (known-user: welcome, Ada;" in out
    assert "user 1, attempt 4: deny  (known-user: welcome, Ada; login-attempts: rate_limit" in out
    assert "user 404: deny  (known-user: unknown user)" in out
    assert "evaluate_policy (asyncio), attempt 5: deny" in out
    assert out.rstrip().endswith("done.")
    if server == "memory-fallback":
        assert "falling back to the in-memory storage" in out
    else:
        assert "bantai demo on redis://127.0.0.1:" in out
