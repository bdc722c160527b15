"""Shared pieces of npsfuse's benchmarks: a same-process memory-bandwidth
baseline (STREAM triad), a timer, and the results writer.

Benchmarks are not tests: they write figures, each next to a baseline measured
in the same run, to ``bench/results/<name>.md`` and ``<name>.json``. Nothing
here asserts a speed.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent


def import_npsfuse() -> Any:
    """Import npsfuse, falling back to the source tree (after ``make build``)."""
    try:
        import npsfuse
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))
        import npsfuse
    return npsfuse


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one callable."""

    runs: list[float]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def measure(
    fn: Callable[[], object],
    *,
    repeat: int = 5,
    warmup: int = 1,
    min_time: float = 0.0,
    max_repeat: int = 100_000,
    deadline: float | None = None,
) -> Timing:
    """Time ``fn()`` with ``time.perf_counter``: ``warmup`` untimed calls, then
    at least ``repeat`` timed calls, continuing (up to ``max_repeat``) until the
    timed calls add up to ``min_time`` seconds. Past ``deadline`` (a
    ``time.perf_counter`` value) no further call starts once one timed call is
    done. The garbage collector is collected before and disabled during the
    timed calls.
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    runs: list[float] = []
    try:
        total = 0.0
        while len(runs) < repeat or (total < min_time and len(runs) < max_repeat):
            if runs and deadline is not None and time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            runs.append(dt)
            total += dt
    finally:
        if was_enabled:
            gc.enable()
    return Timing(runs)


@dataclass
class Triad:
    """STREAM triad a = b + s·c over float32 arrays: bandwidth in GB/s (10⁹ B/s)
    counting 12 bytes per element (two reads, one write)."""

    gbps_best: float
    gbps_median: float
    array_bytes: int
    threads: int
    runs: int


def triad(array_bytes: int = 400_000_000, repeat: int = 10, threads: int | None = None) -> Triad:
    """Measure the STREAM triad in this process with torch on ``threads``
    intra-op threads (default: all cores), arrays of ``array_bytes`` each
    (keep that ≥ 4× the L3 cache). The arrays are touched before timing, so
    page faults are not counted.
    """
    threads = threads or os.cpu_count() or 1
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = array_bytes // 4
        a = torch.zeros(n, dtype=torch.float32)
        b = torch.full((n,), 1.0, dtype=torch.float32)
        c = torch.full((n,), 2.0, dtype=torch.float32)
        t = measure(lambda: torch.add(b, c, alpha=0.5, out=a), repeat=repeat, warmup=1)
        moved = 12 * n
        res = Triad(moved / t.best / 1e9, moved / t.median / 1e9, 4 * n, threads, len(t.runs))
    finally:
        torch.set_num_threads(old)
    return res


def l3_bytes() -> int | None:
    """Size of the largest cache level in bytes, from sysfs (None if unknown)."""
    best: int | None = None
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        s = p.read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
        v = int(s.rstrip("KMG")) * mult
        best = v if best is None else max(best, v)
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id() -> str:
    """Family, model and stepping from /proc/cpuinfo, and the vector extensions
    the kernels choose between (a VM may hide the model name)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping", "flags") and key not in fields:
                fields[key] = val.strip()
    except OSError:
        return "unknown"
    flags = set(fields.get("flags", "").split())
    ext = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return (
        f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
        f"stepping {fields.get('stepping', '?')}; {' '.join(ext) or 'no AVX2/FMA/AVX-512'}"
    )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and when."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "cores": os.cpu_count(),
        "largest_cache_bytes": l3_bytes(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        info["mem_total_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


@dataclass
class Report:
    """A benchmark's results: one table, the baselines, notes."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    baselines: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    extra_tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)

    def write(self) -> tuple[Path, Path]:
        """Write ``results/<name>.md`` and ``results/<name>.json``."""
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        try:
            self.machine["load_average_at_end"] = list(os.getloadavg())
        except OSError:
            pass
        md = RESULTS_DIR / f"{self.name}.md"
        js = RESULTS_DIR / f"{self.name}.json"
        lines = [f"# {self.title}", ""]
        lines += _md_table(self.columns, self.rows)
        for title, (cols, rows) in self.extra_tables.items():
            lines += ["", f"## {title}", ""] + _md_table(cols, rows)
        if self.baselines:
            lines += ["", "## Baselines (same run)", ""]
            lines += [f"- {k}: {_fmt(v)}" for k, v in self.baselines.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        lines += ["", "## Machine", ""] + [f"- {k}: {_fmt(v)}" for k, v in self.machine.items()]
        md.write_text("\n".join(lines) + "\n")
        payload = asdict(self)
        payload["rows"] = [dict(zip(self.columns, r, strict=True)) for r in self.rows]
        payload["extra_tables"] = {
            t: [dict(zip(c, r, strict=True)) for r in rows]
            for t, (c, rows) in self.extra_tables.items()
        }
        js.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return md, js


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 10:
            return f"{v:.3g}"
        if 10 <= abs(v) < 1e12:
            return f"{v:,.1f}"
        return f"{v:.3e}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _md_table(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return out
