#!/usr/bin/env python3
"""Type-check every ```python block of the README with `mypy --strict`, as a user's strict
project would (part of `make typecheck`; tests/test_readme.py runs the same blocks).
Each block becomes a module in a temporary directory; errors are reported at their line in
README.md."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    blocks = [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]
    with tempfile.TemporaryDirectory(prefix="bantai-readme-") as tmp:
        first_lines = {}
        for index, (line, code) in enumerate(blocks):
            name = f"readme_block_{index}.py"
            (Path(tmp) / name).write_text(code, encoding="utf-8")
            first_lines[name] = line
        run = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
             "--config-file", "/dev/null", "--python-version", "3.10", "."],
            cwd=tmp, capture_output=True, text=True,
        )  # fmt: skip

    def to_readme(match: re.Match[str]) -> str:
        return f"README.md:{first_lines[match.group(1)] + int(match.group(2)) - 1}:"

    output = re.sub(r"(readme_block_\d+\.py):(\d+):", to_readme, run.stdout)
    print(output.strip() or f"README: {len(blocks)} python blocks type-check")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
