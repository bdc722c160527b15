"""Merge throughput: npsfuse's Go engine vs. PyTorch, against memory bandwidth.

Every merge method (``npsfuse.methods()``, plus TIES with ``scope="global"``)
runs on 4 fine-tuned models of 100M float32 parameters (25 tensors of 4M) and
their base. For each, this times ``npsfuse.merge`` (best of 3 after a warm-up)
and a plain PyTorch implementation of the same formula in the same process,
and reports

* the speedup npsfuse / PyTorch,
* the effective bandwidth: the bytes a merge must move at least (every input
  read once, the output written once) divided by the time, and that as a
  percentage of the STREAM triad measured at the start of this run.

Figures go to ``bench/results/bench_merge.{md,json}``. Goals from the issue:
task_arithmetic ≥ 70 % of the triad, TIES ≥ 3× the PyTorch version.

Run: ``PYTHONPATH=python .venv/bin/python bench/bench_merge.py`` (< 10 min on
2 cores; ``--tensor-len`` and ``--methods`` make quicker runs).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
from _common import Report, Timing, import_npsfuse, measure, triad

npsfuse = import_npsfuse()
from npsfuse import _core  # noqa: E402
from npsfuse._bridge import ArrowPack  # noqa: E402
from npsfuse.merging import BASE_AS_MODEL, DATA_AWARE, DEFAULT_NORMALIZE, _params  # noqa: E402

StateDict = dict[str, torch.Tensor]
TorchMerge = Callable[[StateDict, Sequence[StateDict], "Params"], StateDict]

N_MODELS = 4
N_TENSORS = 25
TENSOR_LEN = 4_000_000
DENSITY = 0.2
LAM = 1.0
SEED = 1
GOAL_TA_TRIAD = 0.70
GOAL_TIES_SPEEDUP = 3.0


class Params:
    """The knobs both implementations get (npsfuse's defaults per method)."""

    def __init__(self, method: str, scope: str | None) -> None:
        self.method = method
        self.scope = scope
        self.weights = [1.0] * N_MODELS
        self.density = DENSITY
        self.lam = LAM
        self.normalize = DEFAULT_NORMALIZE.get(method, True)
        self.seed = SEED


# ---------------------------------------------------------------- PyTorch --
# Straightforward, reasonable PyTorch: per tensor, float32, all intra-op
# threads, temporaries reused where that is the obvious thing to do.


def _weighted_sum(w: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t τ_t over the first dim, as one matrix-vector product."""
    return w @ taus


def _stack_taus(base: torch.Tensor, models: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([m - base for m in models])


def _thresholds(abs_taus: torch.Tensor, density: float) -> torch.Tensor | None:
    """Per row, the k-th largest |τ| with k = ⌊density·n⌋ (None: keep all)."""
    n = abs_taus.shape[1]
    k = int(density * n)
    if k >= n:
        return None
    if k == 0:
        return torch.full((abs_taus.shape[0], 1), float("inf"))
    return abs_taus.kthvalue(n - k + 1, dim=1, keepdim=True).values


def _trim(taus: torch.Tensor, thr: torch.Tensor | None) -> torch.Tensor:
    if thr is None:
        return taus
    return torch.where(taus.abs() >= thr, taus, 0.0)


def _global_thresholds(
    base: StateDict, models: Sequence[StateDict], density: float
) -> torch.Tensor:
    """The k-th largest |τ| of each model over all its tensors together."""
    thr = []
    for m in models:
        a = torch.cat([(m[k] - base[k]).abs_().flatten() for k in base])
        n = a.numel()
        k = int(density * n)
        thr.append(a.kthvalue(n - k + 1).values if 0 < k < n else torch.tensor(0.0))
        del a
    return torch.stack(thr).reshape(-1, 1)


def _disjoint_mean(w: torch.Tensor, taus: torch.Tensor, normalize: bool) -> torch.Tensor:
    """TIES elect (sign of Σ w τ, + on 0) and the disjoint (weighted) mean."""
    wt = taus * w[:, None]
    sign = torch.where(wt.sum(0) >= 0, 1.0, -1.0)
    agree = wt * sign > 0
    num = torch.where(agree, wt, 0.0).sum(0)
    if not normalize:
        return num
    den = (agree * w[:, None]).sum(0)
    return torch.where(den != 0, num / den.clamp_min(1e-30), 0.0)


def torch_linear(base: StateDict, models: Sequence[StateDict], p: Params) -> StateDict:
    out: StateDict = {}
    inv = 1.0 / sum(p.weights) if p.normalize else 1.0
    for k in base:
        acc = torch.zeros_like(base[k])
        for w, m in zip(p.weights, models, strict=True):
            acc.add_(m[k], alpha=w * inv)
        out[k] = acc
    return out


def torch_task_arithmetic(base: StateDict, models: Sequence[StateDict], p: Params) -> StateDict:
    out: StateDict = {}
    lam = p.lam / sum(p.weights) if p.normalize else p.lam
    for k, b in base.items():
        acc = torch.zeros_like(b)
        tmp = torch.empty_like(b)
        for w, m in zip(p.weights, models, strict=True):
            torch.sub(m[k], b, out=tmp)
            acc.add_(tmp, alpha=w)
        out[k] = torch.add(b, acc, alpha=lam)
    return out


def _topk_method(combine: str) -> TorchMerge:
    def run(base: StateDict, models: Sequence[StateDict], p: Params) -> StateDict:
        w = torch.tensor(p.weights)
        gthr = _global_thresholds(base, models, p.density) if p.scope == "global" else None
        out: StateDict = {}
        for k, b in base.items():
            taus = _stack_taus(b, [m[k] for m in models])
            thr = gthr if gthr is not None else _thresholds(taus.abs(), p.density)
            taus = _trim(taus, thr)
            if combine == "ties":
                r = _disjoint_mean(w, taus, p.normalize)
                out[k] = torch.add(b, r, alpha=p.lam)
            else:
                lam = p.lam / sum(p.weights) if p.normalize else p.lam
                out[k] = torch.add(b, _weighted_sum(w, taus), alpha=lam)
        return out

    return run


def _dare_method(combine: str) -> TorchMerge:
    def run(base: StateDict, models: Sequence[StateDict], p: Params) -> StateDict:
        w = torch.tensor(p.weights)
        g = torch.Generator().manual_seed(p.seed)
        out: StateDict = {}
        for k, b in base.items():
            taus = _stack_taus(b, [m[k] for m in models])
            if p.density < 1:
                keep = torch.rand(taus.shape, generator=g) < p.density
                taus = torch.where(keep, taus * (1.0 / p.density), 0.0)
            if combine == "ties":
                out[k] = torch.add(b, _disjoint_mean(w, taus, p.normalize), alpha=p.lam)
            else:
                lam = p.lam / sum(p.weights) if p.normalize else p.lam
                out[k] = torch.add(b, _weighted_sum(w, taus), alpha=lam)
        return out

    return run


TORCH: dict[str, TorchMerge] = {
    "linear": torch_linear,
    "task_arithmetic": torch_task_arithmetic,
    "ties": _topk_method("ties"),
    "magnitude_prune": _topk_method("sum"),
    "dare_linear": _dare_method("sum"),
    "dare_ties": _dare_method("ties"),
}

#: Methods whose PyTorch version draws other random numbers than npsfuse.
RANDOM = frozenset({"dare_linear", "dare_ties"})


# ------------------------------------------------------------------- main --


def make_models(n_tensors: int, n: int) -> tuple[StateDict, list[StateDict]]:
    """Base entries N(0, 1); fine-tunes add N(0, 0.01²) (dense, small τ)."""
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(n, generator=g) for i in range(n_tensors)}
    models = []
    for _ in range(N_MODELS):
        models.append({k: b + 0.01 * torch.randn(n, generator=g) for k, b in base.items()})
    return base, models


def compare(a: StateDict, b: StateDict) -> tuple[float, int]:
    """Largest |a − b| and the number of entries differing by more than 1e-6."""
    worst, count = 0.0, 0
    for k in a:
        d = (a[k] - b[k]).abs_()
        worst = max(worst, float(d.max()))
        count += int((d > 1e-6).sum())
    return worst, count


def engine_only(
    p: Params, base: StateDict, models: Sequence[StateDict], outs: StateDict, repeat: int
) -> Timing | None:
    """Time the Go call alone: pack the inputs and the given, already touched
    outputs and call the engine as ``npsfuse.merge`` does, without its checks
    and output allocation. Uses private API; None if that API has moved."""
    if repeat <= 0:
        return None
    params = json.dumps(
        _params(p.method, len(models), weights=p.weights, density=p.density, lam=p.lam,
                normalize=p.normalize, scope=p.scope, seed=p.seed)
    )
    names = list(base)

    def call() -> None:
        items: list[tuple[str, torch.Tensor]] = []
        for k in names:
            items.append((k, base[k]))
            items += [(f"{k} (model {i})", m[k]) for i, m in enumerate(models)]
            items.append((f"{k} (output)", outs[k]))
        pack = ArrowPack(items)
        _core.call(
            _core.go.Merge, p.method, params, len(names), len(models), pack.arrays, pack.schemas
        )

    try:
        return measure(call, repeat=repeat, warmup=0)
    except (AttributeError, TypeError, RuntimeError, ValueError) as exc:
        print(f"engine-only timing skipped: {exc}", flush=True)
        return None


def _fmt_err(exc: Exception) -> str:
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensor-len", type=int, default=TENSOR_LEN)
    ap.add_argument("--tensors", type=int, default=N_TENSORS)
    ap.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--name", default="bench_merge", help="results file name (for trial runs)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed npsfuse.merge runs per case, after a warm-up (best is reported)",
    )
    ap.add_argument(
        "--torch-repeat", type=int, default=2, help="timed PyTorch runs per case, after a warm-up"
    )
    ap.add_argument(
        "--engine-repeat", type=int, default=2, help="timed engine-only runs per case (0: skip)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds after which cases get one timed run and methods without "
        "a PyTorch baseline are skipped",
    )
    args = ap.parse_args()

    t_start = time.perf_counter()
    threads = 2
    torch.set_num_threads(threads)
    npsfuse.set_num_threads(threads)

    tri = triad(repeat=10, threads=threads)
    print(f"triad: {tri.gbps_best:.1f} GB/s best, {tri.gbps_median:.1f} median", flush=True)

    n = args.tensor_len * args.tensors
    base, models = make_models(args.tensors, args.tensor_len)
    # fisher and regmean need per-model statistics: bench/ has no data for them.
    # nearswap merges one model into the base, unlike every row here (bench_suite times it).
    available = [m for m in npsfuse.methods() if m not in DATA_AWARE and m != "nearswap"]
    # Methods with a PyTorch baseline (and the goals) first, then TIES
    # over the whole model, then every other registered method, npsfuse only.
    configs = [(m, m, "tensor") for m in TORCH if m in available]
    if "ties" in available:
        configs.append(("ties (global)", "ties", "global"))
    configs += [(m, m, None) for m in sorted(available) if m not in TORCH]
    if args.methods:
        want = set(args.methods.split(","))
        configs = [c for c in configs if c[0] in want or c[1] in want]

    rep = Report(
        name=args.name,
        title=(
            f"Merge: npsfuse vs. PyTorch, {N_MODELS} models × {n / 1e6:.0f}M float32 "
            f"parameters ({args.tensors} tensors of {args.tensor_len:,})"
        ),
        columns=[
            "method",
            "npsfuse best s",
            "npsfuse median s",
            "npsfuse runs",
            "engine only best s",
            "torch best s",
            "speedup npsfuse/torch",
            "GB moved (min)",
            "npsfuse GB/s",
            "triad GB/s (just before)",
            "npsfuse % of triad",
            "engine only % of triad",
            "torch GB/s",
            "max abs diff npsfuse vs torch",
            "entries differing > 1e-6",
        ],
    )
    skipped: list[str] = []
    # Past the deadline every case still runs (warm-up + one timed call), but
    # repeats stop, engine-only timings and methods without a PyTorch version
    # are skipped: a loaded machine then still finishes in reasonable time.
    deadline = t_start + args.budget
    for label, method, scope in configs:
        with_torch = method in TORCH
        if not with_torch and time.perf_counter() - t_start > args.budget:
            skipped.append(label)
            continue
        p = Params(method, scope)
        used = models[:2] if method == "slerp" else models  # slerp takes exactly 2
        last: dict[str, StateDict] = {}

        def run_npsfuse(
            p: Params = p, used: Sequence[StateDict] = used, last: dict[str, StateDict] = last
        ) -> None:
            if p.method in TORCH:
                kw: dict[str, object] = {
                    "weights": p.weights[: len(used)],
                    "normalize": p.normalize,
                    "scope": p.scope,
                }
            else:  # the method's own defaults
                kw = {}
            last["npsfuse"] = npsfuse.merge(  # linear: the models alone (base=None)
                None if p.method in BASE_AS_MODEL else base, used, p.method,
                density=p.density, lam=p.lam, seed=p.seed, **kw
            )

        def run_torch(p: Params = p, last: dict[str, StateDict] = last) -> None:
            last["torch"] = TORCH[p.method](base, models, p)

        # The machine's bandwidth drifts (shared hosts): a short triad right
        # before each case is its baseline.
        near = triad(repeat=5, threads=threads)
        inputs = len(used) + (0 if method == "linear" else 1)  # linear never needs the base
        moved = (inputs + 1) * 4 * n
        try:
            if with_torch:
                warm = int(time.perf_counter() < deadline)
                tn = measure(run_npsfuse, repeat=args.repeat, warmup=warm, deadline=deadline)
            else:
                # Probe on one tensor and extrapolate, so that one slow method
                # cannot push the run far past the budget; then no warm-up and
                # as many runs as the budget allows (at least one).
                first = next(iter(base))
                t0 = time.perf_counter()
                npsfuse.merge(
                    None if method in BASE_AS_MODEL else {first: base[first]},
                    [{first: m[first]} for m in used],
                    method,
                    density=p.density,
                    lam=p.lam,
                    seed=p.seed,
                )
                guess = (time.perf_counter() - t0) * len(base)
                left = args.budget - (time.perf_counter() - t_start)
                if guess > left:
                    skipped.append(f"{label} (estimated {guess:.0f} s, {max(left, 0):.0f} s left)")
                    continue
                tn = measure(run_npsfuse, repeat=args.repeat, warmup=0, deadline=deadline)
        except Exception as exc:  # a method that cannot run on this input is reported
            rep.rows.append([label, _fmt_err(exc)] + ["n/a"] * (len(rep.columns) - 2))
            print(rep.rows[-1], flush=True)
            continue
        gbps = moved / tn.best / 1e9
        te = tt = None
        worst: float | str = "n/a"
        count: int | str = "n/a"
        if with_torch:
            late = time.perf_counter() > deadline
            te = engine_only(p, base, models, last["npsfuse"], 0 if late else args.engine_repeat)
            tt = measure(
                run_torch, repeat=args.torch_repeat, warmup=int(not late), deadline=deadline
            )
            if method in RANDOM:
                worst = "n/a (other RNG)"
            else:
                worst, count = compare(last["npsfuse"], last["torch"])
        last.clear()
        rep.rows.append(
            [
                label,
                tn.best,
                tn.median,
                len(tn.runs),
                te.best if te else "n/a",
                tt.best if tt else "n/a",
                tt.best / tn.best if tt else "n/a",
                moved / 1e9,
                gbps,
                near.gbps_best,
                100 * gbps / near.gbps_best,
                100 * moved / te.best / 1e9 / near.gbps_best if te else "n/a",
                moved / tt.best / 1e9 if tt else "n/a",
                worst,
                count,
            ]
        )
        print(rep.rows[-1], flush=True)

    rows = {r[0]: r for r in rep.rows}
    goals: list[list[object]] = []
    pct = rows.get("task_arithmetic", [None] * 11)[10]
    if isinstance(pct, float):
        goals.append(
            [
                "task_arithmetic ≥ 70 % of triad",
                f"{pct:.1f} %",
                "met" if pct >= 100 * GOAL_TA_TRIAD else "not met",
            ]
        )
    for key in ("ties", "ties (global)"):
        sp = rows.get(key, [None] * 7)[6]
        if isinstance(sp, float):
            goals.append(
                [
                    f"{key} ≥ 3× PyTorch",
                    f"{sp:.2f}×",
                    "met" if sp >= GOAL_TIES_SPEEDUP else "not met",
                ]
            )
    rep.extra_tables["Goals (issue)"] = (["goal", "measured", "status"], goals)
    rep.baselines.update(
        {
            "STREAM triad best GB/s (torch.add(b, c, alpha=s, out=a), 3 × 400 MB)": tri.gbps_best,
            "STREAM triad median GB/s": tri.gbps_median,
            "threads (torch and npsfuse)": threads,
        }
    )
    rep.notes += [
        f"density {DENSITY}, λ {LAM}, weights all 1, seed {SEED}; normalize: npsfuse's "
        "(mergekit's) default per method, the same for both implementations. Methods "
        "without a PyTorch version here run with all their defaults (slerp on 2 models).",
        "GB moved (min) = (inputs + 1 output) × 4 B × parameters; inputs = base + models "
        "(linear: models only). It ignores write-allocate traffic, as the triad's 12 B/elem does.",
        "Both sides allocate their outputs on every call (page faults included); the triad "
        "writes into arrays touched beforehand.",
        "engine only = the same Go call with the outputs allocated and touched beforehand and "
        "without merge()'s Python-side checks: the gap to npsfuse.merge is output allocation "
        "(page faults) plus those checks.",
        "PyTorch versions: per tensor; TIES/magnitude_prune trim by kthvalue on |τ| (keeps "
        "all entries equal to the threshold, npsfuse keeps exactly k, first by index: the "
        "few differing entries are those), sign election, disjoint mean; DARE draws "
        "torch.rand masks, so its results differ from npsfuse's by design.",
        "% of triad is against the triad measured just before the case (5 runs): the "
        "machine's bandwidth drifts when other jobs share it; the start-of-run triad is "
        "under Baselines.",
        f"Times: npsfuse.merge best (and median) of {args.repeat} after one warm-up call; "
        f"engine only best of {args.engine_repeat}; PyTorch best of {args.torch_repeat} after "
        "one warm-up (to keep the run under 10 min). Methods without a PyTorch version: no "
        "warm-up. Past the time budget "
        f"({args.budget:.0f} s) a case gets no warm-up and one timed run (column runs), no "
        "engine-only timing, and methods without a PyTorch version are skipped.",
    ]
    if skipped:
        rep.notes.append(
            f"Skipped to stay within the {args.budget:.0f} s budget: {', '.join(skipped)}."
        )
    rep.notes.append(f"Total run time {time.perf_counter() - t_start:.0f} s.")
    md, js = rep.write()
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
