"""NPS-Pruning kernels: randomized SVD and candidate build, Go vs. PyTorch.

(a) Randomized SVD of rank 64 of 1024×1024 and 4096×4096 float32 matrices
    with a decaying spectrum (like task vectors): npsfuse's Go rSVD (timed as
    ``NPSDecompose`` of one tensor, which is one rSVD: rank 64, q = 2 power
    iterations, p = 10 oversampling, plus one O(n) pass forming τ) against
    ``torch.svd_lowrank`` (niter = 2; q = 64, the same rank, and q = 74, the
    same sketch width) and ``torch.linalg.svd`` (full), in the same run.
    Accuracy: relative error of the top-64 singular values against the full
    SVD's. Go's singular values are read back exactly: ``NPSBuild`` with the
    band weights 1, the residual weight 0 and keep = 1 writes U·diag(S)·Vᵀ,
    whose singular values (U, V orthonormal) are S; they are recovered
    exactly from that rank-64 matrix by a projection onto its range.
    Goals from the issue: ≥ 1× ``svd_lowrank``, ≥ 10× full SVD.

(b) Building one NPS candidate for a 100M-parameter model (24 matrices of
    2048×2048, M = 8 subspaces, SVD rank 64, keep = 0.1, global top-k):
    ``NPSBuild`` (τ' = w_M τ + U·diag(c)·Vᵀ per matrix, radix select over all
    100M |τ'|, mask, write into float32 tensors) against the same formula in
    PyTorch (``torch.addmm`` per matrix, then the global threshold with
    ``torch.kthvalue`` or ``torch.topk`` on the concatenated |τ'|, whichever
    is faster, then the mask). Goal: ≥ 2× PyTorch and ≤ 2 s.

Figures go to ``bench/results/nps.{md,json}``.
Run: ``PYTHONPATH=python .venv/bin/python bench/bench_nps.py`` (about 5 min on
2 cores; ``--quick`` shrinks everything for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from _common import Report, import_npsfuse, measure

import_npsfuse()
from npsfuse import _core  # noqa: E402
from npsfuse._bridge import ArrowPack  # noqa: E402

RANK = 64
POWER_ITERS = 2
OVERSAMPLE = 10  # Go's default p
SEED = 3


def spectrum_matrix(n: int, seed: int) -> torch.Tensor:
    """n×n float32 with singular values ≈ 1/(1 + j/8) over 256 directions plus
    small Gaussian noise (a slowly decaying spectrum, like a task vector)."""
    g = torch.Generator().manual_seed(seed)
    r = 256
    x = torch.randn(n, r, generator=g) / math.sqrt(n)
    y = torch.randn(r, n, generator=g) / math.sqrt(n)
    s = 1.0 / (1.0 + torch.arange(r, dtype=torch.float32) / 8)
    return (x * s) @ y * math.sqrt(n) + 0.01 * torch.randn(n, n, generator=g) / math.sqrt(n)


# ------------------------------------------------------------------ (a) rSVD --


def go_decompose(a: torch.Tensor, subspaces: int = 8, rank: int = RANK) -> int:
    """One NPS decomposition of the single tensor a (τ = a − 0): one rSVD."""
    zero = torch.zeros_like(a)
    pack = ArrowPack([("a", zero), ("a (ft)", a)])
    opts = {"subspaces": subspaces, "kind": "svd", "rank": rank, "power_iters": POWER_ITERS,
            "oversample": OVERSAMPLE, "seed": SEED}
    return _core.call(_core.go.NPSDecompose, json.dumps(opts), 1, pack.arrays, pack.schemas)


def go_singular_values(h: int, shape: tuple[int, int], subspaces: int = 8) -> torch.Tensor:
    """S of the decomposition, read back via NPSBuild of U·diag(S)·Vᵀ."""
    out = torch.empty(shape)
    pack = ArrowPack([("a", out)])
    w = [1.0] * (subspaces - 1) + [0.0]  # rank bands 1, residual 0
    _core.call(_core.go.NPSBuild, h, json.dumps({"shared": w}), 1.0, True, 1, pack.arrays,
               pack.schemas)
    g = torch.Generator().manual_seed(99)
    omega = torch.randn(shape[1], RANK + 8, generator=g, dtype=torch.float64)
    recon = out.double()
    q, _ = torch.linalg.qr(recon @ omega)
    return torch.linalg.svdvals(q.T @ recon)[:RANK].float()


def sv_errors(s: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = (s[:RANK] - ref[:RANK]).abs() / ref[:RANK]
    return float(rel.max()), float(rel.mean())


def bench_rsvd(sizes: list[int], report: Report, repeat: int) -> None:
    for n in sizes:
        a = spectrum_matrix(n, seed=n)
        t_full = measure(lambda a=a: torch.linalg.svd(a, full_matrices=False), repeat=1,
                         warmup=0)
        ref = torch.linalg.svdvals(a.double()).float() if n <= 2048 else \
            torch.linalg.svd(a, full_matrices=False)[1]

        def go_once(a: torch.Tensor = a) -> None:
            _core.go.Free(go_decompose(a))

        t_go = measure(go_once, repeat=repeat, warmup=1)
        h = go_decompose(a)
        s_go = go_singular_values(h, (n, n))
        _core.go.Free(h)
        rows = [("npsfuse Go rSVD (NPSDecompose)", t_go, sv_errors(s_go, ref))]
        for q in (RANK, RANK + OVERSAMPLE):
            t = measure(lambda a=a, q=q: torch.svd_lowrank(a, q=q, niter=POWER_ITERS),
                        repeat=repeat, warmup=1)
            torch.manual_seed(SEED)
            s = torch.svd_lowrank(a, q=q, niter=POWER_ITERS)[1]
            rows.append((f"torch.svd_lowrank q={q} niter={POWER_ITERS}", t, sv_errors(s, ref)))
        rows.append(("torch.linalg.svd (full)", t_full, (0.0, 0.0)))
        for name, t, (emax, emean) in rows:
            report.rows.append([
                f"{n}×{n}", name, t.best, t.median, t.best / t_go.best, emax, emean,
            ])
        vs_lowrank = rows[1][1].best / t_go.best
        vs_full = t_full.best / t_go.best
        report.baselines[f"{n}: Go vs svd_lowrank q={RANK} (×)"] = vs_lowrank
        report.baselines[f"{n}: Go vs full SVD (×)"] = vs_full
        report.notes.append(
            f"(a) {n}×{n}: goal ≥ 1× svd_lowrank {'met' if vs_lowrank >= 1 else 'NOT met'} "
            f"({vs_lowrank:.2f}×); goal ≥ 10× full SVD {'met' if vs_full >= 10 else 'NOT met'} "
            f"({vs_full:.1f}×)."
        )


# --------------------------------------------------------- (b) candidate build --


def bench_build(n_mats: int, dim: int, report: Report, repeat: int) -> None:
    m_sub, keep = 8, 0.1
    taus = [spectrum_matrix(dim, seed=100 + i) for i in range(n_mats)]
    total = n_mats * dim * dim
    zeros = [torch.zeros(dim, dim) for _ in range(n_mats)]
    items = []
    for i in range(n_mats):
        items += [(f"m{i}", zeros[i]), (f"m{i} (ft)", taus[i])]
    pack = ArrowPack(items)
    opts = {"subspaces": m_sub, "kind": "svd", "rank": 0, "power_iters": 0, "oversample": 0,
            "seed": SEED}
    t_dec = measure(lambda: None, repeat=1, warmup=0)
    import time

    t0 = time.perf_counter()
    h = _core.call(_core.go.NPSDecompose, json.dumps(opts), n_mats, pack.arrays, pack.schemas)
    t_dec.runs = [time.perf_counter() - t0]
    del zeros
    info = json.loads(_core.go.NPSInfo(h))
    rank = info["tensors"][0]["rank"]
    g = torch.Generator().manual_seed(5)
    weights = (torch.rand(m_sub, generator=g, dtype=torch.float64) * 2).tolist()
    outs = [torch.empty(dim, dim) for _ in range(n_mats)]

    def go_build() -> int:
        p = ArrowPack([(f"m{i}", o) for i, o in enumerate(outs)])
        return _core.call(_core.go.NPSBuild, h, json.dumps({"shared": weights}), keep, True,
                          n_mats, p.arrays, p.schemas)

    kept_go = go_build()
    t_go = measure(go_build, repeat=repeat, warmup=0)

    # The same formula in PyTorch, from torch's own rank-`rank` factors.
    factors = [torch.svd_lowrank(t, q=rank, niter=POWER_ITERS) for t in taus]
    band = [min(max(j.bit_length(), 0), m_sub - 2) for j in range(rank)]
    w = torch.tensor(weights, dtype=torch.float32)
    coef_w = w[torch.tensor(band)] - w[-1]
    k = int(keep * total)
    touts = [torch.empty(dim, dim) for _ in range(n_mats)]
    flat = torch.empty(total)

    def torch_gemm() -> None:
        for (u, s, v), tau, out in zip(factors, taus, touts, strict=True):
            torch.addmm(tau, u * (coef_w * s), v.T, beta=float(w[-1]), out=out)

    def torch_select(use_topk: bool) -> torch.Tensor:
        off = 0
        for out in touts:
            torch.abs(out.view(-1), out=flat[off:off + out.numel()])
            off += out.numel()
        if use_topk:
            th = torch.topk(flat, k, sorted=False).values.min()
        else:
            th = torch.kthvalue(flat, total - k + 1).values
        for out in touts:
            out.mul_(out.abs() >= th)
        return th

    def torch_build(use_topk: bool) -> None:
        torch_gemm()
        torch_select(use_topk)

    t_gemm = measure(torch_gemm, repeat=repeat, warmup=1)
    torch_build(False)
    kept_torch = sum(int((o != 0).sum()) for o in touts)
    t_kth = measure(lambda: torch_build(False), repeat=repeat, warmup=0)
    t_topk = measure(lambda: torch_build(True), repeat=max(1, repeat // 2), warmup=0)
    t_torch = min(t_kth, t_topk, key=lambda t: t.best)
    _core.go.Free(h)
    report.extra_tables["(b) candidate build, 100M parameters"] = (
        ["implementation", "best s", "median s", "speedup of Go (×)", "kept"],
        [
            ["npsfuse NPSBuild (Go)", t_go.best, t_go.median, 1.0, kept_go],
            ["torch addmm + kthvalue", t_kth.best, t_kth.median, t_kth.best / t_go.best,
             kept_torch],
            ["torch addmm + topk", t_topk.best, t_topk.median, t_topk.best / t_go.best,
             kept_torch],
            ["  torch addmm part only", t_gemm.best, t_gemm.median, t_gemm.best / t_go.best, ""],
        ],
    )
    report.baselines["(b) model"] = (f"{n_mats} matrices of {dim}×{dim} = {total:,} float32 "
                                     f"parameters, M = {m_sub}, rank {rank}, keep {keep}")
    report.baselines["(b) Go decomposition, once (s)"] = t_dec.best
    report.baselines["(b) Go build vs best torch (×)"] = t_torch.best / t_go.best
    report.baselines["(b) Go build best (s)"] = t_go.best
    ratio = t_torch.best / t_go.best
    report.notes.append(
        f"(b) goal ≥ 2× PyTorch {'met' if ratio >= 2 else 'NOT met'} ({ratio:.2f}×); goal ≤ 2 s "
        f"{'met' if t_go.best <= 2 else 'NOT met'} ({t_go.best:.2f} s)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--only", choices=["rsvd", "build"], default=None,
                    help="run only part (a) rsvd or part (b) build")
    ap.add_argument("--name", default="nps", help="results file name (default nps)")
    args = ap.parse_args()
    report = Report(
        name=args.name,
        title="NPS-Pruning kernels: randomized SVD and candidate build (Go vs PyTorch)",
        columns=["matrix", "implementation", "best s", "median s", "time / Go",
                 "top-64 σ max rel. err", "top-64 σ mean rel. err"],
    )
    report.machine["go_threads"] = int(_core.go.Threads())
    sizes, (n_mats, dim), repeat = ([256, 512], (4, 512), 2) if args.quick else \
        ([1024, 4096], (24, 2048), 5)
    if args.only in (None, "rsvd"):
        bench_rsvd(sizes, report, repeat=repeat)
    if args.only in (None, "build"):
        bench_build(n_mats, dim, report, repeat=repeat)
    report.notes += [
        "(a) the Go rSVD's products run on gocore/linalg's own GEMM: pure Go, vectorised "
        "across output columns with simd/archsimd (AVX-512 or AVX2), a separate multiply and "
        "add (no FMA) and each output's k-sum in order, so that results are bit-identical "
        "to the scalar build. torch's run on its BLAS (FMA, register-blocked micro-kernels "
        "using all 32 vector registers, which Go 1.26's compiler does not allocate). An "
        "optional faster backend (a cgo OpenBLAS behind a build tag, reached through a "
        "hook in linalg's gemm or gonum's blas32.Use) would close the rest of the gap at "
        "the cost of bit-identity with the pure-Go default; it is proposed, not built.",
        "(a) 'time / Go' > 1 means the Go rSVD is faster. The Go time includes forming "
        "τ = θ_ft − θ₀ (one O(n) pass) and copying τ into Go memory.",
        "(a) singular-value errors are relative to torch.linalg.svd's values (float64 "
        "svdvals for n ≤ 2048).",
        "(b) both implementations use their own rank-64 factors of the same matrices "
        "(the cost does not depend on the factor values); 'kept' is the number of "
        "non-zero entries written.",
    ]
    md, js = report.write()
    print(md.read_text())


if __name__ == "__main__":
    main()
