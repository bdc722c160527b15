"""Hand torch tensors to Go through the Arrow C Data Interface, without copies.

Each tensor becomes a pyarrow array whose data buffer *is* the tensor's
memory (``pa.foreign_buffer`` keeps the tensor alive), exported into a
contiguous C array of ``ArrowArray``/``ArrowSchema`` structs whose addresses
go to Go. Go validates and imports the structs, reads inputs and writes
outputs in place, and calls each struct's release callback before it
returns. Only the structs are allocated here; tensor data never moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import torch
from pyarrow.cffi import ffi

#: torch dtype → (Arrow type, field metadata) used on the wire.
_WIRE: dict[torch.dtype, tuple[pa.DataType, dict[bytes, bytes] | None]] = {
    torch.float32: (pa.float32(), None),
    torch.float16: (pa.float16(), None),
    torch.bfloat16: (pa.uint16(), {b"npsfuse.dtype": b"bfloat16"}),
}

#: dtypes the Go kernels accept.
SUPPORTED = tuple(_WIRE)


def as_dtype(dtype: torch.dtype | str, what: str = "dtype") -> torch.dtype:
    """A supported float dtype from a ``torch.dtype`` or its name
    (``"bfloat16"``, ``"torch.bfloat16"``), as the CLI, the Client and the
    Evolver take them; ``TypeError`` naming ``what`` otherwise."""
    d = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if d not in SUPPORTED:
        names = ", ".join(str(t).removeprefix("torch.") for t in SUPPORTED)
        raise TypeError(f"{what} must be one of {names} (a torch.dtype or its name), got {dtype!r}")
    return d  # type: ignore[return-value]


def tensor_buffer(t: torch.Tensor, lo: int = 0, hi: int | None = None) -> pa.Buffer:
    """Bytes ``[lo, hi)`` (default: all) of contiguous CPU tensor ``t``, not
    copied: the buffer keeps ``t`` alive."""
    if not t.nbytes:
        return pa.py_buffer(b"")
    return pa.foreign_buffer(t.data_ptr() + lo, (t.nbytes if hi is None else hi) - lo, base=t)


_ARRAY_SIZE = ffi.sizeof("struct ArrowArray")
_SCHEMA_SIZE = ffi.sizeof("struct ArrowSchema")


def check_tensor(name: str, t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a contiguous CPU tensor Go can read, or raise TypeError.

    A non-contiguous tensor is made contiguous here (one copy); CUDA and
    other non-CPU tensors, and dtypes other than float32/float16/bfloat16,
    raise ``TypeError`` naming the tensor.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
    if t.device.type != "cpu":
        raise TypeError(
            f"tensor {name!r} is on {t.device}; npsfuse works on CPU tensors (call .cpu())"
        )
    if t.dtype not in _WIRE:
        raise TypeError(
            f"tensor {name!r} has dtype {t.dtype}; npsfuse merges float32, float16 "
            "and bfloat16 tensors"
        )
    if t.requires_grad:
        t = t.detach()
    return t if t.is_contiguous() else t.contiguous()


class ArrowPack:
    """Named tensors exported as contiguous ``ArrowArray``/``ArrowSchema`` structs.

    Parameters
    ----------
    items
        ``(name, tensor)`` pairs; tensors must already pass :func:`check_tensor`.
    transposed
        Names of weights stored (in, out) rather than (out, in), flagged for
        per-neuron methods.

    Notes
    -----
    Ownership of every struct passes to Go with the call that receives
    :attr:`arrays`/:attr:`schemas`; Go releases them all, on success and on
    error. Keep the pack alive until that call returns.
    """

    def __init__(
        self, items: Sequence[tuple[str, torch.Tensor]], transposed: frozenset[str] = frozenset()
    ) -> None:
        n = len(items)
        self.count = n
        self._arrays = ffi.new("struct ArrowArray[]", max(n, 1))
        self._schemas = ffi.new("struct ArrowSchema[]", max(n, 1))
        self.arrays = int(ffi.cast("uintptr_t", self._arrays))
        self.schemas = int(ffi.cast("uintptr_t", self._schemas))
        for i, (name, t) in enumerate(items):
            typ, meta = _WIRE[t.dtype]
            arr = pa.Array.from_buffers(typ, t.numel(), [None, tensor_buffer(t)])
            arr._export_to_c(self.arrays + i * _ARRAY_SIZE)
            md = {b"npsfuse.shape": ",".join(map(str, t.shape)).encode(), **(meta or {})}
            if name in transposed:
                md[b"npsfuse.transposed"] = b"1"
            pa.field(name, typ, metadata=md)._export_to_c(self.schemas + i * _SCHEMA_SIZE)

    def __del__(self) -> None:
        # Safety net: release whatever Go never took (e.g. the call was never
        # made). Structs Go imported are already marked released.
        for i in range(self.count):
            for c in (self._arrays[i], self._schemas[i]):
                if c.release != ffi.NULL:
                    c.release(ffi.addressof(c))
