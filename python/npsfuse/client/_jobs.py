"""Jobs and sessions on the daemon, as the client hands them out."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import JobCancelledError, JobFailedError, _Unavailable
from ._tensorset import read_file

_FINAL = ("done", "failed", "cancelled")


def job_of(client: Any, st: Mapping[str, Any]) -> Job:
    """The :class:`Job` (or :class:`Session`) a status describes."""
    cls = Session if st.get("session") else Job
    return cls(client, st["id"], st["type"], st)


class Job:
    """A job on the daemon. ``status()`` refreshes; ``result()`` waits and fetches."""

    def __init__(
        self, client: Any, id: int, type: str, status: Mapping[str, Any] | None = None
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
                self._result = read_file(res["path"])
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
        body, ticket = {"id": self.id, "params": params}, {"job": self.id, "candidate": params}
        return self.client._download("candidate", body, ticket, timeout=600)

    def finish(self) -> Session:
        """End the search: the daemon writes the best candidate's tensors as
        the job's result (:meth:`result`)."""
        self._status = self.client._call("finish", {"id": self.id}, timeout=600)
        return self
