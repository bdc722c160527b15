"""``npsfuse.Client``: send merges, pruning and searches to an ``npsfused`` daemon.

A training job talks to the daemon on its node instead of loading every
checkpoint into every rank::

    import npsfuse

    client = npsfuse.Client()                      # the local daemon's socket
    job = client.submit_merge({
        "merge_method": "ties",
        "base_model": "/data/base",                # a path inside the daemon's data roots ...
        "models": [{"model": "/data/ft-a"},
                   {"model": model.state_dict()}],  # ... or tensors, which the client uploads
        "parameters": {"density": 0.2},
    })
    merged = job.result(timeout=600)               # dict[str, torch.Tensor]

    search = client.nps_search(base_sd, ft_sd, keep=0.1, generations=20)
    while not search.done:   # client.evolve([ft_a, ft_b, ft_c]) works the same way
        cands = search.ask()
        search.tell([evaluate(c.state_dict()) for c in cands])
    best = search.finish().result()

Transport: the daemon speaks Arrow Flight over gRPC. On the same host (a
``unix://`` address) tensors go through shared memory: the client writes an
Arrow IPC file into the daemon's shared-memory folder and the daemon maps it;
results come back the same way and are mapped here, so tensor bytes are
copied once each way. Over TCP they travel as Flight record batches.

Every call carries the bearer token (``token=`` or ``$NPSFUSE_TOKEN``); the
daemon requires one on TCP. Errors from the daemon become Python exceptions:
``ValueError`` (bad request), ``PermissionError`` (path outside the data roots,
bad token), ``LookupError`` (unknown job or upload), ``ConnectionError``
(daemon unreachable or shutting down), ``NotImplementedError``,
``JobFailedError`` / ``JobCancelledError`` from :meth:`Job.result`.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import torch

__all__ = [
    "AuthenticationError",
    "Candidate",
    "Client",
    "DaemonError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "Session",
    "decompress",
    "default_address",
]

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

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}

_SMALL = 1 << 20  # tensors below this are grouped into one record batch
_GROUP = 4 << 20
_FINAL = ("done", "failed", "cancelled")


# ---------------------------------------------------------------- errors


class DaemonError(RuntimeError):
    """An error reported by npsfused that has no more specific class."""


class AuthenticationError(DaemonError, PermissionError):
    """The daemon refused the bearer token (missing or wrong)."""


class JobFailedError(DaemonError):
    """The job ended in the failed state; the message is the daemon's reason."""


class JobCancelledError(DaemonError):
    """The job was cancelled."""


class _NotFound(DaemonError, LookupError):
    pass


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
    "resource exhausted": _Invalid,
    "out of range": _Invalid,
    "not found": _NotFound,
    "unauthorized": _Denied,
    "permission denied": _Denied,
    "unauthenticated": AuthenticationError,
    "unavailable": _Unavailable,
    "unimplemented": _Unsupported,
    "already exists": _Exists,
}


def _translate(exc: BaseException) -> BaseException:
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


# ------------------------------------------------------------- addresses


def _runtime_dir() -> str:
    d = os.environ.get("XDG_RUNTIME_DIR", "")
    if d and os.path.isabs(d):
        return d
    return os.path.join(tempfile.gettempdir(), f"npsfused-{os.getuid()}")


def default_address() -> str:
    """``$NPSFUSE_ADDRESS``, else the daemon's default socket,
    ``unix://<runtime dir>/npsfused/npsfused.sock``."""
    env = os.environ.get("NPSFUSE_ADDRESS")
    if env:
        return env
    return "unix://" + os.path.join(_runtime_dir(), "npsfused", "npsfused.sock")


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


# ------------------------------------------------------ tensor conversion


def _as_tensor(name: str, v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"tensor {name!r} is a {type(v).__name__}, not a torch.Tensor")
    if v.dtype not in _NAMES:
        raise TypeError(f"tensor {name!r} has dtype {v.dtype}; supported: {sorted(_DTYPES)}")
    return v.detach().to("cpu").contiguous()


