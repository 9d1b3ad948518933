"""Decides, once, whether the compiled hot path (`_speedups` and `_single_key`, Cython) or
its pure-Python twin (`_speedups_pure` and `single_key`) is used. `BANTAI_NO_EXTENSIONS=1`
forces the pure twin; so does a missing or unloadable extension. `IMPLEMENTATION` says
which one is active.

Type checkers read the pure twin (the `TYPE_CHECKING` branch): its annotations are the
contract, and `_speedups.pyi` states the same for the extension."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

NO_EXTENSIONS = os.environ.get("BANTAI_NO_EXTENSIONS", "") not in ("", "0")

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands
    from bantai.redis.single_key import append_one, consume_one, update_one

    IMPLEMENTATION = "python"
else:
    try:
        from bantai.redis._single_key import append_one, consume_one, update_one
        from bantai.redis._speedups import Multiplexer, Wire, new_token, pack_commands

        IMPLEMENTATION = "cython"
    except ImportError:
        from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands
        from bantai.redis.single_key import append_one, consume_one, update_one

        IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "Multiplexer",
    "Wire",
    "new_token",
    "append_one",
    "consume_one",
    "pack_commands",
    "update_one",
]
