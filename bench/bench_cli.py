"""``npsfuse merge`` against ``mergekit-yaml`` on a generated ~1B-parameter model.

One run generates, under ``bench/work/bench_cli/``, a Llama-shaped base model
(TinyLlama-1.1B's shape: hidden 2048, 22 layers, vocabulary 32 000) and three
fine-tunes of it with random weights, stored as bfloat16 in sharded
safetensors with an index, then merges them with ``ties`` and
``task_arithmetic`` using the npsfuse command line and mergekit (installed from
PyPI into its own venv, ``bench/work/mergekit-venv``) with the same config.

Per run: wall time and peak RSS (``/usr/bin/time -v``), with the page cache
emptied of the inputs before each run (``posix_fadvise(DONTNEED)``), so every
run reads its inputs from disk. The read speed of the same files is measured
in the same run, three ways: one sequential stream (16 MiB reads), four
threads reading at once (4 MiB preads), and queued read-ahead as ``npsfuse
merge`` does it; bytes read / the sequential speed is the disk-read bound, and
bytes read / the fastest of the three the parallel disk-read bound.
Outputs of the two tools are compared tensor by tensor (max abs difference and
the number of differing elements). Both configs compute in float32 and write
bfloat16 (``dtype: float32``, ``out_dtype: bfloat16``).

Besides ``ties`` and ``task_arithmetic`` it runs two configs in mergekit's
documented shapes: ``slerp_gradient`` (slerp of the base and one fine-tune with a
``t`` gradient per filter, mergekit's README example) and ``slices`` (a
passthrough frankenmerge: the first three quarters of one fine-tune's layers
stacked on the last three quarters of another's).

Usage: ``python bench/bench_cli.py [--preset 1b|small|tiny] [--methods ...] [--mergekit PATH]
[--keep] [--reuse] [--warm]``.
Figures go to ``bench/results/bench_cli.md`` and ``.json`` (``bench_cli_warm.*`` with
``--warm``, where the inputs are read into the page cache before each run instead;
a preset other than ``1b`` adds its name: ``bench_cli_small.*``).
Generated data is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _common import BENCH_DIR, ROOT, Report
from safetensors import safe_open
from safetensors.torch import save_file

WORK = BENCH_DIR / "work"
DATA = WORK / "bench_cli"
MERGEKIT_VENV = WORK / "mergekit-venv"
MERGEKIT = MERGEKIT_VENV / "bin" / "mergekit-yaml"

#: Model shapes: ``1b`` is TinyLlama-1.1B's (1.10 B parameters); ``small``
#: (0.16 B: TinyLlama's vocabulary, half its width, 8 layers) runs every
#: method against mergekit in a few minutes on 2 cores; ``tiny`` checks the
#: script in seconds.
PRESETS: dict[str, dict[str, int]] = {
    "1b": {"vocab": 32000, "hidden": 2048, "inter": 5632, "layers": 22, "heads": 32, "kv": 4},
    "small": {"vocab": 32000, "hidden": 1024, "inter": 2816, "layers": 8, "heads": 16, "kv": 4},
    "tiny": {"vocab": 512, "hidden": 128, "inter": 344, "layers": 2, "heads": 4, "kv": 2},
}
SHARD_BYTES = 1_000_000_000  # input and output shards (bf16: 500 M parameters)
STD, DELTA = 0.02, 0.002  # entries of the base; of the task vectors
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def llama_config(p: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": p["vocab"], "hidden_size": p["hidden"], "intermediate_size": p["inter"],
        "num_hidden_layers": p["layers"], "num_attention_heads": p["heads"],
        "num_key_value_heads": p["kv"], "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def tensor_specs(p: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Llama's state-dict names and shapes, in Hugging Face's order."""
    h, i, kv = p["hidden"], p["inter"], p["hidden"] // p["heads"] * p["kv"]
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (p["vocab"], h))]
    for layer in range(p["layers"]):
        pre = f"model.layers.{layer}."
        specs += [
            (pre + "self_attn.q_proj.weight", (h, h)), (pre + "self_attn.k_proj.weight", (kv, h)),
            (pre + "self_attn.v_proj.weight", (kv, h)), (pre + "self_attn.o_proj.weight", (h, h)),
            (pre + "mlp.gate_proj.weight", (i, h)), (pre + "mlp.up_proj.weight", (i, h)),
            (pre + "mlp.down_proj.weight", (h, i)),
            (pre + "input_layernorm.weight", (h,)), (pre + "post_attention_layernorm.weight", (h,)),
        ]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (p["vocab"], h))]
    return specs


