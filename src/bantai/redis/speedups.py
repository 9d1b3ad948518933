"""Decides, once, whether the compiled hot path (`_speedups`, Cython) or its pure-Python
twin (`_speedups_pure`) is used. `BANTAI_NO_EXTENSIONS=1` forces the pure twin; so does a
missing or unloadable extension. `IMPLEMENTATION` says which one is active."""

from __future__ import annotations

import os
from typing import Literal

IMPLEMENTATION: Literal["cython", "python"]

if os.environ.get("BANTAI_NO_EXTENSIONS", "") not in ("", "0"):
    from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands

    IMPLEMENTATION = "python"
else:
    try:
        from bantai.redis._speedups import (  # type: ignore[assignment,no-redef,unused-ignore]
            Multiplexer,
            Wire,
            new_token,
            pack_commands,
        )

        IMPLEMENTATION = "cython"
    except ImportError:
        from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands

        IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "Multiplexer", "Wire", "new_token", "pack_commands"]
