"""CMA-ES convergence: npsfuse's Go CMA-ES against pycma (``cma``), same run.

Both minimise the sphere, Rosenbrock and Rastrigin functions in 2, 8 and 16
dimensions from the same start point and initial step size, with their
default population sizes (4 + ⌊3 ln n⌋ for both; 20·n on Rastrigin), no bounds, over 8 seeds
each. A run succeeds when its best f reaches the target (1e-8; the known
optimum is 0 for all three) within 2·10⁴·n evaluations. Reported per case:
success rate, median evaluations of the successful runs, median best f, and
the ratio of npsfuse's median evaluations to pycma's (≤ 1 means npsfuse
converges at least as fast). pycma's own termination criteria are switched
off as far as its options allow; a run it stops early counts as a failure.

Issue 5 asks for this check ("check the CMA-ES's convergence against `cma`
(pycma) on the same functions in a benchmark"); the goal written below is
that npsfuse succeeds as often as pycma (pooled per function), within 1.5×
its evaluations.

Figures go to ``bench/results/bench_cma.{md,json}``.
Run: ``.venv/bin/python bench/bench_cma.py`` (about 1 min).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from _common import Report, import_npsfuse

TARGET = 1e-8
SEEDS = range(8)
DIMS = (2, 8, 16)


def sphere(x: np.ndarray) -> float:
    """Σ xᵢ²: optimum 0 at the origin."""
    return float(np.dot(x, x))


def rosenbrock(x: np.ndarray) -> float:
    """Σ 100 (xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)²: optimum 0 at (1, …, 1)."""
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


def rastrigin(x: np.ndarray) -> float:
    """10 n + Σ xᵢ² − 10 cos(2π xᵢ): optimum 0 at the origin, many local minima."""
    return float(10.0 * x.size + np.sum(x * x - 10.0 * np.cos(2.0 * math.pi * x)))


FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], float], float, float, int]] = {
    # name: (f, start coordinate, sigma0, population per dimension; 0 = default)
    "sphere": (sphere, 3.0, 1.0, 0),
    "rosenbrock": (rosenbrock, 0.0, 0.5, 0),
    "rastrigin": (rastrigin, 2.0, 2.0, 20),
}


def minimise(f: Callable[[np.ndarray], float], ask: Callable[[], list],
             tell: Callable[[list, list[float]], None], stopped: Callable[[], bool],
             budget: int) -> tuple[int, float]:
    """Run ask/tell generations until f ≤ TARGET, the budget or a stop; return
    (evaluations, best f), counting evaluations up to the first success."""
    evals, best = 0, math.inf
    while evals < budget and not stopped():
        xs = ask()
        fs = [f(np.asarray(x, dtype=np.float64)) for x in xs]
        tell(xs, fs)
        for v in fs:
            evals += 1
            best = min(best, v)
            if best <= TARGET:
                return evals, best
    return evals, best


def run_npsfuse(f: Callable[[np.ndarray], float], x0: np.ndarray, sigma0: float,
                seed: int, budget: int, popsize: int | None) -> tuple[int, float]:
    """Minimise f with npsfuse's CMA-ES; return (evaluations, best f)."""
    import_npsfuse()
    from npsfuse.optim import Optimizer

    with Optimizer("cma", x0=x0, sigma0=sigma0, seed=seed, minimize=True,
                   popsize=popsize) as opt:
        return minimise(f, lambda: list(opt.ask()), lambda _xs, fs: opt.tell(fs),
                        lambda: False, budget)


