"""Every ```python block of the README runs as written (against a throwaway server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bantai.testing import LocalRedisCluster, LocalRedisServer

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(
    index: int,
    redis_server: LocalRedisServer,
    redis_cluster: LocalRedisCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CLUSTER_PORT", str(redis_cluster.startup_nodes[0][1]))
    code = compile(BLOCKS[index], f"README.md[python block {index}]", "exec")
    exec(code, {"__name__": f"readme_{index}"})
