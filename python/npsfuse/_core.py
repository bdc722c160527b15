"""The compiled Go core and the translation of its errors into Python's.

Every call into Go goes through :func:`call`, which turns a Go error into
the exception of its kind. The kinds (``gocore/fault``) and the exception
each becomes are declared once, in Go (``pybind/errors.go``), and read here
at import: ``ValueError`` for invalid input, ``TypeError`` for a tensor Go
cannot take, ``FileNotFoundError``, ``PermissionError``,
:class:`ResourceExhaustedError` (a full disk or quota; an ``OSError`` and a
``RuntimeError``), :class:`CancelledError` (a call stopped on request; a
``RuntimeError``), ``FileExistsError``, and ``RuntimeError`` for internal
errors (including a recovered Go panic). The exception's ``kind`` attribute
is the kind's name (``"invalid_input"``), the same name the daemon's gRPC
codes map from.

The extension (and with it the Go runtime) is loaded at the first call, not
at import: a process forked after ``import npsfuse`` but before any call
(DataLoader workers, ``multiprocessing`` with the fork start method) starts
its own runtime and works. A Go runtime does not survive ``fork()``, so a
process forked after the parent called into Go gets a ``RuntimeError`` that
names the start methods that work, instead of hanging in the call.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.util
import json
import os
import threading
from collections.abc import Callable
from typing import Any

_MISSING = (
    "npsfuse's Go extension is missing: install the package with `pip install .` "
    "(needs Go) or run `make build` in a source checkout"
)
if importlib.util.find_spec(f"{__package__}._native.pybind") is None:  # pragma: no cover
    raise ImportError(_MISSING)

#: The loaded extension, and the process that loaded it.
_go: Any = None
_pid = 0
_lock = threading.Lock()


def _load() -> Any:
    """The extension, loaded (and its version checked) on first use."""
    global _go, _pid
    if _go is not None:
        if os.getpid() != _pid:
            raise RuntimeError(
                f"npsfuse cannot run in this process: it was forked from process {_pid} after "
                "that process had called npsfuse, and the Go runtime inside npsfuse does not "
                "survive fork(). Start worker processes with the 'spawn' or 'forkserver' "
                "method (multiprocessing.set_start_method('spawn'), or "
                "DataLoader(..., multiprocessing_context='spawn')), or call npsfuse only in "
                "the children."
            )
        return _go
    with _lock:
        if _go is None:
            mod = importlib.import_module(f"{__package__}._native.pybind")
            from . import __version__

            if mod.Version() != __version__:  # pragma: no cover - broken install
                raise ImportError(
                    f"npsfuse {__version__} found Go core {mod.Version()}: reinstall the package"
                )
            _pid, _go = os.getpid(), mod
    return _go


class _Go:
    """Stands for the extension module; loads it at the first attribute."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(), name)


#: The extension's functions (``go.Merge``, ...), loaded on first use.
go: Any = _Go()


class ResourceExhaustedError(OSError, RuntimeError):
    """A limit was reached: the disk (or the user's quota) is full, or a
    configured size or memory budget was exceeded."""


class CancelledError(RuntimeError):
    """The call was cancelled on request (``CancelJob``; Ctrl-C in the CLI,
    which re-raises ``KeyboardInterrupt`` instead)."""


#: Separator around the kind that pybind puts in front of a Go error's text.
_TAG = "\x1d"

#: npsfuse's own exceptions, by the names ``pybind/errors.go`` uses.
_OWN: dict[str, type[Exception]] = {c.__name__: c for c in (ResourceExhaustedError, CancelledError)}


def _exception(name: str) -> type[Exception]:
    cls = _OWN.get(name) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):  # pragma: no cover
        raise ImportError(f"npsfuse's Go core maps an error kind to unknown exception {name!r}")
    return cls


@functools.cache
def kinds() -> dict[str, type[Exception]]:
    """Error kind (``gocore/fault``) → the Python exception it becomes."""
    return {k: _exception(n) for k, n in json.loads(go.ErrorKinds()).items()}


def error(kind: str, message: str) -> Exception:
    """The exception for a Go error of ``kind`` with ``message``; its
    ``kind`` attribute is set (unknown kinds become ``RuntimeError``)."""
    exc = kinds().get(kind, RuntimeError)(message)
    exc.kind = kind  # type: ignore[attr-defined]
    return exc


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a Go function, translating its error into a Python exception."""
    try:
        return fn(*args)
    except RuntimeError as exc:
        msg = str(exc)
        if not msg.startswith(_TAG):
            raise
        kind, _, text = msg[len(_TAG) :].partition(_TAG)
        raise error(kind, text) from None

