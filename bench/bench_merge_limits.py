"""Merge kernels against the memory bandwidth: issue 15's limits table.

Each method of the table (the TIES family, Breadcrumbs, NeuroMerging, DELLA,
PCB; task_arithmetic and dare_ties for reference) is timed by the Go
benchmark ``BenchmarkLimits`` in ``gocore/merge`` (the default
``GOEXPERIMENT=simd`` build), which runs for every method the STREAM triad,
the merge and the triad again back to back. Per method and repetition the
figure is

    % of triad = merge bytes/s ÷ mean(triad bytes/s before, after) × 100,

where the merge's bytes are the least traffic of a merge (every input read
once, the output written once) and the triad's 12 bytes per element. The
verdict is on the median of those paired ratios over ``--repeat`` (≥ 5)
repetitions, so that a burst of load from other processes on the shared
machine does not decide it. Figures go to ``bench/results/merge_limits.{md,json}``
with the CPU model and the load average.

Size: 4 models × 4 tensors × 4M float32 by default (16M parameters per model;
384 MiB of inputs and output per merge, the triad over 3 × 256 MiB), beyond
the caches of most CPUs (a CPU whose last-level cache reports more, as some
virtual machines' do, may hold part of it: the notes say so).
``--tensor-len`` sets the entries per tensor (a multiple of 2048): 26214400
gives the issue's shape, 4 × 105M parameters (2.4 GB per merge, the triad
over 3 × 1.6 GB), beyond any cache, in about 2.5 minutes on 2 cores.

Run: ``.venv/bin/python bench/bench_merge_limits.py`` (under a minute at the
default size). ``--methods`` restricts the run to some methods
(comma-separated).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Report, machine_info

# Goals of issue 15 in % of the triad; None: reference row without a goal.
GOALS: dict[str, float | None] = {
    "task_arithmetic": None,
    "ties": 35.0,
    "magnitude_prune": 35.0,
    "consensus_ta": 35.0,
    "model_stock": 35.0,
    "dare_ties": None,
    "breadcrumbs": 25.0,
    "breadcrumbs_ties": 25.0,
    "consensus_ties": 25.0,
    "neuro": 15.0,
    "della": 15.0,
    "della_linear": 15.0,
    "pcb": 10.0,
}

LINE = re.compile(
    r"^BenchmarkLimits/rep\d+/(\S+?)/(triad_before|merge|triad_after)(?:-\d+)?\s+\d+\s+"
    r"([\d.]+) ns/op\s+([\d.]+) MB/s"
)


# Entries per benchmark tensor by default (the Go benchmark's own default).
DEFAULT_TENSOR_LEN = 4 << 20


def cache_note(per_merge: int, cache: object) -> str:
    """Whether a merge's inputs and output (``per_merge`` bytes) fit in the
    largest cache the machine reports (``cache`` bytes, None if unknown)."""
    size = f"{per_merge / 2**20:.0f} MiB of inputs and output per merge"
    if not isinstance(cache, int) or cache <= 0:
        return f"{size}; the largest cache's size is unknown."
    if per_merge > 2 * cache:
        return f"{size}, more than twice the largest cache ({cache / 2**20:.0f} MiB)."
    return (
        f"{size}, within twice the largest cache the machine reports "
        f"({cache / 2**20:.0f} MiB), which may hold part of it between passes: run with "
        "--tensor-len 26214400 (the issue's shape) to rule that out."
    )


def build(tmp: Path) -> Path:
    """Compile gocore/merge's test binary in the default (SIMD) build."""
    out = tmp / "merge.test"
    env = dict(os.environ, GOEXPERIMENT="simd")
    subprocess.run(
        ["go", "test", "-c", "-o", str(out), "./gocore/merge"], cwd=ROOT, env=env, check=True
    )
    return out


