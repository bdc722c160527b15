"""One error taxonomy (issue #13): the same bad input gets the same kind in
process (the Python exception and its ``kind``) and through the daemon (the
gRPC code of that kind, from ``daemon/server/errors.go``).

The kind → exception and kind → gRPC code tables themselves are tested in
Go (``pybind/errors_test.go``, ``daemon/server/errors_test.go``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import npsfuse
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from npsfuse import _core
from test_daemon import Daemon, family, make_daemon, npsfused_bin, save  # noqa: F401

#: The gRPC code each kind maps to, in Flight's words (errors.go's table).
GRPC = {
    "invalid_input": "invalid argument",
    "invalid_tensor": "invalid argument",
    "not_found": "not found",
    "permission": "permission denied",
    "resource_exhausted": "resource exhausted",
    "already_exists": "already exists",
    "internal": "internal",
}

_FLIGHT = re.compile(
    r"Flight returned ([a-z ]+?) error, with message: (.*?)(?:\. gRPC client debug|\. Detail|$)",
    re.DOTALL,
)


def _submit_raw(d: Daemon, spec: dict[str, Any]) -> tuple[str, str]:
    """Submit a merge job over Flight without the client's translation:
    the gRPC code's name and the message."""
    fc = flight.FlightClient(d.address.replace("unix://", "grpc+unix://"))
    body = json.dumps({"type": "merge", "spec": spec}).encode()
    try:
        list(fc.do_action(flight.Action("submit", body)))
    except (flight.FlightError, pa.ArrowException) as exc:  # ArrowInvalid for INVALID_ARGUMENT
        m = _FLIGHT.search(str(exc))
        assert m, str(exc)
        return m.group(1).strip(), m.group(2).strip()
    finally:
        fc.close()
    raise AssertionError("the daemon accepted a bad job")


def _in_process(config: dict[str, Any], out: Path) -> BaseException:
    with pytest.raises(Exception) as info:
        npsfuse.merge_checkpoints(config, out, quiet=True)
    return info.value


def _cases(root: Path) -> list[tuple[str, dict[str, Any], str]]:
    base, fts = family(2, seed=3)
    b = save(base, root / "base")
    m = [save(ft, root / f"ft{i}") for i, ft in enumerate(fts)]
    models = [{"model": p, "parameters": {"weight": 1.0}} for p in m]
    return [
        ("gamma out of range",
         {"merge_method": "breadcrumbs", "base_model": b, "models": models,
          "parameters": {"gamma": 1.0, "density": 0.5}},
         "invalid_input"),
        ("unknown method",
         {"merge_method": "transmogrify", "base_model": b, "models": models},
         "invalid_input"),
        ("density of one model out of range",
         {"merge_method": "ties", "base_model": b,
          "models": [models[0], {"model": m[1], "parameters": {"density": 2.0}}]},
         "invalid_input"),
    ]


def test_same_kind_in_process_and_through_the_daemon(make_daemon, tmp_path):  # noqa: F811
    d = make_daemon()
    for name, config, kind in _cases(d.root):
        exc = _in_process(config, tmp_path / "out")
        assert getattr(exc, "kind", None) == kind, (name, exc)
        assert isinstance(exc, _core.kinds()[kind]), (name, type(exc))
        assert not (tmp_path / "out").exists()
        code, message = _submit_raw(d, {"config": config, "out_dir": str(d.root / "out")})
        assert code == GRPC[kind], (name, code, message)
        assert str(exc) in message, (name, str(exc), message)  # the same words
        with pytest.raises(_core.kinds()[kind]):  # and the client raises the same class
            d.client().submit_merge(config, out_dir=d.root / "out")


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("invalid_input", ValueError), ("invalid_tensor", TypeError),
     ("not_found", FileNotFoundError), ("permission", PermissionError),
     ("resource_exhausted", OSError), ("resource_exhausted", RuntimeError),
     ("cancelled", RuntimeError), ("already_exists", OSError), ("internal", RuntimeError)],
)
def test_exception_classes_keep_what_users_catch(kind: str, cls: type[BaseException]) -> None:
    exc = _core.error(kind, "x")
    assert isinstance(exc, cls) and exc.kind == kind and str(exc) == "x"


def test_tagged_go_error_becomes_its_exception() -> None:
    """A Go error crosses with its kind; the message is what users saw before."""
    with pytest.raises(ValueError) as info:
        _core.call(_core.go.CheckParams, "breadcrumbs", json.dumps({"global": {"gamma": 1}}), 2)
    assert info.value.kind == "invalid_input"
    assert str(info.value) == "gamma must lie in [0, 1), got 1"
    with pytest.raises(TypeError) as bad:  # a tensor Go cannot take
        _core.call(_core.go.Inspect, 0, 0, 1)
    assert bad.value.kind == "invalid_tensor"
    assert not str(bad.value).startswith(("\x1d", "bad tensor"))


def test_public_exception_classes() -> None:
    """npsfuse's own classes keep ``except RuntimeError`` (and, for a full
    disk, ``except OSError``) working."""
    assert issubclass(npsfuse.CancelledError, RuntimeError)
    assert issubclass(npsfuse.ResourceExhaustedError, OSError)


def test_client_classes_are_the_in_process_ones_too(make_daemon) -> None:  # noqa: F811
    """The client's NOT_FOUND and RESOURCE_EXHAUSTED errors are instances of
    the in-process classes (FileNotFoundError, ResourceExhaustedError) and of
    the classes the client raised before (LookupError, ValueError)."""
    from npsfuse.client._errors import translate

    d = make_daemon()
    with pytest.raises(FileNotFoundError) as info:
        d.client().job(987654).status()
    assert isinstance(info.value, LookupError)
    exc = translate(Exception("Flight returned resource exhausted error, with message: disk full"))
    assert isinstance(exc, npsfuse.ResourceExhaustedError) and isinstance(exc, ValueError)
    assert str(exc) == "disk full"
