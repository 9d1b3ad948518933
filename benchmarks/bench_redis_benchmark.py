"""The ceiling: `redis-benchmark` (C, hiredis) against the same server — the plain
commands, and EVALSHA of bantai's own scripts."""

from __future__ import annotations

import csv
import io
import subprocess

from bantai.redis import scripts

# A fixed "now" on a window boundary: the consume script then runs its full path (the
# client-named window matches), without the TIME call a live clock would add.
NOW = 1_700_000_000_000 // 3_600_000 * 3_600_000


def measure_server(host: str, port: int, requests: int) -> dict[str, float]:
    base = ["redis-benchmark", "-h", host, "-p", str(port), "--csv", "-n", str(requests)]
    window = f"rb:rl:{NOW}"
    consume = [
        "EVALSHA", scripts.RATE_LIMIT.sha.decode(), "2", window, f"{window}:lock",
        "fixed-window", "1000000000", "3600000", "1", str(NOW), str(NOW),
    ]  # fmt: skip
    acquire = ["EVALSHA", scripts.ACQUIRE.sha.decode(), "2", "rb:k", "rb:k:lock", "tok", "10000"]
    runs = {
        "GET c1 P1": [*base, "-c", "1", "-P", "1", "-t", "get"],
        "SET c1 P1": [*base, "-c", "1", "-P", "1", "-t", "set"],
        "GET c1 P16": [*base, "-c", "1", "-P", "16", "-t", "get"],
        "EVALSHA acquire c1": [*base, "-c", "1", *acquire],
        "EVALSHA rate_limit c1": [*base, "-c", "1", *consume],
        "GET c50 P1": [*base, "-c", "50", "-P", "1", "-t", "get"],
        "SET c50 P1": [*base, "-c", "50", "-P", "1", "-t", "set"],
    }
    out: dict[str, float] = {}
    for name, argv in runs.items():
        text = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True).stdout
        rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0] != "test"]
        out[name] = float(rows[-1][1])
    out["EVALSHA acquire c1 / 2"] = out["EVALSHA acquire c1"] / 2
    return out
