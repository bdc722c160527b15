"""Call overhead of the tensor bridge (torch → Arrow C Data Interface → Go).

For float32 tensors of 1 MiB … 1 GiB this times

(a) the bridge's full round trip: ``ArrowPack`` (export to Arrow C structs)
    plus ``_core.go.Inspect`` (import in Go, validate, release), and
(b) a copy through NumPy, ``np.array(t.numpy(), copy=True)``, as the baseline
    the bridge avoids,

both in this process, and writes µs per call and their ratio to
``bench/results/bench_bridge.{md,json}``. The issue's goal: the bridge is flat
in the tensor size and at most 50 µs per call.

Run: ``PYTHONPATH=python .venv/bin/python bench/bench_bridge.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import Report, import_npsfuse, measure

npsfuse = import_npsfuse()
from npsfuse import _core  # noqa: E402
from npsfuse._bridge import ArrowPack  # noqa: E402

MIB = 1 << 20
SIZES = [1 * MIB, 16 * MIB, 256 * MIB, 1024 * MIB]
GOAL_US = 50.0


def bridge_call(items: list[tuple[str, torch.Tensor]]) -> int:
    """One round trip: pack, import/validate/release in Go."""
    pack = ArrowPack(items)
    return int(_core.go.Inspect(pack.arrays, pack.schemas, pack.count))


def pack_only(items: list[tuple[str, torch.Tensor]]) -> None:
    """Pack and let Python release the structs (no Go call)."""
    ArrowPack(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per case")
    args = ap.parse_args()

    torch.set_num_threads(2)
    rep = Report(
        name="bench_bridge",
        title="Tensor bridge call overhead vs. a NumPy copy (float32, one tensor per call)",
        columns=[
            "tensor",
            "bridge best µs",
            "bridge median µs",
            "pack only median µs",
            "numpy copy best µs",
            "numpy copy median µs",
            "copy / bridge (median)",
            f"bridge ≤ {GOAL_US:.0f} µs",
        ],
    )
    bridge_medians: list[float] = []
    for nbytes in SIZES:
        t = torch.ones(nbytes // 4, dtype=torch.float32)
        items = [("w", t)]
        if bridge_call(items) != nbytes:  # the round trip must really see the tensor
            raise RuntimeError("Inspect reported a different size")
        tb = measure(
            lambda items=items: bridge_call(items), repeat=200, warmup=20, min_time=args.min_time
        )
        tp = measure(
            lambda items=items: pack_only(items), repeat=200, warmup=20, min_time=args.min_time / 2
        )
        tc = measure(
            lambda t=t: np.array(t.numpy(), copy=True),
            repeat=5,
            warmup=1,
            min_time=args.min_time,
            max_repeat=2000,
        )
        bridge_medians.append(tb.median)
        rep.rows.append(
            [
                f"{nbytes // MIB} MiB",
                tb.best * 1e6,
                tb.median * 1e6,
                tp.median * 1e6,
                tc.best * 1e6,
                tc.median * 1e6,
                tc.median / tb.median,
                "yes" if tb.median * 1e6 <= GOAL_US else "no",
            ]
        )
        print(rep.rows[-1], flush=True)
        del t, items

    # How the bridge scales with the number of tensors in one call (a merge of
    # 25 tensors × (base + 4 models + output) packs 150).
    counts = [1, 10, 150, 1000]
    small = torch.ones(MIB // 4, dtype=torch.float32)
    scaling: list[list[object]] = []
    for n in counts:
        items = [(f"t{i}", small) for i in range(n)]
        tb = measure(
            lambda items=items: bridge_call(items), repeat=20, warmup=3, min_time=args.min_time
        )
        scaling.append([n, tb.median * 1e6, tb.median * 1e6 / n])
    rep.extra_tables["Bridge cost by number of tensors per call (1 MiB each)"] = (
        ["tensors", "bridge median µs", "µs per tensor"],
        scaling,
    )

    spread = max(bridge_medians) / min(bridge_medians)
    rep.baselines["numpy copy"] = "np.array(t.numpy(), copy=True), timed in the same run"
    rep.baselines["bridge median, largest / smallest size"] = spread
    rep.notes += [
        "bridge = ArrowPack([(name, t)]) + _core.go.Inspect(arrays, schemas, n): export to "
        "Arrow C structs, import and validate in Go, release; tensor data is never read.",
        "pack only = ArrowPack alone, released by its __del__ (no Go call).",
        "numpy copy allocates a fresh array per call, so its time includes page faults, "
        "as a real copy would.",
        f"Goal (issue): bridge flat in size and ≤ {GOAL_US:.0f} µs per call.",
    ]
    md, js = rep.write()
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
