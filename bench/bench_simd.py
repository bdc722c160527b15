"""The SIMD build against the plain-Go build: no kernel may be slower with vectors.

The default build sets ``GOEXPERIMENT=simd`` (vector loops through Go's
``simd/archsimd``); without it the same kernels build as plain Go with
bit-identical results. On an Intel CPU a vector loop that leaves the upper
halves of the vector registers dirty makes the scalar SSE code after it (PCB's
``math.Exp``) 10-300× slower, so the SIMD build can lose to the plain one by
far on one CPU and win on another (issue 15). This check builds the Go test
binaries of ``gocore/merge``, ``gocore/evolve`` and ``gocore/linalg`` both
ways and runs their benchmarks ``--repeat`` times, each benchmark alone in
the SIMD and the plain build back to back (which goes first alternates):

- every merge method on 4 models × 512K float32 (``BenchmarkMergeSmall``);
- the Evolver kernels: one trial over 1M elements per operator setting
  (``BenchmarkOffspringSmall``) and the dense step on one 2048-element
  sub-block (``BenchmarkDense``);
- the two GEMM shapes of the randomized SVD and the whole randomized SVD at
  512² (``BenchmarkLinalgSmall``).

Per benchmark and repetition the ratio SIMD ns/op ÷ plain ns/op is taken;
the verdict is on the median of those paired ratios, so that a burst of load
from other processes on the shared machine does not decide it. Goal: ratio ≤
1 + ``--tolerance``. Figures go to ``bench/results/simd_vs_plain.{md,json}``
with the CPU model; the exit status is 1 if any goal is missed.

Run: ``.venv/bin/python bench/bench_simd.py`` (2-3 minutes on 2 shared cores).
``--overlay`` builds the SIMD binaries from a ``go build -overlay`` file, for
a before/after comparison of an uncommitted change.
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
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, Report

BUILDS = ("simd", "plain")
GOEXPERIMENT = {"simd": "simd", "plain": ""}


@dataclass(frozen=True)
class Suite:
    """The benchmarks of one Go package that the check runs."""

    pkg: str  # package directory under gocore/
    bench: str  # -test.bench pattern
    keep: str  # regexp a benchmark name must match to be reported


SUITES = (
    Suite("merge", "^BenchmarkMergeSmall$", r"^MergeSmall/"),
    Suite("evolve", "^Benchmark(OffspringSmall|Dense)$", r"^(OffspringSmall/|Dense/.*/dense$)"),
    Suite("linalg", "^BenchmarkLinalgSmall$", r"^LinalgSmall/"),
)

LINE = re.compile(r"^Benchmark(\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op")


def build(tmp: Path, overlay: str | None, suites: list[Suite]) -> dict[tuple[str, str], Path]:
    """Compile the suites' test binaries in both builds."""
    bins = {}
    for s in suites:
        for b in BUILDS:
            out = tmp / f"{s.pkg}.{b}.test"
            env = dict(os.environ, GOEXPERIMENT=GOEXPERIMENT[b])
            cmd = ["go", "test", "-c", "-o", str(out)]
            if overlay and b == "simd":
                cmd.append(f"-overlay={overlay}")
            cmd.append(f"./gocore/{s.pkg}")
            subprocess.run(cmd, cwd=ROOT, env=env, check=True)
            bins[(s.pkg, b)] = out
    return bins


def exact(name: str) -> str:
    """The -test.bench pattern that selects benchmark ``name`` alone (one
    anchored regexp per level: names such as rand/1/bin span levels)."""
    return "/".join(f"^{re.escape(p)}$" for p in ("Benchmark" + name).split("/"))


