"""Periods as the `ms` package writes them ("500ms", "5s", "30m", "1h", "1d", "2 weeks",
"1.5h"), or a `datetime.timedelta`, to whole milliseconds."""

from __future__ import annotations

import functools
import math
import re
from datetime import timedelta

from bantai.errors import InvalidOptionError
from bantai.storage.inputs import MAX_TTL_MS

_UNITS = {
    "ms": 1, "msec": 1, "msecs": 1, "millisecond": 1, "milliseconds": 1,
    "s": 1000, "sec": 1000, "secs": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "mins": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hr": 3_600_000, "hrs": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
    "w": 604_800_000, "week": 604_800_000, "weeks": 604_800_000,
    "y": 31_557_600_000, "yr": 31_557_600_000, "yrs": 31_557_600_000,
    "year": 31_557_600_000, "years": 31_557_600_000,
}  # fmt: skip
_PERIOD = re.compile(r"^\s*(\d*\.?\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def period_ms(period: object, *, name: str = "period") -> int:
    """Milliseconds (>= 1) of a period; `InvalidOptionError` (a ValueError) otherwise."""
    if isinstance(period, str):
        return _parse_text(period, name)
    if isinstance(period, timedelta):
        return _whole_ms(period / timedelta(milliseconds=1), period, name)
    raise InvalidOptionError(
        f"{name} must be a string like '1m' or a timedelta, not {type(period).__name__}"
    )


@functools.lru_cache(maxsize=256)  # rules re-read the same few periods on every request
def _parse_text(period: str, name: str) -> int:
    match = _PERIOD.match(period)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _UNITS):
        raise InvalidOptionError(
            f"{name} {period!r} is not a period like '500ms', '5s', '30m', '1h' or '1d'"
        )
    ms = float(match.group(1)) * _UNITS[unit or "ms"]
    return _whole_ms(ms, period, name)


def _whole_ms(ms: float, period: object, name: str) -> int:
    if not math.isfinite(ms) or round(ms) < 1:
        raise InvalidOptionError(f"{name} {period!r} must be at least 1 ms")
    if ms > MAX_TTL_MS:  # the window's keys are written with PX <period>
        raise InvalidOptionError(f"{name} {period!r} is longer than {MAX_TTL_MS} ms")
    return round(ms)
