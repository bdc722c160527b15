"""NeuroMerging: npsfuse's Go engine against a PyTorch implementation that
follows the authors' code, in the same process.

Two cases, T = 3 fine-tunes each, METHODS.md's defaults (mask_rate 0.9 with
a global top-k trim, λ₁ = 0, λ₂ = 1/(1 − max σ_t)):

* one 4096 × 4096 layer;
* a 110M-parameter model with BERT-base shapes (embeddings 30522 × 768, 12
  layers of attention and MLP matrices, biases and LayerNorms).

The PyTorch side is the authors' ``neuro_kernel`` (NeuroMerging.py in
github.com/ZzzitaoFang/NeuroMerging) written out in our words with the same
operations: per weight matrix, a batched ``torch.linalg.svd`` of the
(neurons, T, n) stack of orthogonal parts, then Python loops over the
neurons for the TIES of the coordinates and the representative vectors;
``ties_kernel`` for 1-D tensors. The authors leave the trim step to the
user ("TBD"): here it is an exact global top-k with ties broken by lower
index (kthvalue plus a cumulative count of ties), σ_t and λ₂ as METHODS.md
defines them. The authors zero the parallel part ("Type2"), i.e. λ₁ = 0,
which is also the default here.

Reported per case: best-of time for ``npsfuse.merge`` (end to end, output
allocation included), the PyTorch time (one run in float32, as the authors
run it: it takes minutes), the speedup (goal ≥ 20×), the largest
|npsfuse − PyTorch| over every entry against the float32 run and against
the same code in float64 (goal ≤ 1e-5; see the notes on float32's error)
and both λ₂. Figures go to ``bench/results/bench_neuro.{md,json}``.

Run: ``PYTHONPATH=python .venv/bin/python bench/bench_neuro.py`` (about 5 min
on 2 cores; ``--skip-model`` runs the layer only).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import torch
from _common import Report, import_npsfuse, measure, triad

npsfuse = import_npsfuse()

StateDict = dict[str, torch.Tensor]
T_MODELS = 3
MASK_RATE = 0.9
GOAL_SPEEDUP = 20.0
GOAL_DIFF = 1e-5


def bert_like_shapes(layers: int = 12, hidden: int = 768, ffn: int = 3072,
                     vocab: int = 30522, positions: int = 512) -> dict[str, tuple[int, ...]]:
    """BERT-base's tensor names and shapes (PyTorch (out, in) layout): 110M."""
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.position_embeddings.weight": (positions, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"):
            s[p + n + ".weight"] = (hidden, hidden)
            s[p + n + ".bias"] = (hidden,)
        s[p + "attention.output.LayerNorm.weight"] = (hidden,)
        s[p + "attention.output.LayerNorm.bias"] = (hidden,)
        s[p + "intermediate.dense.weight"] = (ffn, hidden)
        s[p + "intermediate.dense.bias"] = (ffn,)
        s[p + "output.dense.weight"] = (hidden, ffn)
        s[p + "output.dense.bias"] = (hidden,)
        s[p + "output.LayerNorm.weight"] = (hidden,)
        s[p + "output.LayerNorm.bias"] = (hidden,)
    s["pooler.dense.weight"] = (hidden, hidden)
    s["pooler.dense.bias"] = (hidden,)
    return s


def make_family(shapes: dict[str, tuple[int, ...]], n_models: int,
                seed: int = 0) -> tuple[StateDict, list[StateDict]]:
    """Base entries N(0, 0.05²) (LayerNorm weights around 1); fine-tunes add
    dense N(0, 0.002²) task vectors."""
    g = torch.Generator().manual_seed(seed)
    base: StateDict = {}
    for k, s in shapes.items():
        b = 0.05 * torch.randn(s, generator=g)
        if k.endswith("LayerNorm.weight"):
            b += 1
        base[k] = b
    models = [{k: b + 0.002 * torch.randn(b.shape, generator=g) for k, b in base.items()}
              for _ in range(n_models)]
    return base, models


# ------------------------------------------------ PyTorch, authors' code --


