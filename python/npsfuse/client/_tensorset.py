"""Tensor sets in the daemon's one format, both ways.

A tensor set is Arrow record batches with the schema :data:`SCHEMA`: each
row is bytes ``[offset, offset + len(data))`` of tensor ``name``. Flight
carries it as an IPC stream (``DoPut`` / ``DoGet``); shared memory and the
daemon's own files hold it as an IPC file with one row per tensor, so each
tensor's bytes are contiguous and are used in place. ``pyarrow`` reads and
writes both here; the daemon checks whatever it reads with its own
bounds-checked reader (``daemon/tensors``).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .._bridge import tensor_buffer

#: Schema of a tensor set: one row per piece of a tensor.
SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("data", pa.large_binary(), nullable=False),
    ]
)

#: The dtypes of a tensor set, by their names (torch's).
DTYPES: dict[str, torch.dtype] = {
    n: getattr(torch, n)
    for n in "float32 float16 bfloat16 float64 int64 int32 int16 int8 uint8 bool".split()
}
NAMES = {v: k for k, v in DTYPES.items()}

_SMALL = 1 << 20  # tensors below this are grouped into one record batch
_GROUP = 4 << 20

#: A piece of a tensor: name, tensor, byte offset, its bytes.
_Piece = tuple[str, torch.Tensor, int, pa.Buffer]


# ---------------------------------------------------------------- encoding


def _as_tensor(name: str, v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"tensor {name!r} is a {type(v).__name__}, not a torch.Tensor")
    if v.dtype not in NAMES:
        raise TypeError(f"tensor {name!r} has dtype {v.dtype}; supported: {sorted(DTYPES)}")
    return v.detach().to("cpu").contiguous()


def state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A state dict or ``nn.Module`` as contiguous CPU tensors of supported dtypes."""
    if isinstance(model, torch.nn.Module):
        model = model.state_dict()
    if not isinstance(model, Mapping):
        raise TypeError(f"expected a state dict or nn.Module, got {type(model).__name__}")
    return {str(k): _as_tensor(str(k), v) for k, v in model.items()}


def manifest(sd: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Every tensor's name, dtype and shape (DoPut's manifest)."""
    return [{"name": k, "dtype": NAMES[t.dtype], "shape": list(t.shape)} for k, t in sd.items()]


def _batch(rows: Sequence[_Piece]) -> pa.RecordBatch:
    """One record batch of tensor pieces.

    A single piece is not copied; several are concatenated (small tensors)."""
    if len(rows) == 1:
        data = rows[0][3]
    else:
        data = pa.py_buffer(b"".join(r[3].to_pybytes() for r in rows))
    offs = np.zeros(len(rows) + 1, dtype=np.int64)
    offs[1:] = np.cumsum([r[3].size for r in rows])
    cols = [
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([NAMES[r[1].dtype] for r in rows], pa.string()),
        pa.array([",".join(map(str, r[1].shape)) for r in rows], pa.string()),
        pa.array([r[2] for r in rows], pa.int64()),
        pa.Array.from_buffers(pa.large_binary(), len(rows), [None, pa.py_buffer(offs), data]),
    ]
    return pa.record_batch(cols, schema=SCHEMA)


def stream_batches(sd: Mapping[str, torch.Tensor], chunk: int) -> Iterator[pa.RecordBatch]:
    """Record batches for Flight: big tensors in pieces of ≤ chunk bytes
    (no copies), small ones grouped (sorted by element size so that each
    stays aligned for its type)."""
    small: list[_Piece] = []
    size = 0
    for name, t in sorted(sd.items(), key=lambda kv: -kv[1].element_size()):
        n = t.nbytes
        if n < _SMALL:
            small.append((name, t, 0, tensor_buffer(t)))
            size += n
            if size >= _GROUP:
                yield _batch(small)
                small, size = [], 0
            continue
        for lo in range(0, n, chunk):
            yield _batch([(name, t, lo, tensor_buffer(t, lo, min(n, lo + chunk)))])
    if small:
        yield _batch(small)


def write_file(sink: Any, sd: Mapping[str, torch.Tensor]) -> None:
    """Write ``sd`` as an IPC tensor file into ``sink``: one batch of one
    row per tensor, so every tensor is contiguous in the file."""
    with pa.ipc.new_file(sink, SCHEMA) as w:
        for name, t in sd.items():
            w.write_batch(_batch([(name, t, 0, tensor_buffer(t))]))


def file_size(sd: Mapping[str, torch.Tensor]) -> int:
    """Size of ``sd``'s IPC tensor file (written to a counting sink)."""
    sink = pa.MockOutputStream()
    write_file(sink, sd)
    return sink.size()


