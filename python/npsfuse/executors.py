"""Evaluate a search's candidates on a Ray cluster (``pip install 'npsfuse[ray]'``).

Pass ``executor=`` to :func:`npsfuse.nps.prune`, :func:`npsfuse.nps.fuse`,
:func:`npsfuse.search_merge` or :meth:`npsfuse.Evolver.run`:

* ``None`` (default): evaluate in the calling process, one candidate at a time;
* ``"ray"``: start one actor per CPU of the Ray cluster (at most 8; ``ray.init()``
  is called when Ray is not initialised) for this search, and kill them after;
* :class:`RayExecutor` (``RayExecutor(4, actor_options={"num_gpus": 1})``):
  a pool kept between searches;
* a list of actors from :func:`new_worker`: actors you placed yourself.

Each worker holds the base and the fine-tuned models (or task vectors, or the
Evolver's population) once and receives only a candidate's small
description; it builds the candidate with the npsfuse kernels and runs your
``evaluate`` there, so ``evaluate`` must be picklable (a module-level
function or a closure over picklable data). A seed gives the same history
and best candidate as in-process; a worker that dies has its candidate
re-run elsewhere. :func:`drive_session` fans a daemon session's candidates
out the same way. The design and the Evolver's replacement rules are in
``npsfuse._executor``.
"""

from __future__ import annotations

from ._executor import RayExecutor, drive_session, new_worker

__all__ = ["RayExecutor", "drive_session", "new_worker"]
