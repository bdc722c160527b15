"""The pruning study: one task vector at a time, accuracy against storage.

For every task and keep ratio k, the fine-tune's task vector τ is slimmed
four ways and θ₀ + τ' is scored on the task's test set with its head:

* NPS-Pruning (searched on validation, ``nps.prune``),
* magnitude top-k (``magnitude_prune``, the start point of NPS's search),
* DARE (random drop and rescale, ``dare_linear``),
* low-rank truncation of every matrix of τ (TSV's per-layer truncation),
  with the rank chosen so that it takes the same storage as the others.

Storage is measured in bits per parameter: the mask + values format is
written with :mod:`npsfuse.compress` and its own report is read back
(values in ``value_bits`` floats); a rank-r truncation of an m×n matrix
stores r·(m+n) values; 1-D tensors are stored densely. Every model scored
is the one that format stores (values rounded to ``value_bits``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import npsfuse
import searches
import torch
from methods import task_vector

if TYPE_CHECKING:
    from study import Study

StateDict = dict[str, torch.Tensor]
METHODS = ("NPS", "magnitude top-k", "DARE", "low-rank (TSV-style)")


def value_dtype(bits: int) -> torch.dtype:
    """The float type of stored values."""
    return torch.float16 if bits == 16 else torch.float32


def rounded(tau: StateDict, bits: int) -> StateDict:
    """τ as stored: every value rounded to ``bits``-bit floats."""
    dt = value_dtype(bits)
    return {k: v.to(dt).float() for k, v in tau.items()}


def mask_bits(theta0: StateDict, tau: StateDict, bits: int, folder: Path) -> float:
    """Bits per parameter of ``tau`` in npsfuse.compress's mask + values format."""
    dt = value_dtype(bits)
    base = {k: v.to(dt) for k, v in theta0.items()}
    path = folder / "tau.safetensors"
    npsfuse.compress.save(path, base, {"t": {k: v.to(dt) for k, v in tau.items()}})
    return float(npsfuse.compress.report(path)["tasks"]["t"]["bits_per_parameter"])


class LowRank:
    """The SVD of every matrix of one task vector, truncated at a storage budget."""

    def __init__(self, tau: StateDict) -> None:
        self.tau = tau
        self.svd = {k: torch.linalg.svd(v.double(), full_matrices=False)
                    for k, v in tau.items() if v.dim() == 2}
        self.n = sum(v.numel() for v in tau.values())

    def ranks(self, bits_per_param: float, bits: int) -> dict[str, int]:
        """Per matrix: the rank whose factors fit ``bits_per_param`` overall.

        1-D tensors take ``bits`` per entry; the rest of the budget is shared
        among the matrices in proportion to their size.
        """
        dense = bits * sum(v.numel() for k, v in self.tau.items() if k not in self.svd)
        left = max(0.0, bits_per_param * self.n - dense)
        sizes = {k: self.tau[k].numel() for k in self.svd}
        total = sum(sizes.values())
        out = {}
        for k in self.svd:
            m, n = self.tau[k].shape
            r = int(left * sizes[k] / total // (bits * (m + n)))
            out[k] = max(0, min(r, min(m, n)))
        return out

    def truncated(self, ranks: dict[str, int], bits: int) -> tuple[StateDict, float]:
        """τ with each matrix cut to its rank (factors rounded to ``bits``),
        and the bits per parameter it takes."""
        dt = value_dtype(bits)
        out: StateDict = {}
        stored = 0
        for k, v in self.tau.items():
            if k not in self.svd:
                out[k] = v.to(dt).float()
                stored += v.numel()
                continue
            u, s, vh = self.svd[k]
            r = ranks[k]
            a = (u[:, :r] * s[:r]).to(dt).float()
            b = vh[:r].to(dt).float()
            out[k] = a @ b
            stored += r * (v.shape[0] + v.shape[1])
        return out, bits * stored / self.n


def run(st: Study) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per task, method and keep ratio: test accuracy and bits per parameter.

    Returns
    -------
    dict
        ``out[task][method][str(keep)] = {"acc": …, "bits": …}``.
    """
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    c = st.cfg
    with tempfile.TemporaryDirectory(prefix="npsfuse-pruning-") as tmp:
        for i, d in enumerate(st.data):
            tau = task_vector(st.theta0, st.finetuned[i])
            low = LowRank(tau)
            res: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
            for keep in c.keeps:
                for meth, t in slimmed(st, i, keep).items():
                    bits = mask_bits(st.theta0, t, c.value_bits, Path(tmp))
                    res[meth][str(keep)] = {"acc": score(st, i, t), "bits": bits}
                budget = res["magnitude top-k"][str(keep)]["bits"]
                t, bits = low.truncated(low.ranks(budget, c.value_bits), c.value_bits)
                res["low-rank (TSV-style)"][str(keep)] = {"acc": score(st, i, t), "bits": bits}
                st.meter.add("merge", 4 * st.n_params)
            out[d.task.name] = res
            st.log(f"pruning [{i + 1}/{len(st.data)}] {d.task.name}")
    return out


def slimmed(st: Study, i: int, keep: float) -> dict[str, StateDict]:
    """Task ``i``'s τ pruned to ``keep`` by NPS, magnitude top-k and DARE."""
    th0, th = st.theta0, st.finetuned[i]
    out = {}
    try:
        out["NPS"] = searches.nps_prune(st, i, keep).task_vector()
    except Exception as exc:  # noqa: BLE001 - a failing search must not sink the study
        st.failed[f"NPS-Pruning {st.data[i].task.name} keep {keep}"] = repr(exc)
    out["magnitude top-k"] = task_vector(th0, npsfuse.merge(
        th0, [th], "magnitude_prune", density=keep, scope=st.cfg.topk_scope))
    out["DARE"] = task_vector(th0, npsfuse.merge(th0, [th], "dare_linear", density=keep,
                                                 seed=st.seed))
    return out


def score(st: Study, i: int, tau: StateDict) -> float:
    """Test accuracy of θ₀ + τ (as stored) on task ``i``."""
    t = rounded(tau, st.cfg.value_bits)
    theta = {k: st.theta0[k] + t[k] if k in t else st.theta0[k] for k in st.theta0}
    return st.ev.task_acc(theta, i, "test")


def retained(pr: dict[str, Any], individual: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per method and keep: mean over tasks of accuracy retained (pruned /
    individual) and of bits per parameter, from one seed's pruning results."""
    out: dict[str, dict[str, Any]] = {}
    for meth in METHODS:
        per_keep: dict[str, Any] = {}
        keys = {k for t in pr.values() for k in t.get(meth, {})}
        for k in sorted(keys, key=float):
            rows = [(pr[t][meth][k], individual[t]) for t in pr if k in pr[t].get(meth, {})]
            if rows:
                per_keep[k] = {
                    "retained": sum(r["acc"] / max(ind, 1e-9) for r, ind in rows) / len(rows),
                    "bits": sum(r["bits"] for r, _ in rows) / len(rows)}
        out[meth] = per_keep
    return out
