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

    search = client.nps_search(base_sd, ft_sd, density=0.1, generations=20)
    while not search.done:   # client.evolve([ft_a, ft_b, ft_c]) works the same way
        cands = search.ask()
        search.tell([evaluate(c.state_dict()) for c in cands])
    best = search.finish().result()

Transport: the daemon speaks Arrow Flight over gRPC, and tensor sets have one
format (:data:`SCHEMA`, Arrow IPC). On the same host (a ``unix://`` address)
tensors go through shared memory: the client writes an Arrow IPC file into the
daemon's shared-memory folder and the daemon maps it; results come back the
same way and are mapped here, so tensor bytes are copied once each way. Over
TCP they travel as the same record batches in a Flight stream, and the daemon
stores an upload as the same IPC file.

Every call carries the bearer token (``token=`` or ``$NPSFUSE_TOKEN``); the
daemon requires one on TCP. Errors from the daemon become Python exceptions:
``ValueError`` (bad request), ``PermissionError`` (path outside the data roots,
bad token), ``LookupError`` (unknown job or upload), ``ConnectionError``
(daemon unreachable or shutting down), ``NotImplementedError``,
``JobFailedError`` / ``JobCancelledError`` from :meth:`Job.result`.
"""

from __future__ import annotations

from ._client import Client
from ._connection import default_address
from ._errors import AuthenticationError, DaemonError, JobCancelledError, JobFailedError
from ._jobs import Candidate, Job, Session
from ._tensorset import SCHEMA, decompress

__all__ = [
    "SCHEMA",
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
