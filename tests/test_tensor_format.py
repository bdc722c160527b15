"""The daemon's one tensor-set format (issue 13), against the real binary.

Tensor sets are Arrow IPC with the tensor-set schema everywhere: Flight
streams (``DoPut``, ``DoGet``) and the files the daemon keeps (uploads from
either transport, results). pyarrow alone reads what the daemon stores and
sends; uploads that are malformed at the byte level are refused with
``INVALID_ARGUMENT`` naming the upload and the problem, leave nothing behind,
and the daemon lives on (the bytes go through the daemon's bounds-checked
reader, which ``FuzzDoPut`` fuzzes).

Uses the ``Daemon`` harness of ``test_daemon.py`` (same binary lookup).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from npsfuse.client import SCHEMA, Client
from pyarrow import flight
from test_daemon import family, make_daemon, npsfused_bin, same, save  # noqa: F401  (fixtures)

NP = {"float32": np.float32, "int64": np.int64, "uint8": np.uint8, "bool": np.bool_}


def sample() -> dict[str, torch.Tensor]:
    base, _ = family(1, seed=5)
    base["ids"] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)
    base["mask"] = torch.tensor([True, False, True])
    base["scalar"] = torch.tensor(2.5)
    base["empty"] = torch.zeros(0, 3)
    return base


def from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Tensors from a tensor-set table, with pyarrow and NumPy only."""
    parts: dict[str, list[tuple[int, bytes]]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for row in table.to_pylist():
        parts.setdefault(row["name"], []).append((row["offset"], row["data"]))
        meta[row["name"]] = (row["dtype"], row["shape"])
    out = {}
    for name, ps in parts.items():
        dtype, shape = meta[name]
        data = b"".join(d for _, d in sorted(ps))
        dims = [int(x) for x in shape.split(",")] if shape else []
        out[name] = np.frombuffer(data, dtype=NP[dtype]).reshape(dims)
    return out


def assert_equal(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k, t in want.items():
        np.testing.assert_array_equal(got[k], t.numpy(), err_msg=k)


@pytest.fixture
def daemon(make_daemon):  # noqa: F811
    return make_daemon()


def flight_client(d) -> flight.FlightClient:
    return flight.FlightClient("grpc+unix://" + d.address.removeprefix("unix://"))


def test_uploads_are_one_ipc_file_format_pyarrow_reads(daemon):
    sd = sample()
    over_flight = daemon.client(shm=False)
    over_flight.upload(sd, name="flight")
    uploads = daemon.dir / "state" / "uploads"
    assert sorted(os.listdir(uploads)) == ["flight.arrow"]  # not safetensors any more
    with pa.memory_map(str(uploads / "flight.arrow")) as f:
        reader = pa.ipc.open_file(f)
        assert reader.schema.equals(SCHEMA)
        table = reader.read_all()
    assert_equal(from_table(table), sd)
    # every tensor's bytes start 64-byte aligned in the file (usable in place)
    raw = (uploads / "flight.arrow").read_bytes()
    buf = pa.py_buffer(raw)
    reader = pa.ipc.open_file(buf)
    for i in range(reader.num_record_batches):
        data = reader.get_batch(i).column(4).buffers()[2]
        assert data.size == 0 or (data.address - buf.address) % 64 == 0
    # the same tensors through shared memory: the same format, the same answers
    local = daemon.client()
    assert local.shm
    local.upload(sd, name="shm")
    for c in (over_flight, local):
        for name in ("flight", "shm"):
            info = c._call("upload_info", {"name": name})
            assert info["format"] == "arrow"
            assert same(c.download_upload(name), sd)


def test_doget_and_results_are_read_by_pyarrow(daemon):
    sd = sample()
    c = daemon.client(shm=False)
    c.upload(sd, name="u")
    fl = flight_client(daemon)
    ticket = flight.Ticket(json.dumps({"upload": "u", "chunk": 1000}).encode())
    table = fl.do_get(ticket).read_all()
    assert table.schema.equals(SCHEMA)
    assert table.num_rows > len(sd)  # the embedding arrived in pieces of 1000 bytes
    assert_equal(from_table(table), sd)
    schema = fl.get_schema(flight.FlightDescriptor.for_command(b"{}")).schema
    assert schema.equals(SCHEMA)
    # a merge's result file, and its DoGet stream
    base, fts = family(2, seed=6)
    paths = [save(m, daemon.root / n) for m, n in zip([base, *fts], "bxy", strict=True)]
    cfg = {"merge_method": "task_arithmetic", "base_model": paths[0]}
    cfg["models"] = [{"model": p} for p in paths[1:]]
    job = c.submit_merge(cfg)
    st = job.wait(timeout=60)
    want = job.result()
    table = pa.ipc.open_file(pa.memory_map(st["result"]["path"])).read_all()
    assert_equal(from_table(table), want)
    stream = fl.do_get(flight.Ticket(json.dumps({"job": job.id}).encode())).read_all()
    assert_equal(from_table(stream), want)
    fl.close()


def piece(offset: int, data: bytes, name: str = "w", dtype: str = "uint8", offs=None):
    """A one-row tensor-set batch (or several rows of ``w`` when ``offs``
    gives the data column's offsets: pyarrow checks only their ends, so
    rows may run backwards)."""
    offs = [0, len(data)] if offs is None else offs
    n = len(offs) - 1
    col = pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(np.array(offs, np.int64)), pa.py_buffer(data)]
    )
    cols = [pa.array([name] * n), pa.array([dtype] * n), pa.array(["8"] * n)]
    cols += [pa.array([offset + o for o in offs[:-1]], pa.int64()), col]
    return pa.record_batch(cols, schema=SCHEMA)


