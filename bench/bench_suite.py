"""Every merge method on 4 × 110M parameters: effective bandwidth against
the STREAM triad measured in the same run.

The models have BERT-base's 205 tensors (110M float32 parameters: the word
embeddings, attention and MLP matrices, biases, LayerNorms): a base and 4
fine-tunes (``slerp`` takes the first two). Each method runs with
``npsfuse.merge``'s defaults (density 0.2, λ = 1, mergekit's ``normalize``,
NeuroMerging's global scope); TIES also with ``scope="global"``.

Two timings per method, best of 3 after a warm-up:

* ``npsfuse.merge``: end to end, including the state-dict checks and the
  allocation of the output (whose first writes page-fault);
* engine only: the same Go call through npsfuse's private bridge, with
  output tensors allocated and touched once beforehand (as the triad's
  arrays are).

Effective bandwidth = the bytes a merge must move at least (every input
read once: base and models, the base not for linear and slerp; the output
written once) / time, also as a fraction of the triad. Methods that rank,
sample or take statistics read their inputs more than once, so their
fraction is below 1 by design; the table says how many passes each makes.
Figures go to ``bench/results/bench_suite.{md,json}``.

Run: ``PYTHONPATH=python .venv/bin/python bench/bench_suite.py`` (about 10 min
on 2 cores; ``--methods a,b`` for a subset).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from _common import Report, import_npsfuse, measure, triad
from bench_neuro import bert_like_shapes, make_family

npsfuse = import_npsfuse()
from npsfuse import _core  # noqa: E402
from npsfuse._bridge import ArrowPack  # noqa: E402
from npsfuse.merging import (  # noqa: E402
    BASE_AS_MODEL,
    DATA_AWARE,
    DEFAULT_NORMALIZE,
    DEFAULT_SCOPE,
    _params,
)

StateDict = dict[str, torch.Tensor]
N_MODELS = 4

#: Passes over the inputs each method makes (reads of every input array;
#: the output is written once), for reading the bandwidth figures.
PASSES: dict[str, str] = {
    "linear": "1",
    "task_arithmetic": "1",
    "ties": "2 (+ sample)",
    "magnitude_prune": "2 (+ sample)",
    "dare_linear": "1",
    "dare_ties": "1",
    "breadcrumbs": "2 (+ sample)",
    "breadcrumbs_ties": "2 (+ sample)",
    "della": "1 (per-row ranking)",
    "della_linear": "1 (per-row ranking)",
    "consensus_ta": "1",
    "consensus_ties": "2 (+ sample)",
    "model_stock": "2",
    "slerp": "2",
    "pcb": "3 (two 3-pass quantile selections, each reading the inputs once) + exp/tanh",
    "neuro": "2 (+ sample) + per-neuron Gram",
}


#: Parameters a method requires (nearswap has no default t).
REQUIRED: dict[str, dict[str, float]] = {"nearswap": {"t": 0.01}}


def engine_call(method: str, scope: str, base: StateDict, models: list[StateDict],
                outs: StateDict) -> None:
    """npsfuse.merge's Go call on prepared outputs (private API)."""
    params = json.dumps(_params(method, len(models), density=0.2, lam=1.0,
                                normalize=DEFAULT_NORMALIZE.get(method, True), scope=scope,
                                seed=0, **REQUIRED.get(method, {})))
    items: list[tuple[str, torch.Tensor]] = []
    for k in base:
        items.append((k, base[k]))
        items += [(f"{k} (model {i})", m[k]) for i, m in enumerate(models)]
        items.append((f"{k} (output)", outs[k]))
    pack = ArrowPack(items)
    _core.call(_core.go.Merge, method, params, len(base), len(models), pack.arrays,
               pack.schemas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="", help="comma-separated subset")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    npsfuse.set_num_threads(0)
    tr = triad()
    print(f"triad: {tr.gbps_best:.2f} GB/s (best), {tr.gbps_median:.2f} GB/s (median)", flush=True)
    base, models = make_family(bert_like_shapes(), N_MODELS)
    n = sum(b.numel() for b in base.values())
    outs = {k: torch.zeros_like(b) for k, b in base.items()}
    print(f"{N_MODELS} models of {n / 1e6:.1f}M parameters", flush=True)
    # fisher and regmean need per-model statistics, which this bench does not make.
    configs = [(m, m, DEFAULT_SCOPE.get(m, "tensor")) for m in npsfuse.methods()
               if m not in DATA_AWARE]
    configs.append(("ties (global)", "ties", "global"))
    if args.methods:
        wanted = set(args.methods.split(","))
        configs = [c for c in configs if c[0] in wanted or c[1] in wanted]
    report = Report(
        name="bench_suite",
        title=f"Every merge method on {N_MODELS} × {n / 1e6:.0f}M parameters vs the triad",
        columns=["method", "models", "MB moved", "merge best (s)", "merge GB/s",
                 "merge / triad", "engine best (s)", "engine GB/s", "engine / triad", "passes"],
        baselines={"triad GB/s (best)": tr.gbps_best, "triad GB/s (median)": tr.gbps_median,
                   "npsfuse threads": npsfuse.get_num_threads(), "parameters per model": n},
        notes=[
            "Defaults of npsfuse.merge per method (density 0.2, λ = 1, mergekit's normalize; "
            "neuro: mask_rate 0.9, global scope, automatic λ₂; slerp: t = 0.5, 2 models).",
            "merge: npsfuse.merge end to end (checks, output allocation and its page faults). "
            "engine: the Go call alone on outputs touched beforehand.",
            "MB moved: every input read once and the output written once (10⁶ bytes).",
            "Data: BERT-base shapes; base N(0, 0.05²), task vectors N(0, 0.002²).",
        ],
    )
    for label, method, scope in configs:
        ms = models[:2] if method == "slerp" else models[:1] if method == "nearswap" else models
        arrays = len(ms) + 1 + (0 if method in ("linear", "slerp") else 1)
        moved = arrays * 4 * n
        kw = REQUIRED.get(method, {})
        b = None if method in BASE_AS_MODEL else base  # linear: the models alone
        t_merge = measure(lambda m=method, s=scope, ms=ms, kw=kw, b=b: npsfuse.merge(b, ms, m,
                                                                                    scope=s, **kw),
                          repeat=args.repeat, warmup=1)
        t_eng = measure(lambda m=method, s=scope, ms=ms: engine_call(m, s, base, ms, outs),
                        repeat=args.repeat, warmup=1)
        g_merge, g_eng = moved / t_merge.best / 1e9, moved / t_eng.best / 1e9
        print(f"{label:18s} merge {t_merge.best:7.3f} s {g_merge:6.2f} GB/s "
              f"({g_merge / tr.gbps_best:5.1%})  engine {t_eng.best:7.3f} s {g_eng:6.2f} GB/s "
              f"({g_eng / tr.gbps_best:5.1%})", flush=True)
        report.rows.append([label, len(ms), moved / 1e6, t_merge.best, g_merge,
                            g_merge / tr.gbps_best, t_eng.best, g_eng, g_eng / tr.gbps_best,
                            PASSES.get(method, "")])
    md, js = report.write()
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
