"""Shared-memory files a client keeps mapped and reuses ("slabs")."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ._tensorset import file_size, fill_file, write_file


def unlink(path: str) -> None:
    """Remove a file; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Slabs:
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
        size = file_size(sd)
        path = os.path.join(self.uploads, f"{name}.arrow")
        with self.lock:  # held while filling: _make_room must not unmap it
            slab = self._claim(size, path)
            if slab is not None:
                try:
                    fill_file(self._mapping(slab), sd)
                except BaseException:
                    unlink(path)
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
        self._make_room()
        self.count += 1
        slab = f"{self.prefix}-{self.count}"
        fd, tmp = tempfile.mkstemp(prefix=f".{slab}.tmp-", dir=self.uploads)
        try:
            with pa.OSFile(tmp, "wb") as f:
                write_file(f, sd)
            if os.fstat(fd).st_size != size:
                raise RuntimeError(f"upload {path}: wrote {os.fstat(fd).st_size} of {size} bytes")
            entry: list[Any] = [None, size, os.fstat(fd).st_ino, None]
            dup = os.dup(fd)
            entry[3] = threading.Thread(target=_map_into, args=(entry, dup, size), daemon=True)
            entry[3].start()
            os.rename(tmp, path)
        except BaseException:
            unlink(tmp)
            raise
        finally:
            os.close(fd)
        self.maps[slab] = entry
        return slab

    def _mapping(self, slab: str) -> mmap.mmap:
        entry = _mapped(self.maps[slab])
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
            self._make_room()
            fd = os.open(path, os.O_RDWR)
            try:
                mm = _map(fd, st.st_size)
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
        entry = _mapped(self.maps.pop(slab))
        if entry[0] is not None:
            with contextlib.suppress(BufferError):  # views still exported: they keep it
                entry[0].close()

    def _make_room(self) -> None:
        """With :attr:`MAX` slabs mapped, unmap one: a free one (deleting its
        file) if there is one, else the oldest not leased (its file lives on
        until the daemon collects it)."""
        idle = [s for s in self.maps if not self.holds.get(s)]
        if len(self.maps) < self.MAX or not idle:
            return
        victim = idle[0]
        for slab in idle:
            free = os.path.join(self.free, f"{slab}.arrow")
            if os.path.exists(free):
                unlink(free)
                victim = slab
                break
        self._forget(victim)


def _mapped(entry: list[Any]) -> list[Any]:
    """``entry`` once its mapper thread (if any) is done."""
    if entry[3] is not None:
        entry[3].join()
        entry[3] = None
    return entry


def _map_into(entry: list[Any], fd: int, size: int) -> None:
    """Map a new slab (pre-faulted) into ``entry[0]``; runs on a thread."""
    try:
        entry[0] = _map(fd, size)
    except OSError:
        entry[0] = None
    finally:
        os.close(fd)


def _map(fd: int, size: int) -> mmap.mmap:
    """A shared read-write mapping of ``size`` bytes of ``fd``, pre-faulted."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1
