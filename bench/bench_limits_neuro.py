"""NeuroMerging against the memory bandwidth: before/after and SIMD/plain.

Issue 15 asks NeuroMerging for ≥ 15 % of the STREAM triad. This check builds
``gocore/merge``'s test binary four ways: the code at ``--before`` (a git
revision, extracted with ``git archive``) and the working tree, each in the
SIMD build (``GOEXPERIMENT=simd``) and the plain-Go build. It runs
``BenchmarkLimits`` for ``neuro`` alone (triad, merge, triad back to back; 4
models × 4 tensors × 4M float32, every parameter the limits table's) in
``--rounds`` rounds; in every round each binary runs ``--repeat``
repetitions in one process, the binaries in an order that rotates from round
to round. Per repetition the figure is

    % of triad = merge bytes/s ÷ mean(triad bytes/s before, after) × 100,

as in ``bench_merge_limits.py``. Reported: per binary the median % of triad;
per round the paired ratios after ÷ before (SIMD and plain) and SIMD ÷
plain (after), each the ratio of the round's median % of triad, and their
medians. Figures go to ``bench/results/limits_neuro_compare.{md,json}`` with
the CPU model and the load average; the machine may be shared, so only
the ratios of one round (minutes apart at most) are compared.

Run: ``.venv/bin/python bench/bench_limits_neuro.py`` (3-5 minutes).
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

LINE = re.compile(
    r"^BenchmarkLimits/rep\d+/neuro/(triad_before|merge|triad_after)(?:-\d+)?\s+\d+\s+"
    r"([\d.]+) ns/op\s+([\d.]+) MB/s"
)
GOAL = 15.0


def build(src: Path, out: Path, simd: bool) -> None:
    """Compile ``gocore/merge``'s test binary of the tree at ``src``."""
    env = dict(os.environ, GOEXPERIMENT="simd" if simd else "")
    subprocess.run(
        ["go", "test", "-c", "-o", str(out), "./gocore/merge"], cwd=src, env=env, check=True
    )


def run(binary: Path, repeat: int) -> list[tuple[float, float]]:
    """Run BenchmarkLimits' neuro rows ``repeat`` times in one process; per
    repetition (% of triad, merge seconds)."""
    cmd = [
        str(binary),
        "-test.run=^$",
        "-test.bench=^BenchmarkLimits$/^rep/^neuro$",
        "-test.benchtime=1x",
        "-test.timeout=30m",
    ]
    env = dict(os.environ, NPSFUSE_LIMITS_REPEAT=str(repeat))
    res = subprocess.run(
        cmd, cwd=ROOT / "gocore" / "merge", env=env, capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"{binary.name} failed (exit {res.returncode})")
    reps: list[dict[str, float]] = []
    for line in res.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        part, ns, mbs = m.group(1), float(m.group(2)), float(m.group(3))
        if part == "triad_before":
            reps.append({})
        reps[-1][part] = mbs
        if part == "merge":
            reps[-1]["ns"] = ns
    out = [
        (100 * r["merge"] / ((r["triad_before"] + r["triad_after"]) / 2), r["ns"] / 1e9)
        for r in reps
        if len(r) == 4
    ]
    if len(out) != repeat:
        raise SystemExit(f"{binary.name}: {len(out)} complete repetitions of {repeat}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="e1260c8~1", help="git revision of the 'before' code")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (every binary once each)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per binary and round")
    ap.add_argument("--name", default="limits_neuro_compare", help="results file name")
    ap.add_argument("--note", action="append", default=[], help="extra note for the results")
    args = ap.parse_args()
    if args.rounds < 3 or args.repeat < 1:
        ap.error("need --rounds ≥ 3 and --repeat ≥ 1")

    machine = machine_info()
    t0 = time.perf_counter()
    names = ["before simd", "before plain", "after simd", "after plain"]
    pct: dict[str, list[float]] = {n: [] for n in names}
    secs: dict[str, list[float]] = {n: [] for n in names}
    per_round: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench_limits_neuro.") as tmp:
        tdir = Path(tmp)
        old = tdir / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        bins = {}
        for n in names:
            src = old if n.startswith("before") else ROOT
            bins[n] = tdir / (n.replace(" ", "_") + ".test")
            build(src, bins[n], n.endswith("simd"))
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            med: dict[str, float] = {}
            for n in order:
                res = run(bins[n], args.repeat)
                pct[n] += [p for p, _ in res]
                secs[n] += [s for _, s in res]
                med[n] = statistics.median(p for p, _ in res)
            per_round.append(med)

    rows = []
    for n in names:
        m = statistics.median(pct[n])
        goal_met = "yes" if m >= GOAL else "**no**"
        rows.append([n, m, min(pct[n]), max(pct[n]), statistics.median(secs[n]), goal_met])
    ratios = {
        "after ÷ before (SIMD)": [d["after simd"] / d["before simd"] for d in per_round],
        "after ÷ before (plain)": [d["after plain"] / d["before plain"] for d in per_round],
        "SIMD ÷ plain (after)": [d["after simd"] / d["after plain"] for d in per_round],
        "SIMD ÷ plain (before)": [d["before simd"] / d["before plain"] for d in per_round],
    }
    ratio_rows = [
        [k, statistics.median(v), min(v), max(v), ", ".join(f"{x:.3g}" for x in v)]
        for k, v in ratios.items()
    ]
    rep = Report(
        name=args.name,
        title="NeuroMerging vs. the STREAM triad: before/after issue 15's kernels, SIMD/plain",
        columns=[
            "build",
            "% of triad (median)",
            "min %",
            "max %",
            "merge median s",
            f"≥ {GOAL:g} %",
        ],
        rows=rows,
        machine=machine,
    )
    rep.extra_tables["Paired ratios of % of triad (per round, then the median)"] = (
        ["ratio", "median", "min", "max", "per round"],
        ratio_rows,
    )
    rep.baselines["STREAM triad"] = (
        "BenchmarkLimits' triad (a = b + 0.5·c over 3 × 256 MiB float32, 2 goroutines), "
        "right before and right after each merge, in the same process"
    )
    rep.notes += [
        f"before: git revision {args.before}; after: the working tree. {args.rounds} rounds; "
        f"per round each of the four binaries runs {args.repeat} repetitions in one process, "
        "the order rotating from round to round.",
        "Shape: 4 models × 4 tensors × 4M float32 (2048 × 2048), base N(0, 1), models "
        "base + N(0, 0.01²); neuro's defaults (mask_rate 0.5, automatic λ₂, λ₁ = 0), λ = 1.",
        "The machine is shared (2 cores, other engineers' jobs): absolute figures move with "
        "the load (see the load averages); compare the ratios within a round.",
        f"Total wall time {time.perf_counter() - t0:.0f} s.",
    ]
    rep.notes += args.note
    rep.machine["go"] = subprocess.run(
        ["go", "version"], capture_output=True, text=True
    ).stdout.strip()
    md, _ = rep.write()
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
