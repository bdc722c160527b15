"""The README's quick start against an installed wheel (run by tools/wheel_smoke.sh).

Runs with the fresh venv's Python, outside the source tree, with no Go on PATH.
Checks that npsfuse and its native parts come from the installed wheel, then does
what the README's "Use" section shows: ``npsfuse.merge`` on Hugging Face folders
and a module (checked against the NumPy reference), ``task_vector``, ``methods``,
``npsfuse merge config.yaml out/`` (bit-identical to the in-process merge), and
the bundled daemon: ``npsfused --help`` / ``--version``, then a merge job
submitted through ``npsfuse.client`` (bit-identical too). Exits non-zero, with
the reason, at the first failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


def check(ok: bool, what: str, detail: str = "") -> None:
    """Fail the smoke test with ``what`` (and ``detail``) unless ``ok``."""
    if not ok:
        raise SystemExit(f"wheel smoke: FAILED: {what}\n{detail}".rstrip())
    print(f"ok  {what}")


def model(seed: int) -> nn.Module:
    """A small MLP with a bias and two weight matrices."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))


def finetune(base: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``base`` plus a small random update: a stand-in fine-tune."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}


def hf_folder(sd: dict[str, torch.Tensor], folder: Path) -> str:
    """A Hugging Face-style folder: model.safetensors (and a config.json)."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "mlp"}\n')
    return str(folder)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Equal names, dtypes and values, bit for bit."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv, failing the smoke test on a non-zero exit."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    check(
        p.returncode == 0, f"`{' '.join(cmd)}` exits 0", f"exit {p.returncode}: {p.stderr[-2000:]}"
    )
    return p


def daemon_merge(work: Path, base: dict, fts: list[dict], want: dict) -> None:
    """Start the bundled npsfused on a Unix socket, merge through the client."""
    from npsfuse.client import Client

    d = Path(tempfile.mkdtemp(prefix="npsw-"))  # short: socket paths ≤ 107 bytes
    shm = f"/dev/shm/npsfuse-wheel-smoke-{os.getpid()}"
    log = work / "npsfused.log"
    args = [
        "npsfused", "--listen", f"unix://{d}/d.sock", "--store", str(d / "state" / "jobs.db"),
        "--data-root", str(d), "--shm-dir", shm, "--metrics-listen", "127.0.0.1:0",
        "--memory-budget", "1GiB", "--workers", "1",
    ]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, ready = time.monotonic() + 30, False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text(errors="replace").splitlines():
                try:
                    ready = ready or json.loads(line).get("msg") == "npsfused ready"
                except json.JSONDecodeError:
                    pass
            time.sleep(0.05)
        check(ready, "npsfused starts", log.read_text(errors="replace")[-2000:])
        cfg = {
            "merge_method": "ties",
            "base_model": base,
            "models": [{"model": m} for m in fts],
            "parameters": {"density": 0.2, "lambda": 1.0},
        }
        got = Client(f"unix://{d}/d.sock").submit_merge(cfg).result(timeout=60)
        check(same(got, want), "a merge job in the bundled daemon equals npsfuse.merge")
        proc.send_signal(signal.SIGTERM)
        check(proc.wait(30) == 0, "npsfused stops cleanly on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


def main() -> None:
    """Run every check; the working folder is the first argument."""
    work = Path(sys.argv[1])
    import npsfuse
    from npsfuse import reference
    from npsfuse._native import _gonps

    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    for name, f in [("npsfuse", npsfuse.__file__), ("the extension", _gonps.__file__)]:
        check(Path(f).resolve().is_relative_to(site), f"{name} is the wheel's ({f})")
    check(shutil.which("go") is None, "no `go` on PATH")
    check(shutil.which("gopy") is None, "no `gopy` on PATH")

    base_m = model(0)
    base = {k: v.detach().clone() for k, v in base_m.state_dict().items()}
    fts = [finetune(base_m, s) for s in (1, 2, 3)]
    model_c = model(0)
    model_c.load_state_dict(fts[2])
    paths = [
        hf_folder(sd, work / n) for sd, n in [(base, "base"), (fts[0], "ft-a"), (fts[1], "ft-b")]
    ]

    # README "Use": HF folders and a module, mergekit's conventions
    merged = npsfuse.merge(paths[0], [paths[1], paths[2], model_c],
                           method="ties", density=0.2, lam=1.0)  # fmt: skip
    ref = reference.merge({k: v.numpy() for k, v in base.items()},
                          [{k: v.numpy() for k, v in sd.items()} for sd in fts],
                          "ties", density=0.2, lam=1.0)  # fmt: skip
    err = max(float(np.abs(merged[k].numpy() - ref[k]).max()) for k in ref)
    check(
        merged.keys() == base.keys() and err < 1e-5,
        f"npsfuse.merge ties = NumPy reference ({err:.1e})",
    )
    tau = npsfuse.task_vector(base_m, model_c)
    check(all(torch.equal(tau[k], fts[2][k] - base[k]) for k in base), "npsfuse.task_vector")
    check({"ties", "task_arithmetic", "slerp"} <= set(npsfuse.methods()), "npsfuse.methods()")

    # README "Use": npsfuse merge config.yaml out/
    cfg = work / "config.yaml"
    cfg.write_text(
        "merge_method: ties\n"
        f"base_model: {paths[0]}\n"
        "models:\n"
        + "".join(f"  - model: {p}\n" for p in paths[1:])
        + "parameters:\n  density: 0.2\n  lambda: 1.0\n"
    )
    run("npsfuse", "--help")
    run("npsfuse", "merge", str(cfg), str(work / "out"))
    out = {}
    for f in sorted((work / "out").glob("*.safetensors")):
        out.update(load_file(str(f)))
    want = npsfuse.merge(base, fts[:2], "ties", density=0.2, lam=1.0)
    check(same(out, want), "`npsfuse merge config.yaml out/` equals npsfuse.merge")

    # the bundled daemon
    run("npsfused", "--help")
    v = run("npsfused", "--version").stdout.strip()
    check(v == f"npsfused {npsfuse.__version__}", f"npsfused --version ({v!r})")
    daemon_merge(work, base, fts[:2], want)
    print("wheel smoke: all checks passed")


if __name__ == "__main__":
    main()
