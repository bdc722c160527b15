"""The connection to a daemon: its address, the bearer token, JSON actions."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow.flight as flight

from ._errors import translated


def _runtime_dir() -> str:
    d = os.environ.get("XDG_RUNTIME_DIR", "")
    if d and os.path.isabs(d):
        return d
    return os.path.join(tempfile.gettempdir(), f"npsfused-{os.getuid()}")


def default_address() -> str:
    """``$NPSFUSE_ADDRESS``, else the daemon's default socket,
    ``unix://<runtime dir>/npsfused/npsfused.sock``."""
    env = os.environ.get("NPSFUSE_ADDRESS")
    return env or "unix://" + os.path.join(_runtime_dir(), "npsfused", "npsfused.sock")


def _location(address: str) -> tuple[str, bool]:
    """Flight location for an address, and whether it is a Unix socket."""
    for p in ("unix://", "grpc+unix://"):
        if address.startswith(p):
            path = address[len(p) :]
            if not os.path.isabs(path):
                raise ValueError(f"address {address!r}: the socket path must be absolute")
            return "grpc+unix://" + path, True
    for p in ("grpc://", "grpc+tcp://", "tcp://"):
        if address.startswith(p):
            return "grpc+tcp://" + address[len(p) :], False
    raise ValueError(f"address {address!r}: want unix:///path/npsfused.sock or grpc://host:port")


class Connection:
    """A Flight connection to ``npsfused``: every call carries the bearer
    token and its timeout; actions take and return JSON; the daemon's
    errors are raised as the client's exceptions."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        shm: bool | None = None,
    ) -> None:
        self.address = address or default_address()
        loc, self._unix = _location(self.address)
        tok = token if token is not None else os.environ.get("NPSFUSE_TOKEN")
        self._token = tok or None  # the workers of drive_session use it too
        self._headers = [(b"authorization", f"Bearer {tok}".encode())] if tok else []
        self.timeout = timeout
        self._fl = flight.FlightClient(
            loc,
            generic_options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ],
        )
        self._want_shm = shm
        self._info: dict[str, Any] | None = None
        self._shm: bool | None = None
        self._slab_of: dict[str, str] = {}  # shared-memory uploads' slabs (Transfer)

    def _opts(self, timeout: float | None = None) -> flight.FlightCallOptions:
        timeout = self.timeout if timeout is None else timeout
        return flight.FlightCallOptions(timeout=timeout, headers=self._headers)

    def _stream(
        self, action: str, body: Mapping[str, Any], timeout: float | None = None
    ) -> Iterator[Any]:
        with translated():
            for r in self._fl.do_action(
                flight.Action(action, json.dumps(body).encode()), self._opts(timeout)
            ):
                yield json.loads(r.body.to_pybytes())

    def _call(
        self, action: str, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        out = list(self._stream(action, body or {}, timeout))
        return out[-1] if out else None

    def close(self) -> None:
        """Close the connection."""
        self._fl.close()

    def info(self) -> dict[str, Any]:
        """The daemon's version, limits, job types, merge methods, shared-memory folder."""
        if self._info is None:
            self._info = self._call("info")
        return self._info

    def health(self) -> str:
        """``"ok"``, or ``"draining"`` while the daemon shuts down."""
        return self._call("health")["status"]

    @property
    def shm(self) -> bool:
        """Whether tensors travel through shared memory."""
        if self._want_shm is False or not self._unix:
            return False
        if self._shm is not None:
            return self._shm
        d = self.info().get("shm_dir") or ""
        ok = bool(d) and os.access(os.path.join(d, "uploads"), os.W_OK)
        if self._want_shm and not ok:
            raise ConnectionError(
                f"shared memory requested but the daemon's folder {d!r} is not writable here"
            )
        self._shm = ok
        return ok