def _gen(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def draw(name: str, shape: tuple[int, ...], model: int) -> torch.Tensor:
    """Tensor ``name`` of the base (model −1) or of fine-tune ``model``, bf16.
    Each tensor depends only on its name and model, so none is kept around."""
    if len(shape) == 1:  # RMSNorm weights sit near 1
        base = 1 + STD * torch.randn(shape, generator=_gen(-1, name))
    else:
        base = STD * torch.randn(shape, generator=_gen(-1, name))
    base = base.to(torch.bfloat16)
    if model < 0:
        return base
    delta = DELTA * torch.randn(shape, generator=_gen(model, name))
    return (base.float() + delta).to(torch.bfloat16)


def write_checkpoint(path: Path, p: dict[str, int], model: int) -> int:
    """Write a sharded bf16 checkpoint (with index and config.json); returns bytes."""
    path.mkdir(parents=True, exist_ok=True)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensor_specs(p):
        n = 2 * int(torch.tensor(shape).prod()) if shape else 2
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: draw(name, shape, model) for name, shape in group}
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(llama_config(p), indent=2))
    return total


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (they are clean after fsync)."""
    for root in paths:
        for f in [root] if root.is_file() else sorted(root.rglob("*")):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def cached_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' bytes in the page cache (util-linux fincore)."""
    exe = shutil.which("fincore")
    if not exe:
        return None
    files = [str(f) for p in paths for f in sorted(p.glob("*.safetensors"))]
    r = subprocess.run([exe, "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE", *files],
                       capture_output=True, text=True, check=False)
    res = size = 0
    for line in r.stdout.split("\n"):
        if line.strip():
            a, b = line.split()
            res, size = res + int(a), size + int(b)
    return res / size if size else None


def read_speed(paths: list[Path]) -> tuple[int, float]:
    """Read every weight file sequentially from disk; returns (bytes, seconds)."""
    evict(paths)
    return read_all(paths)


def read_speed_parallel(paths: list[Path], streams: int = 4,
                        block: int = 4 << 20) -> tuple[int, float]:
    """Read every weight file from disk with ``streams`` threads at once, each
    reading its own contiguous share of the files in ``block``-byte preads
    (queue depth ``streams``); returns (bytes, seconds)."""
    evict(paths)
    files = [f for p in paths for f in sorted(p.glob("*.safetensors"))]
    spans = [(f, f.stat().st_size) for f in files]
    total = sum(n for _, n in spans)
    share = -(-total // streams)
    work: list[list[tuple[Path, int, int]]] = [[] for _ in range(streams)]
    pos = 0
    for f, size in spans:  # cut the concatenated files into `streams` shares
        off = 0
        while off < size:
            k = min(pos // share, streams - 1)
            n = min(size - off, (k + 1) * share - pos)
            work[k].append((f, off, n))
            off, pos = off + n, pos + n
    done = [0] * streams

    def reader(k: int) -> None:
        buf = memoryview(bytearray(block))
        for f, off, n in work[k]:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, off, n, os.POSIX_FADV_SEQUENTIAL)
                end = off + n
                while off < end:
                    got = os.preadv(fd, [buf[:min(block, end - off)]], off)
                    if got <= 0:
                        break
                    off += got
                    done[k] += got
            finally:
                os.close(fd)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.perf_counter() - t0


def read_speed_queued(paths: list[Path], block: int = 2 << 20,
                      ahead: int = 256 << 20) -> tuple[int, float]:
    """Read every weight file from disk the way ``npsfuse merge`` reads ahead:
    one thread asks the kernel for ``block``-byte pieces (posix_fadvise
    WILLNEED, which queues the reads without waiting) up to ``ahead`` bytes
    beyond the piece it waits for (by reading its last byte); returns
    (bytes, seconds)."""
    evict(paths)
    files = [f for p in paths for f in sorted(p.glob("*.safetensors"))]
    fds = [os.open(f, os.O_RDONLY) for f in files]
    try:
        pieces = [(fd, off, min(block, f.stat().st_size - off))
                  for fd, f in zip(fds, files, strict=True)
                  for off in range(0, f.stat().st_size, block)]
        t0 = time.perf_counter()
        asked = queued = total = 0
        for fd, off, n in pieces:
            while asked < len(pieces) and queued < ahead:
                afd, aoff, an = pieces[asked]
                os.posix_fadvise(afd, aoff, an, os.POSIX_FADV_WILLNEED)
                asked, queued = asked + 1, queued + an
            os.pread(fd, 1, off + n - 1)
            total, queued = total + n, queued - n
        return total, time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)


