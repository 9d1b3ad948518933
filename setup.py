"""Builds the compiled hot path: `bantai.redis._speedups` and `bantai.redis._single_key`
(the single-key update, compiled from the same source as its pure twin `single_key.py`).

- With Cython installed, the extensions are compiled from their `.pyx`; without it, from
  the generated `.c` files that the sdist ships.
- If the compiler fails, a loud banner is printed and the pure-Python twin is installed
  instead — unless `BANTAI_REQUIRE_EXTENSIONS=1`, which turns the failure into an error
  (wheels and CI use it, so a silently slow build can never ship).
- `BANTAI_NO_EXTENSIONS=1` at build time skips the extension (the pure wheel).
- Windows gets no extension: `_speedups` is written against POSIX sockets (`poll()`,
  `send()` with `MSG_NOSIGNAL`, `errno`). The pure wheel serves Windows; a build there
  says so and installs the pure-Python implementation (an error with
  `BANTAI_REQUIRE_EXTENSIONS=1`).
- The extensions are linked stripped (no debug information or local symbols), which
  makes them about a sixth of their size: wheels ship the `.so` files, not the C/Cython
  sources (the sdist does ship those).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
MODULES = ("_speedups", "_single_key")
SRC = "src/bantai/redis"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


REQUIRE = _flag("BANTAI_REQUIRE_EXTENSIONS")
SKIP = _flag("BANTAI_NO_EXTENSIONS")
WINDOWS = sys.platform == "win32"

WINDOWS_NOTE = (
    "bantai: no compiled extension on Windows (it uses POSIX sockets); installing the "
    "pure-Python implementation, which behaves the same.\n"
)

BANNER = """
************************************************************************************
  WARNING: bantai's compiled extension could not be built ({reason}).
  Installing the pure-Python implementation instead: it is correct but slower.
  Set BANTAI_REQUIRE_EXTENSIONS=1 to make this an error.
************************************************************************************
"""


def _link_args() -> list[str]:
    """Strip debug information and local symbols at link time (GNU ld / lld: `-s`;
    macOS ld64 ignores `-s`: `-S` drops debug information, `-x` local symbols)."""
    if sys.platform == "darwin":
        return ["-Wl,-S", "-Wl,-x"]
    return ["-s"]


def _extension(name: str, source: str) -> Extension:
    return Extension(f"bantai.redis.{name}", [source], extra_link_args=_link_args())


def _extensions() -> list[Extension]:
    if SKIP:
        return []
    if WINDOWS:
        if REQUIRE:
            raise RuntimeError(
                "BANTAI_REQUIRE_EXTENSIONS=1, but bantai's compiled extension "
                "is not built on Windows (it uses POSIX sockets)"
            )
        sys.stderr.write(WINDOWS_NOTE)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        c_files = [f"{SRC}/{name}.c" for name in MODULES]
        if all((HERE / c).exists() for c in c_files):
            return [_extension(n, c) for n, c in zip(MODULES, c_files, strict=True)]
        if REQUIRE:
            raise RuntimeError(
                "BANTAI_REQUIRE_EXTENSIONS=1 but neither Cython nor the "
                "generated C files are available"
            ) from None
        sys.stderr.write(BANNER.format(reason="no Cython and no generated C files"))
        return []
    return cythonize(
        [_extension(name, f"{SRC}/{name}.pyx") for name in MODULES],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


class OptionalBuildExt(build_ext):
    """Falls back to pure Python when compiling fails, unless it is required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if REQUIRE:
            raise
        sys.stderr.write(BANNER.format(reason=f"{type(exc).__name__}: {exc}"))


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