def fill_file(mm: mmap.mmap, sd: Mapping[str, torch.Tensor]) -> None:
    """Write ``sd``'s IPC tensor file into a mapping of exactly its size,
    copying tensor bytes on several threads."""
    out = pa.FixedSizeBufferWriter(pa.py_buffer(mm))
    out.set_memcopy_threads(max(1, min(4, os.cpu_count() or 1)))
    out.set_memcopy_threshold(1 << 20)
    write_file(out, sd)
    out.close()


# ---------------------------------------------------------------- decoding


def rows(b: pa.RecordBatch) -> Iterator[tuple[str, str, str, int, pa.Buffer]]:
    """The rows of a tensor-set batch: name, dtype, shape, byte offset and
    the piece (a slice of the batch's data buffer, not a copy)."""
    names, dtypes, shapes, offsets = (b.column(k).to_pylist() for k in range(4))
    col = b.column(4)
    offs = np.frombuffer(col.buffers()[1], dtype=np.int64)[col.offset : col.offset + len(names) + 1]
    data = col.buffers()[2] or pa.py_buffer(b"")
    for r, name in enumerate(names):
        lo, n = int(offs[r]), int(offs[r + 1] - offs[r])
        yield name, dtypes[r], shapes[r], offsets[r], data.slice(lo, n)


def _meta(dtype: str, shape: str) -> tuple[torch.dtype, list[int], int]:
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r} in a tensor set")
    dims = [int(x) for x in shape.split(",")] if shape else []
    return DTYPES[dtype], dims, int(np.prod(dims)) if dims else 1


def file_tensors(mem: Any) -> dict[str, torch.Tensor]:
    """The tensors of an IPC tensor file held in ``mem`` (a mapping or an
    array over one), each one piece: views of its bytes (no copy)."""
    whole = pa.py_buffer(mem)
    reader = pa.ipc.open_file(pa.BufferReader(whole))
    out: dict[str, torch.Tensor] = {}
    for i in range(reader.num_record_batches):
        for name, dtype, shape, offset, piece in rows(reader.get_batch(i)):
            dt, dims, numel = _meta(dtype, shape)
            if offset != 0 or piece.size != numel * dt.itemsize:
                raise ValueError(f"tensor {name!r} is split in a tensor file; expected one piece")
            lo = piece.address - whole.address
            flat = torch.frombuffer(mem, dtype=dt, count=numel, offset=lo) if numel else None
            out[name] = (torch.empty(0, dtype=dt) if flat is None else flat).reshape(dims)
    return out


def stream_tensors(batches: Iterable[pa.RecordBatch]) -> dict[str, torch.Tensor]:
    """The tensors of a Flight stream's batches, their pieces copied out of
    the received (read-only) buffers into tensors allocated here."""
    out: dict[str, torch.Tensor] = {}
    flat: dict[str, np.ndarray] = {}
    for b in batches:
        for name, dtype, shape, offset, piece in rows(b):
            if name not in flat:
                dt, dims, numel = _meta(dtype, shape)
                t = torch.empty(numel, dtype=dt)
                flat[name], out[name] = t.view(torch.uint8).numpy(), t.reshape(dims)
            dst, n = flat[name], piece.size
            if offset < 0 or offset + n > dst.size:
                raise ValueError(
                    f"tensor {name!r}: piece [{offset}, {offset + n}) outside its {dst.size} bytes"
                )
            dst[offset : offset + n] = np.frombuffer(piece, dtype=np.uint8)
    return out


def read_file(path: str) -> dict[str, torch.Tensor]:
    """Map an IPC tensor file privately (copy-on-write) and return its
    tensors as views of the mapping: no copies, and writable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return file_tensors(mmap.mmap(fd, 0, access=mmap.ACCESS_COPY))
    finally:
        os.close(fd)


def slab_tensors(mm: mmap.mmap) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The tensors of a slab's mapping, as views of one numpy array over it
    (returned too): the slab is in use as long as that array is alive."""
    base = np.frombuffer(mm, dtype=np.uint8)
    return file_tensors(base), base


def decompress(
    base: Mapping[str, torch.Tensor], compressed: Mapping[str, torch.Tensor], model: int = 0
) -> dict[str, torch.Tensor]:
    """Rebuild fine-tuned model ``model`` from a ``compress`` job's result:
    θ₀ + τ_NPS, with τ_NPS scattered from its bit mask (``{t}:{name}:mask``,
    ``np.packbits`` order) and kept values (``{t}:{name}:values``), the
    layout of :mod:`npsfuse.compress`."""
    out: dict[str, torch.Tensor] = {}
    for name, b in base.items():
        mask = compressed.get(f"{model}:{name}:mask")
        if mask is None:
            out[name] = b.clone()
            continue
        vals = compressed[f"{model}:{name}:values"]
        bits = np.unpackbits(mask.numpy(), count=b.numel()).astype(bool)
        tau = torch.zeros(b.numel(), dtype=torch.float32)
        tau[torch.from_numpy(bits)] = vals.float()
        out[name] = (b.float() + tau.reshape(b.shape)).to(b.dtype)
    return out
