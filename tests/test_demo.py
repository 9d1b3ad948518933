"""`make demo` runs, with a throwaway redis-server and with the memory fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("server", ["redis", "memory-fallback"])
def test_demo_runs(server: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if server == "memory-fallback":
        env["BANTAI_REDIS_SERVER"] = "/nonexistent/redis-server"
    result = subprocess.run(
        [sys.executable, "-m", "bantai.demo"],
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
    if server == "memory-fallback":
        assert "falling back to the in-memory storage" in out
    else:
        assert "bantai demo on redis://127.0.0.1:" in out