def _state_dict(model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        model = model.state_dict()
    if not isinstance(model, Mapping):
        raise TypeError(f"expected a state dict or nn.Module, got {type(model).__name__}")
    return {str(k): _as_tensor(str(k), v) for k, v in model.items()}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _bytes_buffer(t: torch.Tensor, lo: int = 0, hi: int | None = None) -> pa.Buffer:
    n = _nbytes(t)
    hi = n if hi is None else hi
    if n == 0:
        return pa.py_buffer(b"")
    return pa.foreign_buffer(t.data_ptr() + lo, hi - lo, base=t)


def _batch(rows: Sequence[tuple[str, torch.Tensor, int, pa.Buffer]]) -> pa.RecordBatch:
    """One record batch of tensor pieces (name, tensor, byte offset, bytes).

    A single piece is not copied; several are concatenated (small tensors)."""
    if len(rows) == 1:
        data = rows[0][3]
    else:
        data = pa.py_buffer(b"".join(r[3].to_pybytes() for r in rows))
    offs = np.zeros(len(rows) + 1, dtype=np.int64)
    offs[1:] = np.cumsum([r[3].size for r in rows])
    cols = [
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([_NAMES[r[1].dtype] for r in rows], pa.string()),
        pa.array([",".join(map(str, r[1].shape)) for r in rows], pa.string()),
        pa.array([r[2] for r in rows], pa.int64()),
        pa.Array.from_buffers(pa.large_binary(), len(rows), [None, pa.py_buffer(offs), data]),
    ]
    return pa.record_batch(cols, schema=SCHEMA)


def _batches(sd: Mapping[str, torch.Tensor], chunk: int) -> Iterator[pa.RecordBatch]:
    """Record batches for a state dict: big tensors in pieces of ≤ chunk bytes
    (no copies), small ones grouped (sorted by element size so that each
    stays aligned for its type)."""
    small: list[tuple[str, torch.Tensor, int, pa.Buffer]] = []
    size = 0
    for name, t in sorted(sd.items(), key=lambda kv: -kv[1].element_size()):
        n = _nbytes(t)
        if n < _SMALL:
            small.append((name, t, 0, _bytes_buffer(t)))
            size += n
            if size >= _GROUP:
                yield _batch(small)
                small, size = [], 0
            continue
        for lo in range(0, n, chunk):
            yield _batch([(name, t, lo, _bytes_buffer(t, lo, min(n, lo + chunk)))])
    if small:
        yield _batch(small)


def _file_batches(sd: Mapping[str, torch.Tensor]) -> Iterator[pa.RecordBatch]:
    """One batch per tensor, one row each: every tensor contiguous in the file."""
    for name, t in sd.items():
        yield _batch([(name, t, 0, _bytes_buffer(t))])


def _ipc_size(sd: Mapping[str, torch.Tensor]) -> int:
    """Size of ``sd``'s Arrow IPC tensor file (written to a counting sink)."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as w:
        for b in _file_batches(sd):
            w.write_batch(b)
    return sink.size()


def _fill_ipc(mm: mmap.mmap, sd: Mapping[str, torch.Tensor]) -> None:
    """Write ``sd``'s IPC tensor file into a mapping of exactly its size,
    copying tensor bytes on several threads."""
    buf = pa.py_buffer(mm)
    out = pa.FixedSizeBufferWriter(buf)
    out.set_memcopy_threads(max(1, min(4, os.cpu_count() or 1)))
    out.set_memcopy_threshold(1 << 20)
    with pa.ipc.new_file(out, SCHEMA) as w:
        for b in _file_batches(sd):
            w.write_batch(b)
    out.close()


class _Slabs:
    """Shared-memory files this client keeps mapped and reuses ("slabs").

    Mapping tmpfs pages costs page-table work for every page, about as much
    as copying them, and fresh pages must be allocated too; so the client
    keeps its files mapped and reuses them:

    * uploads: a new slab is written with plain file writes (no mapping on
      the critical path; it is mapped in the background afterwards); later
      uploads of the same size are copied into a free slab's mapping. The
      daemon moves a slab to ``free/`` when the job that consumed it ends
      (cleanup ``recycle:NAME:SLAB``) and the client renames it back into
      ``uploads/``.
    * results: the daemon writes shared-memory results into a free slab of
      this client's prefix (``result.recycle``) and keeps its own mapping of
      it. The client maps it once and hands out tensors that are views of
      the mapping; only when every one of them is gone (a finalizer on their
      common base) is the slab handed back (``release``/``recycle``), at the
      client's next call. A tensor a caller holds is therefore never
      overwritten.

    A slab unused for 10 minutes is deleted by the daemon; its mapping here
    is then dropped on the next attempt to reuse it.
    """

    MAX = 8  # slabs kept mapped per client

    def __init__(self, shm_dir: str) -> None:
        self.uploads = os.path.join(shm_dir, "uploads")
        self.free = os.path.join(shm_dir, "free")
        self.prefix = f"s-{uuid.uuid4().hex[:12]}"
        # slab name → [mapping or None while it is being made, size, inode, mapper thread]
        self.maps: dict[str, list[Any]] = {}
        self.count = 0
        self.lock = threading.RLock()
        self.holds: dict[str, int] = {}  # slab → live result leases
        self.owner: dict[str, tuple[str, Any]] = {}  # slab → ("job", id) | ("file", path)
        self.dead: deque[str] = deque()  # leases whose views are all gone (finalizers)

    def write(self, name: str, sd: Mapping[str, torch.Tensor]) -> str:
        """Write upload ``name`` into a slab; returns the slab's name."""
        size = _ipc_size(sd)
        path = os.path.join(self.uploads, f"{name}.arrow")
        with self.lock:  # held while filling: _drop_one must not unmap it
            slab = self._claim(size, path)
            if slab is not None:
                try:
                    _fill_ipc(self._mapping(slab), sd)
                except BaseException:
                    _unlink(path)
                    raise
                return slab
            return self._write_new(size, path, sd)

    def _claim(self, size: int, path: str) -> str | None:
        """Rename a free slab of ``size`` bytes to ``path``; None if there is none."""
        for slab, (_mm, sz, _ino, _th) in list(self.maps.items()):
            if sz != size or self.holds.get(slab):
                continue
            try:  # the rename claims it atomically; it fails while a job uses it
                os.rename(os.path.join(self.free, f"{slab}.arrow"), path)
            except FileNotFoundError:
                continue
            if _inode(path) != self.maps[slab][2]:  # not the file we mapped
                self._forget(slab)
                os.rename(path, os.path.join(self.free, f"{slab}.arrow"))
                continue
            return slab
        return None

    def _write_new(self, size: int, path: str, sd: Mapping[str, torch.Tensor]) -> str:
        """Write a new slab with file writes, then map it in the background."""
        if len(self.maps) >= self.MAX:
            self._drop_one()
        self.count += 1
        slab = f"{self.prefix}-{self.count}"
        fd, tmp = tempfile.mkstemp(prefix=f".{slab}.tmp-", dir=self.uploads)
        try:
            with pa.OSFile(tmp, "wb") as f, pa.ipc.new_file(f, SCHEMA) as w:
                for b in _file_batches(sd):
                    w.write_batch(b)
            if os.fstat(fd).st_size != size:
                raise RuntimeError(f"upload {path}: wrote {os.fstat(fd).st_size} of {size} bytes")
            entry: list[Any] = [None, size, os.fstat(fd).st_ino, None]
            dup = os.dup(fd)
            entry[3] = threading.Thread(target=_map_into, args=(entry, dup, size), daemon=True)
            entry[3].start()
            os.rename(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        finally:
            os.close(fd)
        self.maps[slab] = entry
        return slab

    def _mapping(self, slab: str) -> mmap.mmap:
        entry = self.maps[slab]
        if entry[3] is not None:
            entry[3].join()
            entry[3] = None
        if entry[0] is None:
            raise OSError(f"slab {slab}: mapping it failed")
        return entry[0]

    def adopt(self, slab: str, path: str) -> mmap.mmap:
        """The mapping of result file ``path`` (slab ``slab``): the kept one
        when it is the same file, else a new one (kept)."""
        st = os.stat(path)
        with self.lock:
            entry = self.maps.get(slab)
            if entry is not None and (entry[1], entry[2]) == (st.st_size, st.st_ino):
                return self._mapping(slab)
            if entry is not None:
                self._forget(slab)
            if len(self.maps) >= self.MAX:
                self._drop_one()
            fd = os.open(path, os.O_RDWR)
            try:
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                mm = mmap.mmap(fd, st.st_size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self.maps[slab] = [mm, st.st_size, st.st_ino, None]
            return mm

    def lease(self, slab: str, owner: tuple[str, Any], base: np.ndarray) -> None:
        """Hold slab ``slab`` until ``base`` (every tensor's base) is gone;
        ``owner`` says how to hand it back then."""
        with self.lock:
            self.holds[slab] = self.holds.get(slab, 0) + 1
            self.owner[slab] = owner
        weakref.finalize(base, self.dead.append, slab)

    def expired(self) -> list[tuple[str, tuple[str, Any]]]:
        """Slabs whose last lease ended since the previous call, with their owners."""
        out = []
        with self.lock:
            while self.dead:
                slab = self.dead.popleft()
                n = self.holds.get(slab, 0) - 1
                if n > 0:
                    self.holds[slab] = n
                    continue
                self.holds.pop(slab, None)
                owner = self.owner.pop(slab, None)
                if owner is not None:
                    out.append((slab, owner))
        return out

    def _forget(self, slab: str) -> None:
        entry = self.maps.pop(slab)
        if entry[3] is not None:
            entry[3].join()
        if entry[0] is not None:
            try:
                entry[0].close()
            except BufferError:  # views still exported: the mapping goes with them
                pass

    def _drop_one(self) -> None:
        """Unmap one slab: a free one (deleting its file) if there is one,
        else the oldest not leased (its file lives on until the daemon
        collects it)."""
        idle = [s for s in self.maps if not self.holds.get(s)]
        if not idle:
            return
        victim = idle[0]
        for slab in idle:
            free = os.path.join(self.free, f"{slab}.arrow")
            if os.path.exists(free):
                _unlink(free)
                victim = slab
                break
        self._forget(victim)


def _map_into(entry: list[Any], fd: int, size: int) -> None:
    """Map a new slab (pre-faulted) into ``entry[0]``; runs on a thread."""
    try:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        entry[0] = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        entry[0] = None
    finally:
        os.close(fd)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


def _shape(s: str) -> list[int]:
    return [int(x) for x in s.split(",")] if s else []


class _Assembler:
    """Collects tensor pieces (rows) into torch tensors.

    :meth:`view` keeps a whole tensor that arrived in one piece of mapped
    memory as it is (no copy); :meth:`copy` copies pieces of received
    (read-only) buffers into tensors allocated here."""

    def __init__(self) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self._flat: dict[str, torch.Tensor] = {}

    @staticmethod
    def _meta(dtype: str, shape: str) -> tuple[torch.dtype, list[int], int]:
        dt = _DTYPES[dtype]
        dims = _shape(shape)
        numel = int(np.prod(dims)) if dims else 1
        return dt, dims, numel

    def view(self, name: str, dtype: str, shape: str, offset: int, n: int, make: Any) -> None:
        dt, dims, numel = self._meta(dtype, shape)
        es = torch.empty((), dtype=dt).element_size()
        if offset != 0 or n != numel * es:
            raise ValueError(f"tensor {name!r} is split in a tensor file; expected one piece")
        t = make(dt, numel) if numel else torch.empty(0, dtype=dt)
        self.out[name] = t.reshape(dims)

    def copy(self, name: str, dtype: str, shape: str, offset: int, piece: pa.Buffer) -> None:
        dt, dims, numel = self._meta(dtype, shape)
        flat = self._flat.get(name)
        if flat is None:
            flat = self._flat[name] = torch.empty(numel, dtype=dt)
            self.out[name] = flat.reshape(dims)
        dst = flat.view(torch.uint8).numpy()
        n = piece.size
        if offset < 0 or offset + n > dst.size:
            raise ValueError(
                f"tensor {name!r}: piece [{offset}, {offset + n}) outside its {dst.size} bytes"
            )
        dst[offset : offset + n] = np.frombuffer(piece, dtype=np.uint8)


def _ipc_tensors(whole: pa.Buffer, make: Any) -> dict[str, torch.Tensor]:
    """The tensors of an Arrow IPC tensor file held in ``whole``:
    ``make(dtype, count, byte_offset)`` builds each one over its bytes."""
    base = whole.address
    reader = pa.ipc.open_file(pa.BufferReader(whole))
    asm = _Assembler()
    for i in range(reader.num_record_batches):
        b = reader.get_batch(i)
        names, dtypes, shapes, offsets = (b.column(k).to_pylist() for k in range(4))
        data_col = b.column(4)
        offs = np.frombuffer(data_col.buffers()[1], dtype=np.int64)[: len(names) + 1]
        start = data_col.buffers()[2].address - base + int(offs[0])
        for r, name in enumerate(names):
            lo = start + int(offs[r] - offs[0])
            n = int(offs[r + 1] - offs[r])

            def mk(dt: torch.dtype, count: int, lo: int = lo) -> torch.Tensor:
                return make(dt, count, lo)

            asm.view(name, dtypes[r], shapes[r], offsets[r], n, mk)
    return asm.out


def _read_ipc(path: str) -> dict[str, torch.Tensor]:
    """Map an Arrow IPC tensor file privately (copy-on-write) and return its
    tensors as views of the mapping: no copies, and writable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return _ipc_tensors(
        pa.py_buffer(mm), lambda dt, n, lo: torch.frombuffer(mm, dtype=dt, count=n, offset=lo)
    )


def _slab_tensors(mm: mmap.mmap) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The tensors of a slab's mapping, as views of one numpy array over it
    (returned too): the slab is in use as long as that array is alive."""
    base = np.frombuffer(mm, dtype=np.uint8)
    out = _ipc_tensors(
        pa.py_buffer(base),
        lambda dt, n, lo: torch.frombuffer(base, dtype=dt, count=n, offset=lo),
    )
    return out, base


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


# ------------------------------------------------------------------ client


class Client:
    """A connection to an ``npsfused`` daemon.

    Parameters
    ----------
    address
        ``unix:///path/npsfused.sock`` (same host: shared-memory tensor
        transfers) or ``grpc://host:port``. Default :func:`default_address`.
    token
        Bearer token (default ``$NPSFUSE_TOKEN``); required by the daemon on TCP.
    timeout
        Seconds before a single call gives up (waits take their own timeout).
    shm
        Use the shared-memory path: ``None`` (default) when the address is a
        Unix socket and the daemon's folder is writable here; ``False`` never.
    """

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
        self._slabs: _Slabs | None = None
        self._slab_of: dict[str, str] = {}  # upload name → slab name
        self._default_opts = flight.FlightCallOptions(timeout=timeout, headers=self._headers)

    # ---- plumbing

    def _opts(self, timeout: float | None = None) -> flight.FlightCallOptions:
        if timeout is None or timeout == self.timeout:
            return self._default_opts
        return flight.FlightCallOptions(timeout=timeout, headers=self._headers)

    def _stream(
        self, action: str, body: Mapping[str, Any], timeout: float | None = None
    ) -> Iterator[Any]:
        try:
            for r in self._fl.do_action(
                flight.Action(action, json.dumps(body).encode()), self._opts(timeout)
            ):
                yield json.loads(r.body.to_pybytes())
        except flight.FlightError as exc:
            raise _translate(exc) from None
        except pa.ArrowException as exc:
            raise _translate(exc) from None

    def _call(
        self, action: str, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        out = list(self._stream(action, body or {}, timeout))
        return out[-1] if out else None

    def close(self) -> None:
        """Hand back the shared-memory results no longer in use, and close
        the connection."""
        try:
            self.release_results()
        except Exception:
            pass
        self._fl.close()

    def _slab_pool(self) -> _Slabs:
        if self._slabs is None:
            self._slabs = _Slabs(self.info()["shm_dir"])
        return self._slabs

    def release_results(self) -> int:
        """Hand back to the daemon the shared-memory results whose tensors
        are all gone, for reuse by the next results and uploads; returns how
        many. Called at the start of every submit and download; call it
        yourself after dropping results if the client stays idle."""
        if self._slabs is None:
            return 0
        done = 0
        for slab, (kind, arg) in self._slabs.expired():
            try:
                if kind == "job":
                    self._call("release", {"id": arg, "recycle_as": slab})
                else:
                    self._call("recycle", {"path": arg, "slab": slab})
                done += 1
            except DaemonError:
                pass  # the job or file is gone: nothing to hand back
        return done

    def _read_slab(self, path: str, slab: str, owner: tuple[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors of shared-memory result ``path`` written into slab
        ``slab``: views of this client's mapping, leased until all are gone."""
        pool = self._slab_pool()
        out, base = _slab_tensors(pool.adopt(slab, path))
        pool.lease(slab, owner, base)
        return out

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- daemon

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

    # ---- tensors

    def upload(self, tensors: Any, name: str | None = None) -> str:
        """Send a state dict (or ``nn.Module``) to the daemon; returns ``"upload:NAME"``.

        Same host: written as an Arrow IPC file into the daemon's shared-memory
        folder (one parallel copy). Otherwise: Flight ``DoPut``, big tensors
        in pieces below the daemon's message limit; the daemon stores and
        fsyncs the upload before answering. Uploads referenced by a job the
        client submits are deleted by the daemon when that job ends.
        """
        sd = _state_dict(tensors)
        name = name or f"u-{uuid.uuid4().hex}"
        if self.shm:
            pool = self._slab_pool()
            if os.path.exists(os.path.join(pool.uploads, f"{name}.arrow")):
                raise FileExistsError(f"upload {name!r} already exists")
            self._slab_of[name] = pool.write(name, sd)
            return f"upload:{name}"
        manifest = {
            "upload": name,
            "tensors": [
                {"name": k, "dtype": _NAMES[t.dtype], "shape": list(t.shape)} for k, t in sd.items()
            ],
        }
        chunk = int(self.info().get("chunk_bytes", 8 << 20))
        desc = flight.FlightDescriptor.for_command(json.dumps(manifest).encode())
        try:
            writer, reader = self._fl.do_put(desc, SCHEMA, self._opts(max(self.timeout, 600)))
            with writer:
                for b in _batches(sd, chunk):
                    writer.write_batch(b)
                writer.done_writing()
                reader.read()
        except (flight.FlightError, pa.ArrowException) as exc:
            raise _translate(exc) from None
        return f"upload:{name}"

    def delete_upload(self, ref: str) -> None:
        """Delete an upload (``"upload:NAME"`` or ``NAME``); a shared-memory
        one this client wrote is kept for reuse by its next upload."""
        name = ref.removeprefix("upload:")
        slab = self._slab_of.pop(name, None)
        body = {"name": name}
        if slab is not None:
            body["recycle_as"] = slab
        self._call("delete_upload", body)

    def _cleanup_entry(self, ref: str) -> str:
        """The cleanup entry of an upload a job consumes: recycle its slab
        (the daemon moves it to ``free/`` when the job ends) or delete it."""
        name = ref.removeprefix("upload:")
        slab = self._slab_of.pop(name, None)
        if slab is None:
            return ref
        return f"recycle:{name}:{slab}"  # reusable once the daemon moved it back

    def _fetch(self, ticket: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        asm = _Assembler()
        try:
            reader = self._fl.do_get(
                flight.Ticket(json.dumps(ticket).encode()), self._opts(max(self.timeout, 600))
            )
            for chunk in reader:
                b = chunk.data
                names, dtypes, shapes, offsets = (b.column(k).to_pylist() for k in range(4))
                col = b.column(4)
                offs = np.frombuffer(col.buffers()[1], dtype=np.int64)[
                    col.offset : col.offset + len(names) + 1
                ]
                data = col.buffers()[2]
                for r, name in enumerate(names):
                    lo, n = int(offs[r]), int(offs[r + 1] - offs[r])
                    asm.copy(name, dtypes[r], shapes[r], offsets[r], data.slice(lo, n))
        except (flight.FlightError, pa.ArrowException) as exc:
            raise _translate(exc) from None
        return asm.out

    def download_upload(self, ref: str) -> dict[str, torch.Tensor]:
        """The tensors of an upload (shared memory when possible, else ``DoGet``)."""
        name = ref.removeprefix("upload:")
        if self.shm:
            self.release_results()
            pool = self._slab_pool()
            res = self._call("export_upload", {"name": name, "recycle": pool.prefix})
            return self._shm_result(res)
        return self._fetch({"upload": name})

    def _shm_result(self, res: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Tensors of a shared-memory file from export_upload / candidate:
        a slab's views (handed back once unused), else a private mapping of
        a file deleted at once."""
        path = res["path"]
        if res.get("slab"):
            try:
                return self._read_slab(path, res["slab"], ("file", path))
            except BaseException:
                _unlink(path)
                raise
        try:
            return _read_ipc(path)
        finally:
            _unlink(path)

    def _ref(self, model: Any, uploads: dict[int, str], what: str) -> str:
        """A model reference for a spec: a path (absolute), ``upload:NAME``, or
        tensors (uploaded once per object)."""
        if isinstance(model, (str, os.PathLike)):
            s = os.fspath(model)
            return s if s.startswith("upload:") else os.path.abspath(s)
        if isinstance(model, (Mapping, torch.nn.Module)):
            key = id(model)
            if key not in uploads:
                uploads[key] = self.upload(model)
            return uploads[key]
        raise TypeError(
            f"{what} is a {type(model).__name__}: give a path, 'upload:NAME' or a state dict"
        )

    # ---- jobs

    def submit(
        self,
        type: str,
        spec: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> Job:
        """Submit a job of any type; it is on disk before this returns.

        A retried submit (same ``idempotency_key``) never runs twice: the
        daemon returns the job it stored the first time. Connection failures
        are retried ``retries`` times with the same key.
        """
        key = idempotency_key or f"k-{uuid.uuid4().hex}"
        res = self._submit_call(
            "submit", {"type": type, "spec": dict(spec), "idempotency_key": key}, retries
        )
        return self._job(res["job"])

    def submit_many(self, jobs: Sequence[Mapping[str, Any]], *, retries: int = 3) -> list[Job]:
        """Submit several jobs in one call, stored in one commit (one fsync).

        Parameters
        ----------
        jobs
            Items ``{"type": str, "spec": mapping, "idempotency_key": str}``
            (the key is optional: one is made per job, so that retrying
            the call never runs a job twice).
        retries
            Connection failures are retried this many times (same keys).

        Returns
        -------
        list[Job]
            The jobs, in order; all of them are on disk when this returns.
            Either every job is stored or, if the daemon refuses one (the
            error names ``jobs[i]``), none is.
        """
        body = []
        for i, item in enumerate(jobs):
            if not isinstance(item, Mapping):
                raise TypeError(f"jobs[{i}] is a {type(item).__name__}, not a mapping")
            extra = set(item) - {"type", "spec", "idempotency_key"}
            if extra:
                raise ValueError(
                    f"jobs[{i}]: unknown keys {sorted(extra)} (type, spec, idempotency_key)"
                )
            typ, spec = item.get("type"), item.get("spec", {})
            if not isinstance(typ, str) or not typ:
                raise ValueError(f"jobs[{i}]: 'type' must be a job type name, got {typ!r}")
            if not isinstance(spec, Mapping):
                raise TypeError(
                    f"jobs[{i}] ({typ}): 'spec' is a {type(spec).__name__}, not a mapping"
                )
            key = item.get("idempotency_key") or f"k-{uuid.uuid4().hex}"
            body.append({"type": typ, "spec": dict(spec), "idempotency_key": key})
        if not body:
            return []
        res = self._submit_call("submit_many", {"jobs": body}, retries)
        return [self._job(r["job"]) for r in res["jobs"]]

    def _submit_call(self, action: str, body: Mapping[str, Any], retries: int) -> Any:
        self.release_results()
        for attempt in range(retries + 1):
            try:
                return self._call(action, body)
            except _Unavailable:
                if attempt == retries:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("not reached")

    def _job(self, st: Mapping[str, Any]) -> Job:
        cls = Session if st.get("session") else Job
        return cls(self, st["id"], st["type"], st)

    def _submit_with_uploads(
        self, type: str, spec: dict[str, Any], uploads: dict[int, str], key: str | None
    ) -> Job:
        spec["cleanup"] = sorted({self._cleanup_entry(r) for r in uploads.values()})
        try:
            return self.submit(type, spec, idempotency_key=key)
        except BaseException:
            for ref in uploads.values():
                try:
                    self.delete_upload(ref)
                except Exception:
                    pass
            raise

    def _result_spec(self) -> dict[str, Any]:
        if not self.shm:
            return {}
        return {"shm": True, "recycle": self._slab_pool().prefix}

    def submit_merge(
        self,
        config: Mapping[str, Any] | str | os.PathLike,
        *,
        out_dir: str | os.PathLike | None = None,
        dtype: str | None = None,
        allow_missing: bool = False,
        shard_size: int | None = None,
        force: bool = False,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a merge described mergekit-style.

        ``config`` is a dict (or the path of a YAML file) with
        ``merge_method``, ``base_model``, ``models: [{model, parameters}]`` and
        ``parameters``. ``base_model`` and each ``model`` is a path inside the
        daemon's data roots (relative paths are made absolute here), an
        ``"upload:NAME"``, or a state dict / ``nn.Module``, which is uploaded.
        With ``out_dir`` (inside the data roots) the daemon writes a checkpoint
        folder and :meth:`Job.result` returns its path; otherwise the result is
        the merged state dict.
        """
        if isinstance(config, (str, os.PathLike)):
            import yaml

            config = yaml.safe_load(Path(config).read_text())
        if not isinstance(config, Mapping):
            raise TypeError("config must be a mapping (or a YAML file path)")
        cfg = dict(config)
        uploads: dict[int, str] = {}
        try:
            if cfg.get("base_model") is not None:
                cfg["base_model"] = self._ref(cfg["base_model"], uploads, "base_model")
            models = []
            for i, m in enumerate(cfg.get("models") or []):
                m = dict(m) if isinstance(m, Mapping) and "model" in m else {"model": m}
                m["model"] = self._ref(m["model"], uploads, f"models[{i}].model")
                models.append(m)
            cfg["models"] = models
        except BaseException:
            for ref in uploads.values():
                try:
                    self.delete_upload(ref)
                except Exception:
                    pass
            raise
        spec: dict[str, Any] = {"config": cfg}
        if out_dir is not None:
            spec["out_dir"] = os.path.abspath(os.fspath(out_dir))
            if shard_size:
                spec["shard_size"] = int(shard_size)
            if force:
                spec["force"] = True
        else:
            spec["result"] = self._result_spec()
        if dtype:
            spec["dtype"] = dtype
        if allow_missing:
            spec["allow_missing"] = True
        return self._submit_with_uploads("merge", spec, uploads, idempotency_key)

    def _nps_spec(self, base: Any, uploads: dict[int, str], **kw: Any) -> dict[str, Any]:
        spec = {k: v for k, v in kw.items() if v is not None}
        spec["base"] = self._ref(base, uploads, "base")
        spec["result"] = self._result_spec()
        return spec

    def submit_nps_prune(
        self,
        base: Any,
        model: Any,
        *,
        keep: float = 0.1,
        subspaces: int = 8,
        weights: Sequence[float] | None = None,
        kind: str = "svd",
        lam: float = 1.0,
        output: str = "model",
        scope: str = "global",
        seed: int = 0,
        dtype: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """NPS-Pruning of one fine-tune: keep ``keep`` of the reweighted task
        vector; the result is θ₀ + λ·τ_NPS (``output="model"``) or τ_NPS."""
        uploads: dict[int, str] = {}
        spec = self._nps_spec(
            base,
            uploads,
            keep=keep,
            subspaces=subspaces,
            weights=list(weights) if weights else None,
            kind=kind,
            lam=lam,
            output=output,
            seed=seed,
            dtype=dtype,
            **{"global": scope == "global"},
        )
        spec["model"] = self._ref(model, uploads, "model")
        return self._submit_with_uploads("nps_prune", spec, uploads, idempotency_key)

    def submit_compress(
        self,
        base: Any,
        models: Sequence[Any],
        *,
        keep: float = 0.05,
        subspaces: int = 8,
        weights: Sequence[float] | None = None,
        kind: str = "svd",
        value_dtype: str | None = None,
        scope: str = "global",
        seed: int = 0,
        idempotency_key: str | None = None,
    ) -> Job:
        """NPS compression: each model's task vector as a bit mask plus kept
        values (``{i}:{name}:mask``, ``{i}:{name}:values``, in the base's
        dtype unless ``value_dtype``); see :func:`decompress`."""
        uploads: dict[int, str] = {}
        spec = self._nps_spec(
            base,
            uploads,
            keep=keep,
            subspaces=subspaces,
            weights=list(weights) if weights else None,
            kind=kind,
            value_dtype=value_dtype,
            seed=seed,
            **{"global": scope == "global"},
        )
        spec["models"] = [self._ref(m, uploads, f"models[{i}]") for i, m in enumerate(models)]
        return self._submit_with_uploads("compress", spec, uploads, idempotency_key)

    def nps_search(
        self,
        base: Any,
        model: Any,
        *,
        keep: float = 0.1,
        subspaces: int = 8,
        kind: str = "svd",
        optimizer: str = "cma",
        popsize: int | None = None,
        generations: int | None = None,
        lo: float = 0.0,
        hi: float = 2.0,
        x0: Sequence[float] | None = None,
        sigma0: float | None = None,
        strategy: str | None = None,
        schedule: Mapping[str, Any] | None = None,
        minimize: bool = False,
        lam: float = 1.0,
        output: str = "model",
        scope: str = "global",
        seed: int = 0,
        dtype: str | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """Start an NPS search session: the daemon decomposes τ and holds a
        CMA-ES (or DE) over the subspace weights; use :meth:`Session.ask` and
        :meth:`Session.tell`. Higher scores are better unless ``minimize``."""
        uploads: dict[int, str] = {}
        spec = self._nps_spec(
            base,
            uploads,
            keep=keep,
            subspaces=subspaces,
            kind=kind,
            optimizer=optimizer,
            popsize=popsize,
            generations=generations,
            lo=lo,
            hi=hi,
            x0=list(x0) if x0 is not None else None,
            sigma0=sigma0,
            strategy=strategy,
            schedule=dict(schedule) if schedule else None,
            minimize=minimize or None,
            lam=lam,
            output=output,
            seed=seed,
            dtype=dtype,
            **{"global": scope == "global"},
        )
        spec["model"] = self._ref(model, uploads, "model")
        job = self._submit_with_uploads("nps_search", spec, uploads, idempotency_key)
        assert isinstance(job, Session)
        return job

    def evolve(
        self,
        models: Sequence[Any],
        *,
        strategy: str = "evolver",
        generations: int = 15,
        schedule: Mapping[str, Any] | None = None,
        granularity: str = "element",
        block_size: int | None = None,
        force_index: bool = False,
        random_ref: bool = False,
        exclude: Sequence[str] = (),
        merge: str | None = None,
        base: Any = None,
        merge_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        idempotency_key: str | None = None,
    ) -> Session:
        """Start a weight-space evolution session over a population of
        fine-tuned models (Evolver, or DE/CADE with ``strategy="rand/1/bin"``
        and a cosine ``schedule``), run by the engine :class:`npsfuse.Evolver`
        drives (same seed, same run). The daemon holds the population; each
        candidate is a whole model to score on your dev set (higher is
        better). Evolver asks one offspring at a time, DE strategies a
        generation at once; the first ask evaluates the initial individuals.
        ``exclude`` names tensors (heads) each individual keeps. ``merge``
        (with ``base`` and ``merge_params``, :func:`npsfuse.merge`'s keywords)
        is Evolver "with merger": candidates are merges of the population.
        :meth:`Session.finish` makes the best individual (or the merge) the
        result."""
        uploads: dict[int, str] = {}
        spec: dict[str, Any] = {
            "models": [self._ref(m, uploads, f"models[{i}]") for i, m in enumerate(models)],
            "strategy": strategy,
            "generations": int(generations),
            "granularity": granularity,
            "force_index": bool(force_index),
            "random_ref": bool(random_ref),
            "exclude": list(exclude),
            "seed": int(seed),
            "result": self._result_spec(),
        }
        if schedule is not None:
            spec["schedule"] = dict(schedule)
        if block_size is not None:
            spec["block_size"] = int(block_size)
        if merge is not None:
            from . import _spec

            spec["merge"], spec["base"] = merge, self._ref(base, uploads, "base")
            spec["merge_params"] = _spec.payload(merge, len(models), dict(merge_params or {}))
        job = self._submit_with_uploads("evolve", spec, uploads, idempotency_key)
        assert isinstance(job, Session)
        return job

    def job(self, id: int) -> Job:
        """The job with this id."""
        st = self._call("status", {"id": int(id)})
        cls = Session if st.get("session") else Job
        return cls(self, st["id"], st["type"], st)

    def jobs(
        self,
        state: str | Sequence[str] | None = None,
        type: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs in the store, oldest first, optionally filtered by state and type."""
        body: dict[str, Any] = {}
        if state:
            body["state"] = [state] if isinstance(state, str) else list(state)
        if type:
            body["type"] = type
        if limit:
            body["limit"] = int(limit)
        out = []
        for st in self._call("jobs", body)["jobs"]:
            cls = Session if st.get("session") else Job
            out.append(cls(self, st["id"], st["type"], st))
        return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Job:
    """A job on the daemon. ``status()`` refreshes; ``result()`` waits and fetches."""

    def __init__(
        self, client: Client, id: int, type: str, status: Mapping[str, Any] | None = None
    ) -> None:
        self.client = client
        self.id = int(id)
        self.type = type
        self._status = dict(status or {})
        self._result: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.type} {self._status.get('state', '?')}>"

    def status(self) -> dict[str, Any]:
        """The job's current status (state, progress, error, result description, notes)."""
        self._status = self.client._call("status", {"id": self.id})
        return self._status

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``done``, ``failed`` or ``cancelled`` (refreshed)."""
        return self.status()["state"]

    def progress(self) -> dict[str, Any]:
        """``{done, total, unit, message}`` (refreshed)."""
        return self.status()["progress"]

    def watch(self, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
        """Statuses streamed by the daemon as the job progresses, until it is
        final (or its session ready) or ``timeout`` seconds pass."""
        for st in self.client._stream(
            "watch", {"id": self.id, "timeout": timeout}, timeout=timeout + 30
        ):
            self._status = st
            yield st

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job is final; returns its status. ``TimeoutError``
        if it is not final after ``timeout`` seconds (``None``: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            try:
                for st in self.watch(timeout=min(left, 3600.0)):
                    if st["state"] in _FINAL:
                        return st
            except _Unavailable:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.5)  # daemon restarting: try again
        st = self.status()
        if st["state"] in _FINAL:
            return st
        raise TimeoutError(f"job {self.id} is still {st['state']} after {timeout} s")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result: the merged (pruned, ...)
        state dict, or the ``Path`` of the checkpoint folder for merges with
        ``out_dir``. Raises ``JobFailedError`` / ``JobCancelledError``.

        Same host, the tensors are views of the shared-memory result file (no
        copy, writable). A result above 1 MiB lives in one of the client's
        slabs: it is handed back to the daemon for the next result only once
        none of its tensors (nor this ``Job``, which caches them) is alive."""
        if self._result is not None:
            return self._result
        st = self.wait(timeout)
        if st["state"] == "failed":
            raise JobFailedError(f"job {self.id} ({self.type}) failed: {st.get('error')}")
        if st["state"] == "cancelled":
            raise JobCancelledError(f"job {self.id} ({self.type}) was cancelled")
        res = st.get("result") or {}
        if res.get("kind") == "checkpoint":
            self._result = Path(res["out_dir"])
        elif res.get("kind") == "tensors":
            if res.get("released"):
                raise LookupError(
                    f"job {self.id}: its shared-memory result was already fetched and released"
                )
            c = self.client
            if res.get("shm") and c._unix and res.get("slab") and os.path.exists(res["path"]):
                # views of a slab this client maps; handed back once all are gone
                self._result = c._read_slab(res["path"], res["slab"], ("job", self.id))
            elif res.get("shm") and c._unix and os.path.exists(res["path"]):
                self._result = _read_ipc(res["path"])
                c._call("release", {"id": self.id})
            else:
                self._result = self.client._fetch({"job": self.id})
        else:
            self._result = res
        return self._result

    def cancel(self) -> bool:
        """Cancel the job; returns whether it ended cancelled (False if it had already finished)."""
        self._status = self.client._call("cancel", {"id": self.id})
        if self._status["state"] == "running" and self._status.get("cancel_requested"):
            self._status = self.wait(60)
        return self._status["state"] == "cancelled"

    def delete(self) -> None:
        """Forget a finished job and delete its result file on the daemon."""
        self.client._call("delete", {"id": self.id})


class Candidate:
    """One point a session asked to evaluate: ``params`` (NPS subspace
    weights; for evolve, ``[generation, individual]``)."""

    def __init__(
        self, session: Session, index: int, generation: int, params: Sequence[float]
    ) -> None:
        self.session = session
        self.index = index
        self.generation = generation
        self.params = list(params)

    def __repr__(self) -> str:
        return f"<Candidate {self.index} of generation {self.generation}>"

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The candidate's model, built by the daemon (θ₀ + λ·τ_NPS(w) for
        NPS searches, the offspring for evolve sessions)."""
        return self.session.candidate_state_dict(self.params)


class Session(Job):
    """An interactive job: the daemon holds the population; ask / tell here."""

    done: bool = False
    generation: int = 0

    def ask(self, timeout: float = 120.0) -> list[Candidate]:
        """The next candidates to evaluate (the same ones until :meth:`tell`).
        Waits up to ``timeout`` seconds for the session to be ready. Empty,
        with ``done`` set, once the planned generations are over."""
        r = self.client._call("ask", {"id": self.id, "timeout": timeout}, timeout=timeout + 30)
        self.done = bool(r.get("done"))
        self.generation = int(r.get("generation", 0))
        return [
            Candidate(self, i, self.generation, x) for i, x in enumerate(r.get("candidates") or [])
        ]

    def tell(self, scores: Sequence[float | None]) -> dict[str, Any]:
        """One score per asked candidate (higher is better; ``None``/NaN for a
        failed evaluation). Returns the best so far ``{x, f, generation, done}``."""
        vals = [None if s is None or not np.isfinite(float(s)) else float(s) for s in scores]
        r = self.client._call("tell", {"id": self.id, "scores": vals})
        self.done = bool(r.get("done"))
        self.generation = int(r.get("generation", 0))
        return r

    def best(self) -> dict[str, Any]:
        """The best candidate so far: ``{x, f, generation, done}``."""
        return self.client._call("best", {"id": self.id})

    def candidate_state_dict(self, params: Sequence[float]) -> dict[str, torch.Tensor]:
        """The tensors of the candidate with these parameters."""
        params = [float(x) for x in params]
        c = self.client
        if c.shm:
            c.release_results()
            body = {"id": self.id, "params": params, "recycle": c._slab_pool().prefix}
            return c._shm_result(c._call("candidate", body, timeout=600))
        return self.client._fetch({"job": self.id, "candidate": params})

    def finish(self) -> Session:
        """End the search: the daemon writes the best candidate's tensors as
        the job's result (:meth:`result`)."""
        self._status = self.client._call("finish", {"id": self.id}, timeout=600)
        return self