def run(
    binary: Path, methods: list[str], repeat: int, tensor_len: int
) -> dict[str, list[dict[str, float]]]:
    """Run BenchmarkLimits with ``repeat`` repetitions in one process (the
    inputs, 4 tensors of ``tensor_len`` entries per model, are generated
    once; every method runs once per repetition); per method, one dict of
    MB/s and ns/op per repetition."""
    pattern = "^BenchmarkLimits$/^rep/^(" + "|".join(re.escape(m) for m in methods) + ")$"
    cmd = [
        str(binary),
        "-test.run=^$",
        f"-test.bench={pattern}",
        "-test.benchtime=1x",
        "-test.timeout=30m",
    ]
    env = dict(
        os.environ, NPSFUSE_LIMITS_REPEAT=str(repeat), NPSFUSE_BENCH_TENSOR_LEN=str(tensor_len)
    )
    res = subprocess.run(
        cmd, cwd=ROOT / "gocore" / "merge", env=env, capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"{binary.name} failed (exit {res.returncode})")
    reps: dict[str, list[dict[str, float]]] = {}
    for line in res.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        method, part, ns, mbs = m.group(1), m.group(2), float(m.group(3)), float(m.group(4))
        lst = reps.setdefault(method, [])
        if part == "triad_before":
            lst.append({})
        lst[-1][part] = mbs
        if part == "merge":
            lst[-1]["merge_ns"] = ns
    return reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (≥ 5)")
    ap.add_argument("--methods", default=",".join(GOALS), help="comma-separated methods")
    ap.add_argument("--name", default="merge_limits", help="results file name")
    ap.add_argument("--note", action="append", default=[], help="extra note for the results")
    ap.add_argument(
        "--tensor-len",
        type=int,
        default=DEFAULT_TENSOR_LEN,
        help="entries per tensor, a multiple of 2048 (26214400: the issue's 4 × 100M shape)",
    )
    args = ap.parse_args()
    if args.repeat < 5:
        ap.error("--repeat must be at least 5")
    if args.tensor_len <= 0 or args.tensor_len % 2048:
        ap.error(f"--tensor-len {args.tensor_len}: want a positive multiple of 2048")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in GOALS]
    if unknown:
        ap.error(f"unknown methods {unknown} (valid: {', '.join(GOALS)})")

    machine = machine_info()  # the load average before the run
    per_merge = 6 * 4 * 4 * args.tensor_len  # (4 models + base + output) × 4 tensors × 4 B
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_merge_limits.") as tmp:
        binary = build(Path(tmp))
        reps = run(binary, methods, args.repeat, args.tensor_len)

    rows = []
    missed = []
    for method in methods:
        runs = [r for r in reps.get(method, []) if len(r) == 4]
        if len(runs) != args.repeat:
            raise SystemExit(f"{method}: {len(runs)} complete repetitions of {args.repeat}")
        pct = [100 * r["merge"] / ((r["triad_before"] + r["triad_after"]) / 2) for r in runs]
        med = statistics.median(pct)
        goal = GOALS[method]
        met = "—" if goal is None else ("yes" if med >= goal else "**no**")
        if goal is not None and med < goal:
            missed.append(method)
        rows.append(
            [
                method,
                "—" if goal is None else f"≥ {goal:g} %",
                med,
                min(pct),
                max(pct),
                statistics.median(r["merge_ns"] for r in runs) / 1e9,
                statistics.median(r["merge"] for r in runs) / 1e3,
                statistics.median((r["triad_before"] + r["triad_after"]) / 2 for r in runs) / 1e3,
                met,
            ]
        )
    rep = Report(
        name=args.name,
        title="Merge kernels vs. memory bandwidth (STREAM triad), same run, paired",
        columns=[
            "method",
            "goal (% of triad)",
            "measured % of triad (median of paired ratios)",
            "min %",
            "max %",
            "merge median s",
            "merge median GB/s",
            "triad median GB/s",
            "met",
        ],
        rows=rows,
        machine=machine,
    )
    rep.baselines["STREAM triad"] = (
        f"a = b + 0.5·c over 3 × {16 * 4 * args.tensor_len / 2**20:.0f} MiB float32, Go, "
        "parallel.Chunk pieces on the default pool "
        "(2 goroutines), run right before and right after each merge; 12 B/element"
    )
    rep.notes += [
        f"{args.repeat} repetitions in one process (go test -benchtime 1x, "
        f"NPSFUSE_LIMITS_REPEAT={args.repeat}), each running every method once; per "
        "repetition and method: triad, merge, triad back to back; the figure is the "
        "median of the per-repetition ratios merge GB/s ÷ mean of the two triads.",
        f"Shape: 4 models × 4 tensors × {args.tensor_len / 2**20:g}Mi float32 (each tensor "
        f"2048 × {args.tensor_len // 2048} rows; {4 * args.tensor_len / 1e6:g}M parameters per "
        "model), inputs base + N(0, 0.01²); density 0.2, λ = 1, seed 1, every other "
        f"parameter its default. {cache_note(per_merge, machine.get('largest_cache_bytes'))}",
        "Merge GB/s counts the least traffic: (models + base + output) × 4 B × parameters, as "
        "bench_merge.md's 'GB moved (min)'. Outputs are allocated and touched once before "
        "timing.",
        "The machine is shared (2 cores, other engineers' jobs): see the load averages below; "
        "the paired ratio cancels slow drifts of the bandwidth, not bursts within one merge.",
        "CPU profiles of the slowest methods before and after issue 15's kernel changes, and a "
        "same-run old/new comparison: merge_limits_profiles.md.",
        f"Total wall time {time.perf_counter() - t0:.0f} s.",
    ]
    rep.notes += args.note
    rep.machine["go"] = subprocess.run(
        ["go", "version"], capture_output=True, text=True
    ).stdout.strip()
    md, _ = rep.write()
    print(f"wrote {md}")
    if missed:
        print(f"below the goal: {', '.join(missed)}", file=sys.stderr)
    # Missing a goal is a finding, not a failure of the benchmark run.
    return 0


if __name__ == "__main__":
    sys.exit(main())
