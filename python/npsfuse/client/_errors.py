"""The client's exceptions, and the translation of a Flight/gRPC error into one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.flight as flight

from .._core import ResourceExhaustedError


class DaemonError(RuntimeError):
    """An error reported by npsfused that has no more specific class."""


class AuthenticationError(DaemonError, PermissionError):
    """The daemon refused the bearer token (missing or wrong)."""


class JobFailedError(DaemonError):
    """The job ended in the failed state; the message is the daemon's reason."""


class JobCancelledError(DaemonError):
    """The job was cancelled."""


class _NotFound(DaemonError, FileNotFoundError, LookupError):
    """NOT_FOUND: the in-process class (FileNotFoundError) and the
    client's earlier one (LookupError) both catch it."""


class _Exhausted(DaemonError, ResourceExhaustedError, ValueError):
    """RESOURCE_EXHAUSTED: npsfuse.ResourceExhaustedError, as in process,
    and ValueError, as the client raised before."""


class _Invalid(DaemonError, ValueError):
    pass


class _Denied(DaemonError, PermissionError):
    pass


class _Unavailable(DaemonError, ConnectionError):
    pass


class _Unsupported(DaemonError, NotImplementedError):
    pass


class _Exists(DaemonError, FileExistsError):
    pass


_MSG = re.compile(
    r"(?:Flight|gRPC) returned ([a-z ]+?) error, with message: (.*?)"
    r"(?:\. gRPC client debug context:.*|\. Detail:.*)?$",
    re.DOTALL,
)

_CODES: dict[str, type[DaemonError]] = {
    "invalid argument": _Invalid,
    "resource exhausted": _Exhausted,
    "out of range": _Invalid,
    "not found": _NotFound,
    "unauthorized": _Denied,
    "permission denied": _Denied,
    "unauthenticated": AuthenticationError,
    "unavailable": _Unavailable,
    "unimplemented": _Unsupported,
    "already exists": _Exists,
}


def translate(exc: BaseException) -> BaseException:
    """The Python exception for a Flight/gRPC error (message without the gRPC noise)."""
    text = str(exc)
    m = _MSG.search(text)
    if not m:
        if isinstance(exc, flight.FlightUnavailableError):
            return _Unavailable(f"npsfused is unreachable: {text}")
        return exc
    code, msg = m.group(1).strip(), m.group(2).strip()
    if isinstance(exc, flight.FlightUnauthenticatedError):
        code = "unauthenticated"
    kind = _CODES.get(code, DaemonError)
    if kind is _Unavailable and "shutting down" not in msg:
        msg = f"npsfused is unreachable: {msg}"
    return kind(msg)


@contextmanager
def translated() -> Iterator[None]:
    """Raise Flight and Arrow errors inside the block as :func:`translate` does."""
    try:
        yield
    except (flight.FlightError, pa.ArrowException) as exc:
        raise translate(exc) from None
