"""The compiled Go core and the translation of its errors into Python's.

Every call into Go goes through :func:`call`, which turns a Go error into
the exception a Python user expects: ``ValueError`` for bad input,
``TypeError`` for a tensor Go cannot take, ``RuntimeError`` otherwise
(including a recovered Go panic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from ._native import pybind as _go
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "npsfuse's Go extension is missing: install the package with `pip install .` "
        "(needs Go) or run `make build` in a source checkout"
    ) from exc

#: Go error prefixes and the Python exception each becomes.
_ERRORS: dict[str, type[Exception]] = {
    "invalid merge input: ": ValueError,
    "invalid merge config: ": ValueError,
    "bad checkpoint: ": ValueError,
    "bad output folder: ": OSError,
    "bad tensor: ": TypeError,
    "invalid NPS input: ": ValueError,
    "invalid search input: ": ValueError,
}


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a Go function, translating its error into a Python exception."""
    try:
        return fn(*args)
    except RuntimeError as exc:
        msg = str(exc)
        for prefix, kind in _ERRORS.items():
            if msg.startswith(prefix):
                raise kind(msg[len(prefix) :]) from None
        raise


go = _go
