"""`python -m bantai <command>`: the command-line tools (for now, `doctor`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m bantai <command> [options]

commands:
  doctor URL   check that a Redis server, cluster or Sentinel set is ready for bantai
               (python -m bantai doctor --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; usage (exit 2) when none or an unknown one is given."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if not args or args[0] != "doctor":
        if args:
            print(f"python -m bantai: unknown command {args[0]!r}\n", file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        return 2
    from bantai.doctor import main as doctor

    return doctor(args[1:])


if __name__ == "__main__":
    sys.exit(main())
