"""Cold ``npsfuse merge``: inputs read directly (O_DIRECT, a reused ring) vs through the mapping.

Runs on bench_cli's generated 1.1B-parameter bfloat16 model (``bench/work/bench_cli``: run
``python bench/bench_cli.py --keep`` once first). The same binary merges each config twice per
repetition, once with ``NPSFUSE_BUFFERED_READ=1`` (the mapping: page-cache reads, each page
mapped and first touched by the merge) and once with ``NPSFUSE_DIRECT_READ=1`` (the direct
reader; ``npsfuse merge`` picks it by itself only when the inputs exceed half the machine's
memory, which 4 × 2.2 GB do not on a 24 GB machine), in alternating
order, with the inputs evicted from the page cache before every run. The verdict is the median
of the paired ratios mapped/direct over ≥ 5 repetitions, so drifts of the machine (the disk,
the other tenants) cancel. The outputs of the two modes are compared byte for byte.
The sequential read speed of the inputs is measured in every repetition, and the cold first
touch of a page read into the cache (bench_cli.first_touch) once, as context.

Usage: ``python bench/bench_direct_read.py [--methods ties,dare_ties] [--repeat 5]``;
figures go to ``bench/results/direct_read.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import bench_cli as bc
from _common import Report


def same_files(a: Path, b: Path) -> bool:
    """Whether two output folders hold the same files with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ties,dare_ties")
    ap.add_argument("--repeat", type=int, default=5, help="paired repetitions (≥ 5)")
    ap.add_argument("--name", default="direct_read")
    args = ap.parse_args()
    repeat = max(args.repeat, 5)
    inputs = [bc.DATA / "base"] + [bc.DATA / f"ft{i}" for i in range(3)]
    methods = args.methods.split(",")
    missing = [m for m in methods if not (bc.DATA / f"{m}.yaml").exists()]
    if not all(p.is_dir() for p in inputs) or missing:
        sys.exit(f"bench_direct_read: no generated model or config under {bc.DATA} "
                 f"(missing configs: {missing}): run python bench/bench_cli.py --keep first")
    rep = Report(
        name=args.name,
        title="Cold npsfuse merge, 1.1B bf16: direct reading vs the mapping (same binary, paired)",
        columns=["method", "mapped wall s (median)", "direct wall s (median)",
                 "wall ratio mapped/direct (median of paired)", "paired wall ratios",
                 "mapped CPU s (median)", "direct CPU s (median)",
                 "CPU ratio (median of paired)", "mapped peak RSS MB", "direct peak RSS MB",
                 "outputs identical"],
    )
    touch1, touch2, pages = bc.first_touch(inputs)
    rep.baselines["first touch of a page just read into the page cache, µs"] = touch1 / pages * 1e6
    rep.baselines["second touch, µs"] = touch2 / pages * 1e6
    speeds: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    identical = {m: True for m in methods}
    for r in range(repeat):
        n, secs = bc.read_speed(inputs)
        speeds.append(n / secs / 1e9)
        print(f"repetition {r}: sequential read {speeds[-1]:.2f} GB/s", file=sys.stderr)
        for method in methods:
            outs: dict[str, Path] = {}
            pair: dict[str, dict[str, Any]] = {}
            for mode in (["mapped", "direct"] if r % 2 == 0 else ["direct", "mapped"]):
                out = bc.DATA / f"out-direct-read-{method}-{mode}"
                shutil.rmtree(out, ignore_errors=True)
                env = bc.npsfuse_env()
                env["NPSFUSE_BUFFERED_READ" if mode == "mapped" else "NPSFUSE_DIRECT_READ"] = "1"
                bc.evict(inputs)
                cmd = [sys.executable, "-m", "npsfuse.cli", "merge",
                       str(bc.DATA / f"{method}.yaml"), str(out),
                       "--shard-size", str(bc.SHARD_BYTES), "--quiet", "--timing"]
                res = bc.timed(cmd, env)
                if res["returncode"] != 0:
                    sys.exit(f"{method} {mode} failed: {res.get('stderr_tail', '')}")
                pair[mode], outs[mode] = res, out
                print(f"  {method} {mode}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU",
                      file=sys.stderr)
            identical[method] &= same_files(outs["mapped"], outs["direct"])
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
            runs[method].append(pair)
    for method in methods:
        ps = runs[method]

        def med(mode: str, key: str, ps: list[dict[str, Any]] = ps) -> float:
            return statistics.median(p[mode][key] for p in ps)

        wall = [p["mapped"]["wall_s"] / p["direct"]["wall_s"] for p in ps]
        cpu = [p["mapped"]["cpu_s"] / p["direct"]["cpu_s"] for p in ps]
        rep.rows.append([method, med("mapped", "wall_s"), med("direct", "wall_s"),
                         statistics.median(wall), ", ".join(f"{x:.2f}" for x in wall),
                         med("mapped", "cpu_s"), med("direct", "cpu_s"), statistics.median(cpu),
                         max(p["mapped"]["peak_rss_mb"] for p in ps),
                         max(p["direct"]["peak_rss_mb"] for p in ps), identical[method]])
    # Where the wall time went (npsfuse merge --timing, medians over the repetitions).
    keys = ["read_wait_s", "merge_s", "write_wait_s", "writer_s"]
    split: list[list[Any]] = []
    for method in methods:
        for mode in ("mapped", "direct"):
            t = [p[mode].get("timing", {}) for p in runs[method]]
            split.append([method, mode] + [statistics.median(x.get(k, float("nan")) for x in t)
                                           for k in keys])
    rep.extra_tables["Where the time went (--timing, medians)"] = (["method", "mode", *keys], split)
    rep.baselines["sequential read of the inputs, GB/s (per repetition)"] = \
        ", ".join(f"{s:.2f}" for s in speeds)
    rep.notes.append("mapped = NPSFUSE_BUFFERED_READ=1 (page cache, madvise WILLNEED read-ahead, "
                     "MADV_POPULATE_READ per tensor); direct = NPSFUSE_DIRECT_READ=1 (O_DIRECT "
                     "into a reused ring, arrowio/stream/direct.go; the default only for inputs "
                     "larger than half the memory). Same binary, inputs evicted before every run.")
    md, _ = rep.write()
    print(md.read_text())


if __name__ == "__main__":
    main()