def run_pycma(f: Callable[[np.ndarray], float], x0: np.ndarray, sigma0: float,
              seed: int, budget: int, popsize: int | None) -> tuple[int, float]:
    """Minimise f with pycma; return (evaluations, best f)."""
    import cma

    opts = {"seed": seed + 1, "verbose": -9, "maxfevals": budget, "tolfun": 0, "tolx": 0,
            "tolfunhist": 0, "tolstagnation": 10**9, "tolflatfitness": 10**9, "ftarget": -1}
    if popsize:
        opts["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(list(x0), sigma0, opts)
    return minimise(f, es.ask, es.tell, es.stop, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="bench_cma")
    ap.add_argument("--quick", action="store_true", help="2 seeds, dims 2 and 8")
    args = ap.parse_args()
    seeds = range(2) if args.quick else SEEDS
    dims = DIMS[:2] if args.quick else DIMS
    import cma

    report = Report(
        name=args.name,
        title="CMA-ES convergence: npsfuse (Go) vs pycma, evaluations to f ≤ 1e-8",
        columns=["function", "n", "popsize", "implementation", "successes",
                 "median evals (successes)", "median best f", "evals / pycma evals",
                 "wall s (all seeds)"],
    )
    goals: list[str] = []
    pooled: dict[str, list] = {}
    t_start = time.perf_counter()
    for fname, (f, start, sigma0, per_dim) in FUNCTIONS.items():
        for n in dims:
            popsize = per_dim * n or None
            budget = 20_000 * n
            x0 = np.full(n, start)
            res: dict[str, list[tuple[int, float]]] = {}
            wall: dict[str, float] = {}
            for impl, fn in (("npsfuse", run_npsfuse), ("pycma", run_pycma)):
                t0 = time.perf_counter()
                res[impl] = [fn(f, x0, sigma0, s, budget, popsize) for s in seeds]
                wall[impl] = time.perf_counter() - t0
            med: dict[str, float] = {}
            ok: dict[str, int] = {}
            for impl, runs in res.items():
                succ = [e for e, b in runs if b <= TARGET]
                ok[impl] = len(succ)
                med[impl] = statistics.median(succ) if succ else math.nan
            for impl, runs in res.items():
                ratio = med[impl] / med["pycma"] if ok["pycma"] and ok[impl] else math.nan
                report.rows.append([
                    fname, n, popsize or "default", impl, f"{ok[impl]}/{len(runs)}", med[impl],
                    statistics.median(b for _, b in runs), ratio, wall[impl],
                ])
            ratio = med["npsfuse"] / med["pycma"] if ok["npsfuse"] and ok["pycma"] else math.nan
            pooled.setdefault(fname, [0, 0, []])
            pooled[fname][0] += ok["npsfuse"]
            pooled[fname][1] += ok["pycma"]
            pooled[fname][2].append(ratio)
    for fname, (ok_n, ok_p, ratios) in pooled.items():
        worst = max((r for r in ratios if not math.isnan(r)), default=math.nan)
        met = ok_n >= ok_p and not worst > 1.5
        goals.append(
            f"{fname}: successes over all dimensions and seeds {ok_n} (npsfuse) vs {ok_p} "
            f"(pycma); worst median-evaluations ratio {worst:.2f}: {'met' if met else 'NOT met'}"
        )
    report.baselines["pycma version"] = cma.__version__
    report.baselines["target f"] = TARGET
    report.baselines["budget per run"] = "20000 · n evaluations"
    report.baselines["seeds"] = len(seeds)
    report.baselines["total run time s"] = time.perf_counter() - t_start
    report.notes += [
        "Goal (per function, pooled over dimensions and seeds, since success counts of 8 runs "
        "are noisy): npsfuse succeeds in at least as many runs as pycma, and in every "
        "dimension where both succeed its median evaluations are ≤ 1.5× pycma's.",
        *goals,
        "Start points: sphere x0 = 3·1, σ0 = 1; Rosenbrock x0 = 0, σ0 = 0.5; Rastrigin x0 = 2·1, "
        "σ0 = 2. Default population sizes for sphere and Rosenbrock; Rastrigin with 20·n "
        "(with the default population both implementations end in local minima, as a CMA-ES "
        "without restarts does); no restarts (pycma's IPOP is not used), no bounds.",
        "wall s is dominated by Python-side evaluation and the ask/tell round trips; it is "
        "not a speed goal.",
    ]
    md, js = report.write()
    print(f"wrote {md} and {js}")
    for g in goals:
        print(g)


if __name__ == "__main__":
    main()
