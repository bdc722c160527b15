"""Tensor transfer: uploads and downloads, through shared memory on the
same host or as Flight streams, in the one tensor-set format."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow.flight as flight
import torch

from . import _tensorset as ts
from ._connection import Connection
from ._errors import DaemonError, translated
from ._mergekit import model_path
from ._slabs import Slabs, unlink


class Transfer(Connection):
    """Moves state dicts to and from the daemon (the client's tensor half).

    Same host (a Unix socket and the daemon's shared-memory folder writable
    here), tensors go as IPC tensor files in shared memory, written into and
    read from slabs this client keeps mapped; otherwise as Flight streams
    (``DoPut`` / ``DoGet``)."""

    _slabs: Slabs | None = None

    def close(self) -> None:
        """Hand back the shared-memory results no longer in use, and close
        the connection."""
        with contextlib.suppress(Exception):
            self.release_results()
        super().close()

    def _slab_pool(self) -> Slabs:
        if self._slabs is None:
            self._slabs = Slabs(self.info()["shm_dir"])
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
        out, base = ts.slab_tensors(pool.adopt(slab, path))
        pool.lease(slab, owner, base)
        return out

    def _result_spec(self) -> dict[str, Any]:
        """A spec's ``result``: into this client's slabs when on the same host."""
        return {"shm": True, "recycle": self._slab_pool().prefix} if self.shm else {}

    def upload(self, tensors: Any, name: str | None = None) -> str:
        """Send a state dict (or ``nn.Module``) to the daemon; returns ``"upload:NAME"``.

        Same host: written as an Arrow IPC file into the daemon's shared-memory
        folder (one parallel copy). Otherwise: Flight ``DoPut``, big tensors
        in pieces below the daemon's message limit; the daemon checks every
        message, stores the upload as the same IPC file and fsyncs it before
        answering. Uploads referenced by a job the client submits are deleted
        by the daemon when that job ends.
        """
        sd = ts.state_dict(tensors)
        name = name or f"u-{uuid.uuid4().hex}"
        if self.shm:
            pool = self._slab_pool()
            if os.path.exists(os.path.join(pool.uploads, f"{name}.arrow")):
                raise FileExistsError(f"upload {name!r} already exists")
            self._slab_of[name] = pool.write(name, sd)  # upload name → slab name
            return f"upload:{name}"
        cmd = json.dumps({"upload": name, "tensors": ts.manifest(sd)}).encode()
        chunk = int(self.info().get("chunk_bytes", 8 << 20))
        with translated():
            writer, reader = self._fl.do_put(
                flight.FlightDescriptor.for_command(cmd),
                ts.SCHEMA,
                self._opts(max(self.timeout, 600)),
            )
            with writer:
                for b in ts.stream_batches(sd, chunk):
                    writer.write_batch(b)
                writer.done_writing()
                reader.read()
        return f"upload:{name}"

    def delete_upload(self, ref: str) -> None:
        """Delete an upload (``"upload:NAME"`` or ``NAME``); a shared-memory
        one this client wrote is kept for reuse by its next upload."""
        name = ref.removeprefix("upload:")
        slab = self._slab_of.pop(name, None)
        self._call("delete_upload", {"name": name} | ({} if slab is None else {"recycle_as": slab}))

    def _cleanup_entry(self, ref: str) -> str:
        """The cleanup entry of an upload a job consumes: recycle its slab
        (the daemon moves it to ``free/`` when the job ends) or delete it."""
        name = ref.removeprefix("upload:")
        slab = self._slab_of.pop(name, None)
        return ref if slab is None else f"recycle:{name}:{slab}"  # reusable once moved back

    def _fetch(self, ticket: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors a ``DoGet`` ticket names, copied out of the stream."""
        with translated():
            reader = self._fl.do_get(
                flight.Ticket(json.dumps(ticket).encode()), self._opts(max(self.timeout, 600))
            )
            return ts.stream_tensors(chunk.data for chunk in reader)

    def download_upload(self, ref: str) -> dict[str, torch.Tensor]:
        """The tensors of an upload (shared memory when possible, else ``DoGet``)."""
        name = ref.removeprefix("upload:")
        return self._download("export_upload", {"name": name}, {"upload": name})

    def _download(
        self,
        action: str,
        body: Mapping[str, Any],
        ticket: Mapping[str, Any],
        timeout: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors the daemon writes into this client's slabs on ``action``
        (same host), else streams for the ``DoGet`` ``ticket``."""
        if not self.shm:
            return self._fetch(ticket)
        self.release_results()
        body = {**body, "recycle": self._slab_pool().prefix}
        return self._shm_result(self._call(action, body, timeout=timeout))

    def _shm_result(self, res: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Tensors of a shared-memory file from export_upload / candidate:
        a slab's views (handed back once unused), else a private mapping of
        a file deleted at once."""
        path = res["path"]
        if res.get("slab"):
            try:
                return self._read_slab(path, res["slab"], ("file", path))
            except BaseException:
                unlink(path)
                raise
        try:
            return ts.read_file(path)
        finally:
            unlink(path)

    def _ref(self, model: Any, uploads: dict[int, str], what: str) -> str:
        """A model reference for a spec: a path (absolute), ``upload:NAME``, or
        tensors (uploaded once per object)."""
        if isinstance(model, (str, os.PathLike)):
            s = os.fspath(model)
            return s if s.startswith("upload:") else model_path(s)
        if isinstance(model, (Mapping, torch.nn.Module)):
            key = id(model)
            if key not in uploads:
                uploads[key] = self.upload(model)
            return uploads[key]
        raise TypeError(
            f"{what} is a {type(model).__name__}: give a path, 'upload:NAME' or a state dict"
        )

    def _drop_uploads(self, uploads: Mapping[int, str]) -> None:
        """Delete uploads made for a spec that was not submitted (best effort)."""
        for ref in uploads.values():
            with contextlib.suppress(Exception):
                self.delete_upload(ref)
