"""NPS-Pruning: slim a fine-tuned model's task vector by searched subspace weights.

NPS-Pruning (Du, Fang, Li et al., 2025; METHODS.md, "NPS-Pruning") splits
every tensor's task vector τ = θ_ft − θ₀ into M subspaces q_m with τ = Σ q_m
(SVD rank bands plus the residual for matrices, magnitude bands for 1-D
tensors), reweights them, τ' = Σ_m w_m q_m, keeps the top ``density``
fraction of |τ'| over the whole model, and searches w ∈ [lo, hi]^M with CMA-ES or
differential evolution to maximise the caller's validation metric of
θ₀ + τ_NPS. The decomposition, the candidate build and θ₀ + λτ run in the Go
kernels (``gocore/nps``); the search is the engine's search session
(``gocore/nps.Session`` over the optimizers of ``gocore/search``), the same
one the daemon's ``nps_search`` drives.

**The start point is magnitude pruning.** With all weights 1, τ' = τ, so the
first candidate evaluated is plain global magnitude top-k of τ. The search
returns the best candidate it evaluated, the start included, so on the
validation metric NPS is never worse than magnitude top-k at the same
``density`` (:attr:`NPSResult.start_score` holds that baseline's score).

Entry points: :func:`prune` (the whole search with a callback), :class:`Search`
(ask/tell for evaluation inside a training loop, resumable), :func:`transfer`
(θ₀ + λ·τ_NPS), :func:`fuse` (θ₀ + Σ λ_i τ_NPS,i, λ searched on request).
Compact storage of several results is :mod:`npsfuse.compress`.

Modules: ``_engine`` (the Go door: decomposition, search session, apply),
``_search`` (:class:`Search`, :func:`prune`), ``_result`` (:class:`NPSResult`,
:func:`fingerprint`), ``_fuse`` (:func:`transfer`, :func:`fuse`).
"""

from __future__ import annotations

from ._fuse import FusionResult, fuse, transfer
from ._result import FINGERPRINT_SAMPLES, NPSResult, fingerprint
from ._search import Evaluate, Search, prune

__all__ = ["FINGERPRINT_SAMPLES", "Evaluate", "FusionResult", "NPSResult", "Search", "fingerprint",
           "fuse", "prune", "transfer"]