def first_touch(paths: list[Path]) -> tuple[float, float, int]:
    """CPU cost of the first read of each page of the files after they came from disk.

    The files are evicted; then each is mapped and populated
    (``MADV_POPULATE_READ``: read from disk and mapped, as ``npsfuse merge``
    does before merging a tensor), and one byte of every page is read twice.
    Returns the seconds of the first and of the second pass over all the
    pages, and the page count. Where the first pass costs far more than the
    second (a virtual machine whose host maps guest memory in on first use),
    every tool that reads a cold checkpoint pays that per page, on top of
    the disk.
    """
    import numpy as np

    evict(paths)
    first = second = 0
    pages = 0
    for f in [f for p in paths for f in sorted(p.glob("*.safetensors"))]:
        with f.open("rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                mm.madvise(getattr(mmap, "MADV_POPULATE_READ", 22))
                a = np.frombuffer(mm, dtype=np.uint8)
                t0 = time.perf_counter_ns()
                a[::mmap.PAGESIZE].sum(dtype=np.int64)
                t1 = time.perf_counter_ns()
                a[64::mmap.PAGESIZE].sum(dtype=np.int64)
                t2 = time.perf_counter_ns()
                del a
            finally:
                mm.close()
        first, second = first + t1 - t0, second + t2 - t1
        pages += -(-f.stat().st_size // mmap.PAGESIZE)
    return first / 1e9, second / 1e9, pages


def read_all(paths: list[Path]) -> tuple[int, float]:
    """Read every weight file once (into the page cache); returns (bytes, seconds)."""
    files = [f for p in paths for f in sorted(p.glob("*.safetensors"))]
    buf = bytearray(16 << 20)
    total = 0
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := fh.readinto(buf):
                total += n
    return total, time.perf_counter() - t0


_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_CPU = re.compile(r"(?:User|System) time \(seconds\): ([0-9.]+)")


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds, peak RSS, status."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env,
                       check=False)
    wall = time.perf_counter() - t0
    m = _RSS.search(r.stderr)
    out = {"wall_s": wall, "peak_rss_mb": int(m.group(1)) / 1024 if m else float("nan"),
           "cpu_s": sum(float(x) for x in _CPU.findall(r.stderr)), "returncode": r.returncode}
    if r.returncode != 0:
        out["stderr_tail"] = r.stderr[-3000:]
    for line in r.stderr.splitlines():  # npsfuse merge --timing
        if line.startswith("npsfuse: timing: "):
            out["timing"] = json.loads(line.removeprefix("npsfuse: timing: "))
    return out


def npsfuse_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    return env


def weight_files(d: Path) -> dict[str, Path]:
    """Tensor name → shard of an output folder."""
    idx = d / "model.safetensors.index.json"
    if idx.is_file():
        return {k: d / v for k, v in json.loads(idx.read_text())["weight_map"].items()}
    out: dict[str, Path] = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            out.update({k: f for k in fh.keys()})
    return out


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Max |a − b| over all tensors (float32), the number of differing elements,
    and dtype/name mismatches."""
    fa, fb = weight_files(a), weight_files(b)
    res: dict[str, Any] = {"max_abs_diff": 0.0, "elements_differing": 0, "elements": 0,
                           "tensors_differing": 0, "names_only_in_one": sorted(set(fa) ^ set(fb)),
                           "dtypes": set()}
    for name in sorted(set(fa) & set(fb)):
        with safe_open(fa[name], "pt") as ha, safe_open(fb[name], "pt") as hb:
            ta, tb = ha.get_tensor(name), hb.get_tensor(name)
        res["dtypes"].add(f"{ta.dtype}/{tb.dtype}")
        d = (ta.float() - tb.float()).abs()
        n = int((d != 0).sum())
        res["elements"] += d.numel()
        res["elements_differing"] += n
        res["tensors_differing"] += n > 0
        if n:
            res.setdefault("differing_tensors", []).append(name)
        res["max_abs_diff"] = max(res["max_abs_diff"], float(d.max()) if d.numel() else 0.0)
    res["dtypes"] = sorted(res["dtypes"])
    return res


def explain_ties(base: Path, models: list[Path], a: Path, b: Path, names: list[str],
                 density: float) -> dict[str, Any]:
    """For each named tensor, check that every element where the two ties
    outputs differ is one where some model's |τ| equals its top-k cut (a tie
    at the threshold, broken differently): the count of differing elements
    and of those explained that way."""
    files = [weight_files(d) for d in (base, *models, a, b)]

    def get(i: int, name: str) -> torch.Tensor:
        with safe_open(files[i][name], "pt") as fh:
            return fh.get_tensor(name).float().reshape(-1)

    differing = explained = 0
    for name in names:
        d = get(len(models) + 1, name) != get(len(models) + 2, name)
        idx = d.nonzero().squeeze(1)
        b0 = get(0, name)
        at_cut = torch.zeros(idx.numel(), dtype=torch.bool)
        for m in range(len(models)):
            tau = (get(m + 1, name) - b0).abs()
            k = max(1, int(density * tau.numel()))
            cut = tau.kthvalue(tau.numel() - k + 1).values
            at_cut |= tau[idx] == cut
        differing += idx.numel()
        explained += int(at_cut.sum())
    return {"tensors_checked": len(names), "elements_differing": differing,
            "explained_by_ties_at_the_cut": explained}


def ensure_mergekit(notes: list[str]) -> bool:
    """mergekit in its own venv (created with ``pip install mergekit`` if absent)."""
    if MERGEKIT.exists():
        return True
    print("installing mergekit into", MERGEKIT_VENV, file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MERGEKIT_VENV)], check=True)
        pip = [str(MERGEKIT_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        r = subprocess.run([*pip, "mergekit"], capture_output=True, text=True, check=False)
    except (OSError, subprocess.CalledProcessError) as exc:
        notes.append(f"mergekit could not be installed: {exc}")
        return False
    if r.returncode != 0 or not MERGEKIT.exists():
        notes.append("`pip install mergekit` failed: " + r.stderr.strip()[-1000:])
        return False
    return True


def mergekit_version() -> str:
    r = subprocess.run([str(MERGEKIT.parent / "python"), "-c",
                        "import importlib.metadata as m; print(m.version('mergekit'), "
                        "m.version('torch'))"],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip()


#: slerp's t per filter, mergekit's README example: a gradient over the layers.
SLERP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


#: Methods whose npsfuse wall time has a goal against the same run's disk-read bound.
GOAL_METHODS = ("ties", "dare_ties")


def configs(base: Path, models: list[Path], layers: int) -> dict[str, dict[str, Any]]:
    """The same mergekit-schema config for both tools, per method: compute in
    float32, write bfloat16; weights 1 and normalize for ties, where mergekit's
    and npsfuse's semantics agree. ``slices`` stacks layers [0, ¾L) of the
    first fine-tune on [¼L, L) of the second (passthrough)."""
    common = {"base_model": str(base), "dtype": "float32", "out_dtype": "bfloat16"}
    q = layers // 4
    return {
        "slerp_gradient": {
            "merge_method": "slerp", **common,
            "models": [{"model": str(base)}, {"model": str(models[0])}],
            "parameters": {"t": SLERP_T},
        },
        "slices": {
            "merge_method": "passthrough", "dtype": "float32", "out_dtype": "bfloat16",
            "slices": [
                {"sources": [{"model": str(models[0]), "layer_range": [0, layers - q]}]},
                {"sources": [{"model": str(models[1]), "layer_range": [q, layers]}]},
            ],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic", **common,
            "models": [{"model": str(m), "parameters": {"weight": w}}
                       for m, w in zip(models, [1.0, 0.5, 0.7], strict=True)],
        },
        "ties": {
            "merge_method": "ties", **common,
            "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}}
                       for m in models],
            "parameters": {"normalize": True, "int8_mask": True},
        },
        "dare_ties": {
            "merge_method": "dare_ties", **common,
            "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}}
                       for m in models],
            "parameters": {"normalize": True, "int8_mask": True},
        },
    }


def main() -> None:
    global MERGEKIT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--methods", default="ties,task_arithmetic,slerp_gradient,slices")
    ap.add_argument("--mergekit", type=Path, default=MERGEKIT,
                    help="the mergekit-yaml to compare with (default: installed into "
                         "bench/work/mergekit-venv on first use)")
    ap.add_argument("--no-mergekit", action="store_true", help="time npsfuse alone")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse checkpoints a --keep run left (same preset)")
    ap.add_argument("--warm", action="store_true",
                    help="read the inputs into the page cache before each run instead of "
                         "evicting them (results in bench_cli_warm.*)")
    ap.add_argument("--name", help="results file name (default: bench_cli, bench_cli_warm, "
                                   "with _PRESET for other presets)")
    args = ap.parse_args()
    MERGEKIT = args.mergekit.absolute()
    p = PRESETS[args.preset]
    notes: list[str] = []
    cache = "warm" if args.warm else "cold"
    report = Report(  # made first: its machine info records the load at the start
        name=args.name or (("bench_cli_warm" if args.warm else "bench_cli")
                           + ("" if args.preset == "1b" else f"_{args.preset}")), title="",
        columns=["method", "tool", "wall s", "CPU s (user+sys)", "peak RSS MB",
                 "disk-read bound s", "wall / disk bound", "parallel disk-read bound s",
                 "wall / parallel bound", "mergekit wall / npsfuse wall",
                 "mergekit CPU / npsfuse CPU", "npsfuse RSS / mergekit RSS",
                 "max abs diff (npsfuse vs mergekit)", "elements differing", "elements"],
    )
    have_mk = not args.no_mergekit and ensure_mergekit(notes)
    base = DATA / "base"
    models = [DATA / f"ft{i}" for i in range(3)]
    reuse = args.reuse and all((d / "model.safetensors.index.json").is_file()
                               for d in (base, *models))
    if not reuse:
        shutil.rmtree(DATA, ignore_errors=True)
        DATA.mkdir(parents=True)
    else:
        for stale in DATA.glob("*out-*"):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        if reuse:
            nbytes = json.loads((base / "model.safetensors.index.json").read_text())[
                "metadata"]["total_size"]
        else:
            nbytes = write_checkpoint(base, p, -1)
            for i, m in enumerate(models):
                write_checkpoint(m, p, i)
        gen_s = time.perf_counter() - t0
        params = nbytes // 2
        inputs = [base, *models]
        print(f"generated 4 × {params / 1e9:.3f} B parameters in {gen_s:.0f} s", file=sys.stderr)
        read_bytes, read_s = read_speed(inputs)
        speed = read_bytes / read_s
        par_bytes, par_s = read_speed_parallel(inputs)
        q_bytes, q_s = read_speed_queued(inputs)
        q_cached = cached_fraction(inputs)  # WILLNEED really read every piece
        touch1, touch2, pages = first_touch(inputs)
        # The fastest way of reading the files measured here bounds any tool.
        fast = max(par_bytes / par_s, q_bytes / q_s, speed)
        import_rss = {
            "npsfuse": timed([sys.executable, "-c", "import npsfuse"], npsfuse_env()),
        }
        if have_mk:
            import_rss["mergekit"] = timed(
                [str(MERGEKIT.parent / "python"), "-c",
                 "import mergekit.merge, mergekit.config"], {**os.environ, **OFFLINE})
        rows: list[list[Any]] = []
        runs: dict[str, dict[str, Any]] = {}
        for method in args.methods.split(","):
            cfg = configs(base, models, p["layers"])[method]
            cfg_path = DATA / f"{method}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            outs: dict[str, Path] = {}
            tools = ["npsfuse"] + (["mergekit"] if have_mk else [])
            for tool in tools:
                out = DATA / f"out-{method}-{tool}"
                if tool == "npsfuse":
                    cmd = [sys.executable, "-m", "npsfuse.cli", "merge", str(cfg_path), str(out),
                           "--shard-size", str(SHARD_BYTES), "--quiet", "--timing"]
                    env = npsfuse_env()
                else:
                    cmd = [str(MERGEKIT), str(cfg_path), str(out), "--quiet",
                           "--out-shard-size", str(SHARD_BYTES // 2)]
                    env = {**os.environ, **OFFLINE}
                if args.warm:
                    read_all(inputs)
                else:
                    evict(inputs)
                cached = cached_fraction(inputs)
                print(f"{method}: {tool} …", file=sys.stderr)
                r = timed(cmd, env)
                r["inputs_cached_before"] = cached
                runs[f"{method}/{tool}"] = r
                if r["returncode"] != 0:
                    notes.append(f"{tool} {method} failed (exit {r['returncode']}): "
                                 + r.get("stderr_tail", "")[-800:])
                    continue
                outs[tool] = out
                print(f"  {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
            cmp = compare(outs["npsfuse"], outs["mergekit"]) if len(outs) == 2 else None
            if cmp:
                runs[f"{method}/compare"] = cmp
                if method == "ties" and cmp.get("differing_tensors"):
                    sample = sorted(cmp.pop("differing_tensors"),
                                    key=lambda k: ("layers" not in k, k))[:6]
                    runs["ties/tie-check"] = explain_ties(
                        base, models, outs["npsfuse"], outs["mergekit"], sample, 0.5)
                cmp.pop("differing_tensors", None)
            n, mk = runs.get(f"{method}/npsfuse", {}), runs.get(f"{method}/mergekit", {})
            for tool in tools:
                r = runs[f"{method}/{tool}"]
                row = [method, tool, r["wall_s"], r["cpu_s"], r["peak_rss_mb"],
                       read_bytes / speed, r["wall_s"] / (read_bytes / speed),
                       read_bytes / fast, r["wall_s"] / (read_bytes / fast)]
                if tool == "npsfuse" and mk.get("returncode") == 0:
                    row += [mk["wall_s"] / n["wall_s"], mk["cpu_s"] / n["cpu_s"],
                            n["peak_rss_mb"] / mk["peak_rss_mb"]]
                else:
                    row += ["", "", ""]
                if cmp and tool == "npsfuse":
                    row += [cmp["max_abs_diff"], cmp["elements_differing"], cmp["elements"]]
                else:
                    row += ["", "", ""]
                rows.append(row)
            for o in outs.values():
                shutil.rmtree(o, ignore_errors=True)
        report.title = (f"npsfuse merge vs mergekit-yaml: {params / 1e9:.2f} B-parameter Llama, "
                        f"base + 3 fine-tunes, bf16, sharded safetensors, {cache} page cache")
        report.rows = rows
        report.baselines = {
            "parameters per model": params,
            "bytes read per merge (4 checkpoints)": read_bytes,
            "sequential read speed of those files, cold (GB/s)": speed / 1e9,
            "disk-read bound (s)": read_bytes / speed,
            "parallel read speed, cold, 4 threads × 4 MiB preads (GB/s)": par_bytes / par_s / 1e9,
            "queued read speed, cold, 2 MiB WILLNEED pieces up to 256 MiB ahead (GB/s)":
                q_bytes / q_s / 1e9,
            "fraction of the files in the page cache after the queued read (fincore)": q_cached,
            "parallel disk-read bound (s): bytes / the fastest of the three speeds":
                read_bytes / fast,
            "first read of every page of the inputs just read from disk, after "
            "MADV_POPULATE_READ, one byte a page (s)": touch1,
            "second read of the same pages (s)": touch2,
            "first-touch cost per page (ns): (first − second) / pages":
                (touch1 - touch2) / pages * 1e9,
            "generation of the 4 checkpoints (s)": gen_s if not reuse else "reused",
            "peak RSS of `import npsfuse` alone (MB)": import_rss["npsfuse"]["peak_rss_mb"],
        }
        if "mergekit" in import_rss:
            report.baselines["peak RSS of `import mergekit` alone (MB)"] = (
                import_rss["mergekit"]["peak_rss_mb"])
            report.baselines["mergekit, torch (its venv)"] = mergekit_version()
        report.notes = notes + [
            "Each run starts with the four input checkpoints read into the page cache "
            "('inputs_cached_before' in the JSON is fincore's fraction cached), so neither tool "
            "waits for the disk; the disk-read bound is for reference." if args.warm else
            "Each run starts with the four input checkpoints evicted from the page cache "
            "(fsync + posix_fadvise DONTNEED; 'inputs_cached_before' in the JSON is fincore's "
            "fraction still cached), so each reads them from disk.",
            "Same YAML for both tools: dtype float32 (compute), out_dtype bfloat16; "
            "task_arithmetic with weights 1, 0.5, 0.7; ties with weights 1, density 0.5, "
            "normalize true, int8_mask true (ignored by npsfuse with a note); slerp_gradient: "
            "slerp of the base and fine-tune 0 with t per filter (self_attn [0, 0.5, 0.3, 0.7, 1], "
            "mlp [1, 0.5, 0.7, 0.3, 0], else 0.5: mergekit's README example); slices: passthrough "
            "of fine-tune 0's layers [0, ¾L) then fine-tune 1's [¼L, L) (1.5·L layers out).",
            "Output shards of 1 GB for both (npsfuse --shard-size 1000000000, mergekit "
            "--out-shard-size 500M parameters). npsfuse fsyncs each shard before renaming it; "
            "mergekit does not fsync.",
            "Peak RSS is /usr/bin/time -v's maximum resident set size, which counts mapped file "
            "pages a process has touched, and the interpreter with torch imported.",
            "Differences in ties come from the top-k cut when several |τ| tie at the threshold: "
            "npsfuse keeps the lowest indices (documented, deterministic), mergekit whatever "
            "torch.argsort (not stable) puts first.",
            "dare_ties: same parameters as ties; its outputs differ from mergekit's because the "
            "random drops differ (npsfuse's counter-based generator, torch's bernoulli): the "
            "differential tests compare their statistics instead (tests/test_mergekit*.py).",
            "Differences in slerp_gradient come from slerp's coefficients: npsfuse computes cos Ω "
            "and the two coefficients in float64, mergekit in float32 (element by element in "
            "tests/test_mergekit_compat.py::test_slerp_differences_are_its_coefficients); rounded "
            "to bfloat16, a few entries per thousand fall on the other side of a rounding "
            "boundary. slices (passthrough) copies values and must be bit for bit mergekit's.",
            f"Model size: preset {args.preset} ({p['layers']} layers, hidden {p['hidden']}, "
            f"intermediate {p['inter']}, vocabulary {p['vocab']}); mergekit-yaml: {MERGEKIT}.",
            "Default threads for both (all cores). Other jobs may share the machine (see the "
            "load averages below); CPU seconds (user+sys from /usr/bin/time) are less "
            "sensitive to that than wall time.",
        ]
        goals = [[r[0], "wall / disk-read bound ≤ 1.5 (issue 15)", r[6],
                  "yes" if r[6] <= 1.5 else "no"]
                 for r in rows if r[1] == "npsfuse" and r[0] in GOAL_METHODS]
        if goals:
            report.extra_tables["Goals"] = (["method", "goal", "measured", "met"], goals)
        report.extra_tables["Runs (raw)"] = (
            ["run", "result"], [[k, json.dumps(v, default=str)[:800]] for k, v in runs.items()])
        md, js = report.write()
        print(md.read_text())
    finally:
        if not args.keep:
            shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