def exact_topk_masks(taus: Sequence[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Per model, the mask of its top ⌊keep·N⌋ |τ| over all tensors together
    (flattened in order), ties broken by lower index."""
    masks = []
    for tau in taus:
        a = tau.abs()
        n = a.numel()
        k = int(keep * n)
        if k >= n:
            masks.append(torch.ones(n, dtype=torch.bool))
            continue
        if k == 0:
            masks.append(torch.zeros(n, dtype=torch.bool))
            continue
        thr = a.kthvalue(n - k + 1).values
        gt = a > thr
        eq = a == thr
        need = k - int(gt.sum())
        masks.append(gt | (eq & (torch.cumsum(eq, 0) <= need)))
    return masks


def inner_ties(scales: torch.Tensor) -> torch.Tensor:
    """The authors' TIES over dim 0 of (tasks, b): elect the sign of the sum
    (zeros take the sign of the sum of signs), mean of the nonzero agreeing."""
    sign = torch.sign(scales.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign.unsqueeze(0) > 0, scales > 0, scales < 0)
    kept = scales * keep
    count = (kept != 0).sum(dim=0).float()
    return kept.sum(dim=0) / torch.clamp(count, min=1)


def neuro_kernel(w: torch.Tensor, taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """The authors' neuro_kernel for a (neurons, n) matrix and the trimmed
    task rows; returns Δ⊥ (the parallel part is zeroed, as in their code)."""
    w_ = w.unsqueeze(0)  # (1, m, n)
    ft = torch.stack(list(taus), dim=0)  # (k, m, n)
    scale = (ft * w_).sum(dim=2) / (w_ * w_).sum(dim=2)  # (k, m)
    perp = (ft - scale.unsqueeze(2) * w_).permute(1, 0, 2)  # (m, k, n)
    _, S, VT = torch.linalg.svd(perp, full_matrices=False)
    s2 = S**2
    cum = torch.cumsum(s2, dim=1) / torch.sum(s2, dim=1, keepdim=True)
    rank = torch.minimum((cum < 1).sum(dim=1) + 1, torch.tensor(VT.shape[-2]))
    V = VT.permute(0, 2, 1)  # (m, n, r)
    coords = torch.matmul(perp, V)  # (m, k, r)
    merged = torch.stack([inner_ties(coords[i]) for i in range(coords.size(0))])
    return torch.stack([(merged[i, : rank[i]] * V[i, :, : rank[i]]).sum(dim=1)
                        for i in range(merged.size(0))])


def torch_neuromerging(base: StateDict, models: Sequence[StateDict], mask_rate: float,
                       dtype: torch.dtype = torch.float32) -> tuple[StateDict, float]:
    """NeuroMerging with the authors' kernels; returns the merge and λ₂.

    Task vectors and the trim are float32 (as npsfuse forms them); the
    kernels run in ``dtype``: float32 as the authors run them, float64 for
    a reference free of float32's SVD error.
    """
    names = list(base)
    taus = [torch.cat([(m[k] - base[k]).flatten() for k in names]) for m in models]
    masks = exact_topk_masks(taus, 1 - mask_rate)
    sigma = []
    for tau, mask in zip(taus, masks, strict=True):
        total = float(tau.abs().double().sum())
        kept = float((tau.abs() * mask).double().sum())
        sigma.append((total - kept) / total)
    lam2 = 1 / (1 - max(sigma))
    trimmed = [torch.where(mask, tau, 0.0).to(dtype) for tau, mask in zip(taus, masks, strict=True)]
    del taus, masks
    out: StateDict = {}
    off = 0
    for k in names:
        b = base[k].to(dtype)
        n = b.numel()
        parts = [t[off : off + n].view(b.shape) for t in trimmed]
        off += n
        if b.dim() >= 2:
            w = b.reshape(b.shape[0], -1)
            rows = [p.reshape(b.shape[0], -1) for p in parts]
            out[k] = (w + lam2 * neuro_kernel(w, rows)).view(b.shape)
        else:
            out[k] = b + lam2 * inner_ties(torch.stack(parts))
    return out, lam2


# ------------------------------------------------------------------ main --


def run_case(name: str, shapes: dict[str, tuple[int, ...]], repeat: int, triad_gbps: float,
             report: Report) -> None:
    base, models = make_family(shapes, T_MODELS)
    n_params = sum(b.numel() for b in base.values())
    print(f"{name}: {n_params / 1e6:.1f}M parameters, T = {T_MODELS}", flush=True)
    # lam2=None: the automatic λ₂ that torch_neuromerging computes too.
    timing = measure(lambda: npsfuse.merge(base, models, "neuro", lam2=None), repeat=repeat,
                     warmup=1)
    got = npsfuse.merge(base, models, "neuro", lam2=None)
    print(f"  npsfuse best {timing.best:.3f} s (median {timing.median:.3f} s); "
          f"λ₂ = {got.report['lam2']:.6f}", flush=True)
    t0 = time.perf_counter()
    ref, lam2 = torch_neuromerging(base, models, MASK_RATE)
    t_torch = time.perf_counter() - t0
    speedup = t_torch / timing.best
    print(f"  PyTorch (authors' code, float32) {t_torch:.2f} s; speedup {speedup:.1f}×", flush=True)
    ref64, _ = torch_neuromerging(base, models, MASK_RATE, torch.float64)

    def maxdiff(a: StateDict, b: StateDict) -> float:
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in b)

    d32, d64, d_ref = maxdiff(got, ref), maxdiff(got, ref64), maxdiff(ref, ref64)
    moved = (T_MODELS + 2) * 4 * n_params
    print(f"  max |Δ|: npsfuse − PyTorch32 {d32:.2e}, npsfuse − PyTorch64 {d64:.2e}, "
          f"PyTorch32 − PyTorch64 {d_ref:.2e}; λ₂ {lam2:.6f}", flush=True)
    report.rows.append([
        name, n_params, T_MODELS, timing.best, timing.median, t_torch, speedup,
        "yes" if speedup >= GOAL_SPEEDUP else "no", d32, d64, d_ref,
        "yes" if d64 <= GOAL_DIFF else "no",
        got.report["lam2"], lam2, moved / timing.best / 1e9, moved / timing.best / 1e9 / triad_gbps,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-model", action="store_true", help="only the 4096 × 4096 layer")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    npsfuse.set_num_threads(0)
    tr = triad()
    print(f"triad: {tr.gbps_best:.2f} GB/s (best), {tr.gbps_median:.2f} GB/s (median)", flush=True)
    report = Report(
        name="bench_neuro",
        title="NeuroMerging: npsfuse vs a PyTorch implementation of the authors' code",
        columns=["case", "parameters", "T", "npsfuse best (s)", "npsfuse median (s)",
                 "PyTorch (s)", "speedup (×)", "≥ 20×", "max |Δ| vs PyTorch32",
                 "max |Δ| vs PyTorch64", "PyTorch32 vs PyTorch64", "≤ 1e-5 (vs 64)",
                 "λ₂ npsfuse", "λ₂ PyTorch", "npsfuse GB/s", "of triad"],
        baselines={"triad GB/s (best)": tr.gbps_best, "triad GB/s (median)": tr.gbps_median,
                   "torch threads": torch.get_num_threads(),
                   "npsfuse threads": npsfuse.get_num_threads()},
        notes=[
            "T = 3 fine-tunes; mask_rate 0.9, global top-k trim, λ₁ = 0, automatic λ₂ "
            "(npsfuse.merge defaults for 'neuro').",
            "PyTorch: the authors' neuro_kernel (batched torch.linalg.svd over the neurons, "
            "Python loops over neurons for TIES and the representative vectors) and ties_kernel "
            "for 1-D tensors; the trim (left 'TBD' by the authors) is an exact global top-k "
            "with ties by index; one run.",
            "npsfuse: npsfuse.merge end to end (state-dict checks, output allocation with its "
            "page faults, the Go merge); best of the timed runs after one warm-up.",
            "GB/s: (T + 2)·4 bytes per parameter (inputs read once, output written once) over "
            "npsfuse's best time; NeuroMerging reads its inputs more than once (trim, merge), "
            "so this is an effective figure.",
            "Data: base N(0, 0.05²) (LayerNorm weights 1 + N(0, 0.05²)), task vectors "
            "N(0, 0.002²).",
            "Accuracy: the timed PyTorch run computes the SVDs in float32, as the authors do; "
            "the same code in float64 (same float32 trim) is the reference. Random task "
            "vectors give each neuron nearly equal singular values (relative gaps ~1e-3), "
            "where float32 singular vectors rotate by ~ε₃₂/gap and TIES in that basis moves "
            "by ~1e-5: the 'PyTorch32 vs PyTorch64' column is that error of the float32 "
            "code itself (larger where a near-tie flips a TIES election). npsfuse "
            "eigendecomposes the float64 Gram matrix of each neuron (from exact float32 "
            "products) and agrees with the float64 reference.",
        ],
    )
    run_case("one 4096 × 4096 layer", {"layer.weight": (4096, 4096)}, args.repeat, tr.gbps_best,
             report)
    if not args.skip_model:
        run_case("BERT-base shapes (110M)", bert_like_shapes(), args.repeat, tr.gbps_best,
                 report)
    md, js = report.write()
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
