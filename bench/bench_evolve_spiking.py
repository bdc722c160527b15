"""Weight-space evolution on a spiking network's parameter layout (issue 19).

``bench_evolve.py`` times the evolution kernels on 25 equal tensors of 4M
float32; a spiking network lays its weights out very differently: many small
tensors (convolutions, BatchNorm affine parameters, one scalar time constant
per PLIF neuron layer) with BatchNorm statistics and counters kept out by
:data:`npsfuse.spiking.SPIKING_EXCLUDE`. This benchmark loads populations of
the spiking study's SEW-ResNet (``experiments/spiking_model.py``: width 16,
the study's network, and width 128, 64× the weights) into an
:class:`npsfuse.Evolver` with the spiking rule set and times one trial
through ``ask``/``tell`` (told −inf, so nothing changes), for CADE's sparse
crossover (the study's largest and smallest CR) and classic DE (CR = 0.5),
next to the same operators in PyTorch on the same buffers in the same run
(``bench_evolve.TorchOps``), and next to one evaluation of the network (a
dev-set pass of 400 8×8 images, T = 4): the kernel's share of a DE step.

Figures go to ``bench/results/bench_evolve_spiking.{md,json}``.

Run: ``PYTHONPATH=python .venv/bin/python bench/bench_evolve_spiking.py``
(about a minute; needs spikingjelly: ``pip install 'npsfuse[spiking]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import Report, import_npsfuse, measure
from bench_evolve import TorchOps, rand1_donor

npsfuse = import_npsfuse()
from npsfuse import _core, spiking  # noqa: E402
from npsfuse.evolve import _make_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import spiking_model as sm  # noqa: E402

POPSIZE = 6
#: The study's CR bounds (CADE's 1e-5 → 1e-6 rescaled to 28,416 weights) and classic DE.
CASES = [("CADE, CR = 4.1e-3 (start of the cosine)", 1e-5, 4.12e-3),
         ("CADE, CR = 4.1e-4 (end of the cosine)", 1e-6, 4.12e-4),
         ("DE, F = CR = 0.5", 0.5, 0.5)]


def population(width: int) -> tuple[torch.nn.Module, dict, list[dict]]:
    torch.manual_seed(0)
    net = sm.TinySEWResNet(width=width)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    pop = [{k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in base.items()} for _ in range(POPSIZE)]
    return net, base, pop


def bench_case(ev: Any, f: float, cr: float, repeat: int) -> tuple[Any, Any]:
    """Time one trial of (F, CR) through ask/tell, and PyTorch's operator."""
    cfg = _make_config(strategy="rand/1/bin", F=f, CR=cr, schedule="constant", F_bounds=None,
                       CR_bounds=None, period=None, generations=10**6, merge=None,
                       merge_params=None, granularity="element", block_size=4096,
                       force_index=False, seed=0)
    ev._cfg = cfg  # a new engine session over the same population
    ev._state = json.loads(_core.call(_core.go.EvolveStart, ev._session_config()))
    for _ in range(POPSIZE):
        ev.ask()
        ev.tell(0.0)

    def trial() -> None:
        ev.ask()
        ev.tell(-math.inf)

    t_np = measure(trial, repeat=repeat, warmup=3, min_time=0.3)
    ops, out = TorchOps(ev.num_params), torch.empty(ev.num_params)
    xs = [ev._slots[j] for j in range(POPSIZE)]

    def torch_trial() -> None:
        r = xs[1:4]
        if cr < 1 / 16:
            ops.sparse(out, xs[0], r, f, cr)
        else:
            ops.element(out, xs[0], rand1_donor(r[0], r[1], r[2], f), cr)

    return t_np, measure(torch_trial, repeat=repeat, warmup=3, min_time=0.3)


def bench_layout(width: int, rep: Report, dev: sm.Split, repeat: int) -> None:
    """Every case on the SEW-ResNet of this width; rows and baselines into ``rep``."""
    net, base, pop = population(width)
    rules = spiking.split(net)
    ev = npsfuse.Evolver(base, pop, lambda sd: 0.0, generations=10**6, progress=False,
                         strategy="rand/1/bin", exclude=rules.evolver_exclude())
    evaluate = spiking.evaluator(net, lambda m: sm.accuracy(m, dev))
    t_eval = measure(lambda: evaluate(base), repeat=5, warmup=1)
    label = f"width {width}{' (the study)' if width == 16 else ''}"
    for case, f, cr in CASES:
        t_np, t_torch = bench_case(ev, f, cr, repeat)
        row = [label, case, ev.num_params, len(rules.evolved), 1e3 * t_np.best,
               1e3 * t_np.median, 1e3 * t_torch.best, t_torch.best / t_np.best,
               1e3 * t_eval.best, 100 * t_np.median / t_eval.best]
        rep.rows.append(row)
        print(" | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row),
              flush=True)
    rep.baselines[f"{label}: evolved / kept tensors"] = f"{len(rules.evolved)} / {len(rules.kept)}"
    rep.baselines[f"{label}: one evaluation (dev pass, 400 images, T = 4) best ms"] = (
        1e3 * t_eval.best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed trials per case (at least)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    threads = 1  # the study's setting: one thread per run
    torch.set_num_threads(threads)
    npsfuse.set_num_threads(threads)
    _, dev, _ = sm.target_task(0, 200, 400)
    rep = Report(
        name="bench_evolve_spiking",
        title=(f"Evolution kernels on a spiking network's layout (SEW-ResNet, popsize "
               f"{POPSIZE}, one trial through Evolver.ask/tell, evaluation excluded)"),
        columns=["layout", "case", "evolved weights", "evolved tensors", "npsfuse best ms/trial",
                 "npsfuse median ms/trial", "torch best ms/trial", "speedup npsfuse/torch",
                 "one evaluation ms", "trial / evaluation %"],
    )
    for width in (16, 128):
        bench_layout(width, rep, dev, args.repeat)
    rep.baselines["threads (torch and npsfuse)"] = threads
    rep.notes = [
        "A trial is one Evolver.ask() + tell(-inf): the engine session's plan (JSON state "
        "through gopy), the ArrowPack export of the population and the Go kernel writing "
        "the offspring; PyTorch: the same operator on the same flat buffers "
        "(bench_evolve.TorchOps: a full torch.rand and an indexed update for sparse CR, "
        "sub/mul_/add_ donor, mask and torch.where for dense CR), without any session "
        "bookkeeping, so the ratio favours PyTorch on small layouts.",
        "The evolved layout comes from npsfuse.spiking.split on the model: convolution and "
        "BatchNorm affine weights, PLIF time constants and the read-out; BatchNorm "
        "running statistics and counters stay with each individual.",
        "'trial / evaluation' is the kernel-and-engine share of one DE step relative to "
        "scoring the trial once: what evolution costs beyond the evaluations it needs.",
        f"Total run time {time.perf_counter() - t_start:.0f} s.",
    ]
    md, _ = rep.write()
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