def run(binary: Path, s: Suite, pattern: str, benchtime: str) -> dict[str, float]:
    """Run the suite's benchmarks that match pattern once; ns/op by name
    (``pkg/Name/sub``)."""
    cmd = [
        str(binary),
        "-test.run=^$",
        f"-test.bench={pattern}",
        f"-test.benchtime={benchtime}",
        "-test.count=1",
        "-test.timeout=20m",
    ]
    res = subprocess.run(cmd, cwd=ROOT / "gocore" / s.pkg, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"{binary.name} failed (exit {res.returncode})")
    out = {}
    for line in res.stdout.splitlines():
        m = LINE.match(line)
        if m and re.search(s.keep, m.group(1)):
            out[f"{s.pkg}/{m.group(1)}"] = float(m.group(3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (≥ 5)")
    ap.add_argument("--benchtime", default="150ms", help="go test -benchtime per benchmark")
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.20,
        help="goal: median SIMD/plain ratio ≤ 1 + tolerance",
    )
    ap.add_argument("--overlay", help="go build -overlay file for the SIMD binaries")
    ap.add_argument(
        "--suites",
        default=",".join(s.pkg for s in SUITES),
        help="comma-separated packages to run (default: all)",
    )
    ap.add_argument("--name", default="simd_vs_plain", help="results file name")
    ap.add_argument("--note", action="append", default=[], help="extra note for the results")
    args = ap.parse_args()
    if args.repeat < 5:
        ap.error("--repeat must be at least 5")

    suites = [s for s in SUITES if s.pkg in args.suites.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_simd.") as tmp:
        bins = build(Path(tmp), args.overlay, suites)
        ns: dict[str, dict[str, list[float]]] = {}  # name -> build -> ns/op per repetition
        # One quick pass of the plain build finds the benchmarks (and warms
        # the caches); then each benchmark runs alone, SIMD and plain back to
        # back, their order alternating, so that each pair sees the same load.
        names = [
            (s, name)
            for s in suites
            for name in sorted(run(bins[(s.pkg, "plain")], s, s.bench, "1x"))
        ]
        for r in range(args.repeat):
            for i, (s, name) in enumerate(names):
                pattern = exact(name.split("/", 1)[1])
                got = {}
                for b in BUILDS if (r + i) % 2 == 0 else BUILDS[::-1]:
                    got[b] = run(bins[(s.pkg, b)], s, pattern, args.benchtime)
                if name in got["simd"] and name in got["plain"]:
                    for b in BUILDS:
                        ns.setdefault(name, {"simd": [], "plain": []})[b].append(got[b][name])
            print(
                f"repetition {r + 1}/{args.repeat} done ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    goal = 1 + args.tolerance
    rows = []
    missed = []
    for name in sorted(ns):
        v = ns[name]
        if len(v["simd"]) != args.repeat:
            continue  # a benchmark that did not run every time (skipped)
        ratios = [a / b for a, b in zip(v["simd"], v["plain"], strict=True)]
        med = statistics.median(ratios)
        met = med <= goal
        if not met:
            missed.append(name)
        rows.append(
            [
                name,
                statistics.median(v["simd"]) / 1e6,
                statistics.median(v["plain"]) / 1e6,
                med,
                min(ratios),
                max(ratios),
                f"≤ {goal:.2f}",
                "yes" if met else "**no**",
            ]
        )
    rep = Report(
        name=args.name,
        title="SIMD build (GOEXPERIMENT=simd) vs. plain-Go build, same kernels, same run",
        columns=[
            "benchmark",
            "SIMD median ms/op",
            "plain median ms/op",
            "SIMD/plain (median of paired ratios)",
            "min ratio",
            "max ratio",
            "goal",
            "met",
        ],
        rows=rows,
    )
    rep.baselines["plain-Go build"] = "the same benchmark in the same run, interleaved"
    rep.notes += [
        f"{args.repeat} repetitions; in each, every benchmark runs alone in both builds back to "
        "back (SIMD first or plain first, alternating); go test -benchtime "
        f"{args.benchtime}; ratio < 1: the SIMD build is faster.",
        f"Goal: the median paired ratio ≤ 1 + {args.tolerance:g} (tolerance for the noise of a "
        "shared machine). Methods whose kernels are scalar in both builds sit near 1.",
        "merge/MergeSmall: 4 models × 2 tensors of 64×4096 float32, density 0.2, λ = 1 "
        "(slerp: 2 models). evolve/OffspringSmall: one trial over 1M elements; evolve/Dense: "
        "one 2048-element sub-block. linalg/LinalgSmall: the randomized SVD's GEMMs (l = 74) "
        "and RandomizedSVD (rank 64, q = 2) at 512².",
        "What a miss means on Intel: legacy SSE code (Go's scalar float code, math.Exp) runs "
        "while a vector loop left the upper halves of the YMM/ZMM registers dirty (no "
        "archsimd.ClearAVXUpperBits after it), or a vector loop contains a legacy SSE "
        "instruction (see gocore/vec/simd_amd64.go); issue 15 measured PCB 21-39× and DARE "
        "7-14× slower than plain Go that way (simd_vs_plain_before_fix.md).",
        f"Total wall time {time.perf_counter() - t0:.0f} s.",
    ]
    if args.overlay:
        rep.notes.append(f"SIMD binaries built with -overlay {Path(args.overlay).name}.")
    rep.notes += args.note
    rep.machine["go"] = subprocess.run(
        ["go", "version"], capture_output=True, text=True
    ).stdout.strip()
    md, _ = rep.write()
    print(f"wrote {md}")
    if missed:
        print(
            f"SIMD build slower than plain beyond {args.tolerance:g}: {', '.join(missed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
