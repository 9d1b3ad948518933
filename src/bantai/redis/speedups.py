"""Decides, once, whether the compiled hot path (`_speedups` and `_single_key`, Cython) or
its pure-Python twin (`_speedups_pure` and `single_key`) is used. `BANTAI_NO_EXTENSIONS=1`
forces the pure twin; so does a missing or unloadable extension — with a
`PurePythonWarning`, once, where a binary wheel exists (CPython on Linux or macOS, x86_64
or arm64), since there it means a broken or source-only install. `IMPLEMENTATION` says
which one is active.

Type checkers read the pure twin (the `TYPE_CHECKING` branch): its annotations are the
contract, and `_speedups.pyi` states the same for the extension."""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import TYPE_CHECKING, Literal

from bantai.errors import PurePythonWarning

NO_EXTENSIONS = os.environ.get("BANTAI_NO_EXTENSIONS", "") not in ("", "0")

IMPLEMENTATION: Literal["cython", "python"]

# Where the wheels carry the compiled extension (pyproject.toml [tool.cibuildwheel]).
_COMPILED_PLATFORMS = frozenset({"linux", "darwin"})
_COMPILED_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64"})


def _compiled_expected(
    implementation: str = sys.implementation.name,
    os_name: str = sys.platform,
    machine: str = platform.machine(),
) -> bool:
    """Whether this interpreter and platform normally get the compiled extension."""
    return (
        implementation == "cpython"
        and os_name in _COMPILED_PLATFORMS
        and machine.lower() in _COMPILED_MACHINES
    )


def _warn_pure_python(reason: ImportError) -> None:
    warnings.warn(
        "bantai's compiled extension is missing or does not load "
        f"({type(reason).__name__}: {reason}); using the pure-Python implementation, "
        "which is correct but slower. To fix it, reinstall from a binary wheel "
        "(pip install --force-reinstall --no-cache-dir bantai) or with a C compiler "
        "available; to use the pure-Python implementation on purpose, set "
        "BANTAI_NO_EXTENSIONS=1, which also silences this warning.",
        PurePythonWarning,
        stacklevel=2,
    )


if TYPE_CHECKING or NO_EXTENSIONS:
    from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands
    from bantai.redis.single_key import append_one, consume_one, update_one

    IMPLEMENTATION = "python"
else:
    try:
        from bantai.redis._single_key import append_one, consume_one, update_one
        from bantai.redis._speedups import Multiplexer, Wire, new_token, pack_commands

        IMPLEMENTATION = "cython"
    except ImportError as missing:
        from bantai.redis._speedups_pure import Multiplexer, Wire, new_token, pack_commands
        from bantai.redis.single_key import append_one, consume_one, update_one

        IMPLEMENTATION = "python"
        if _compiled_expected():
            _warn_pure_python(missing)

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