W8 = [{"name": "w", "dtype": "uint8", "shape": [8]}]
OTHER = pa.schema([("a", pa.int64())])
HOSTILE = {  # case: (manifest, schema, batches, words of the refusal)
    "backwards": (W8, SCHEMA, [piece(0, b"0123456789", offs=[0, 6, 2])], "row 1 spans [6, 2)"),
    "other schema": (W8, OTHER, [pa.record_batch([pa.array([1])], schema=OTHER)], "has 1 columns"),
    "past the end": (W8, SCHEMA, [piece(4, b"0123")], "piece at byte 4, expected 0"),
    "overrun": (W8, SCHEMA, [piece(0, b"012345678")], "overruns its 8 bytes"),
    "not in manifest": (W8, SCHEMA, [piece(0, b"01234567", "v")], "not in the upload's manifest"),
    "other dtype": (W8, SCHEMA, [piece(0, b"01234567", dtype="int8")], "the manifest uint8"),
    "incomplete": (W8, SCHEMA, [piece(0, b"01234")], "5 of its 8 bytes arrived"),
    "bad dtype": ([{**W8[0], "dtype": "complex64"}], SCHEMA, [], "unsupported dtype"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_uploads_are_refused_and_the_daemon_lives(daemon, case):
    manifest, schema, batches, want = HOSTILE[case]
    fl = flight_client(daemon)
    cmd = json.dumps({"upload": "bad", "tensors": manifest}).encode()
    with pytest.raises((pa.ArrowException, OSError)) as e:
        writer, reader = fl.do_put(flight.FlightDescriptor.for_command(cmd), schema)
        with writer:
            for b in batches:
                writer.write_batch(b)
            writer.done_writing()
            reader.read()
    msg = str(e.value)
    assert "invalid argument" in msg.lower() and "upload bad" in msg and want in msg, msg
    fl.close()
    # nothing stored, not even a temporary file; the daemon answers and
    # takes a good upload of the same name
    assert os.listdir(Path(daemon.dir / "state" / "uploads")) == []
    c: Client = daemon.client(shm=False)
    assert c.health() == "ok"
    with pytest.raises(LookupError):
        c._call("upload_info", {"name": "bad"})
    good = {"w": torch.arange(8, dtype=torch.uint8)}
    assert c.upload(good, name="bad") == "upload:bad"
    assert same(c.download_upload("bad"), good)


@pytest.mark.parametrize("shm", [False, True])
def test_out_dir_merges_of_uploads_are_refused_on_both_transports(daemon, shm):
    """Uploads are tensor files whatever their transport, so an ``out_dir``
    merge (checkpoint to checkpoint) refuses them alike; it used to accept
    a Flight upload (stored as safetensors) and refuse a shared-memory one."""
    base, fts = family(1, seed=3)
    c = daemon.client(shm=shm)
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "models": [fts[0]]}
    with pytest.raises(ValueError, match="is an Arrow tensor file"):
        c.submit_merge(cfg, out_dir=daemon.root / "out")
    assert not (daemon.root / "out").exists()
    assert os.listdir(daemon.dir / "state" / "uploads") == []  # the client deleted them
