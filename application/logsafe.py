"""Logging an error without the values that caused it.

Exception messages quote what they choke on (an out-of-range number, a date, a host name), and those are
tenants' arguments. Logs carry the exception's class and where it was raised in our code, never its message.
"""

from __future__ import annotations

import traceback
from pathlib import Path

OUR_PACKAGES = ("application", "domain", "projections", "interfaces")


def where(error: BaseException) -> str:
    """`application/deals.py:123 <- projections/deals.py:88`: our frames of the traceback, innermost first."""
    frames = []
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        parts = Path(frame.filename).parts
        for i, part in enumerate(parts):
            if part in OUR_PACKAGES:
                frames.append(f"{'/'.join(parts[i:])}:{frame.lineno}")
                break
    return " <- ".join(frames[:6]) or "outside our code"


def describe(error: BaseException) -> str:
    """The exception's class chain and location, e.g. `NumericValueOutOfRange at projections/deals.py:88`."""
    names = [type(error).__name__]
    cause = error.__cause__ or error.__context__
    while cause is not None and len(names) < 4:
        names.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    return f"{' from '.join(names)} at {where(error)}"
