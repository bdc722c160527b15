"""``npsfuse merge`` refuses inputs that are not regular files (issue 16,
Medium 9 and Low 15): a FIFO named like a weight file, a config.json, a
tokenizer file, statistics or the YAML config itself is reported at once,
naming the file, instead of hanging the merge; a folder given as the
config says it is a folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import npsfuse
import pytest
import torch
import yaml
from safetensors.torch import save_file


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(npsfuse.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_merge(*args: str) -> subprocess.CompletedProcess[str]:
    """``npsfuse merge ARGS`` in a child process; a hang fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "npsfuse.cli", "merge", *args],
            capture_output=True, text=True, env=_env(), timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"npsfuse merge {' '.join(args)} hung")


def checkpoints(tmp: Path) -> list[Path]:
    g = torch.Generator().manual_seed(3)
    base = {"a.weight": torch.randn(6, 4, generator=g), "b.bias": torch.randn(4, generator=g)}
    dirs = []
    for i, name in enumerate(("base", "ft0")):
        d = tmp / name
        d.mkdir()
        sd = {k: v + 0.1 * i for k, v in base.items()}
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text('{"model_type": "tiny"}')
        (d / "tokenizer.json").write_text("{}")
        dirs.append(d)
    return dirs


def fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "where",
    ["base weights", "model weights", "base config.json", "base tokenizer", "statistics", "yaml"],
)
def test_fifo_is_refused_naming_it(tmp_path: Path, where: str) -> None:
    base, ft = checkpoints(tmp_path)
    cfg: dict = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(ft)}],
    }
    target = {
        "base weights": base / "model.safetensors",
        "model weights": ft / "model.safetensors",
        "base config.json": base / "config.json",
        "base tokenizer": base / "tokenizer.json",
        "statistics": tmp_path / "ft0.fisher.safetensors",
        "yaml": tmp_path / "m.yaml",
    }[where]
    if where == "statistics":
        cfg = {
            "merge_method": "fisher",
            "base_model": str(base),
            "models": [{"model": str(ft), "parameters": {"statistics": str(target)}}],
        }
    yml = tmp_path / "m.yaml"
    yml.write_text(yaml.safe_dump(cfg))
    fifo(target)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_merge(str(yml), str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert str(target) in r.stderr and "FIFO" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    r = run_merge(str(tmp_path), str(tmp_path / "out"))
    assert r.returncode == 2
    assert f"config '{tmp_path}' is a directory" in r.stderr, r.stderr
    r = run_merge(str(tmp_path / "missing.yaml"), str(tmp_path / "out"))
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr


def _merge_to_interrupt(tmp: Path) -> tuple[Path, Path]:
    """A config merging 3 models × 8 tensors into ``tmp/out`` (pcb). Tests
    run it with :func:`_stalled_env`, so it is inside the merge when their
    signal lands however fast it merges (it used to be made slow by its size
    instead: 4 × 128 MB, written for each test). The tensors are merged one
    after another, so a file truncated mid-merge is read again after the
    truncation."""
    g = torch.Generator().manual_seed(5)
    base = {f"w{k}": torch.randn(512, 512, generator=g) for k in range(8)}
    paths = []
    for i in range(4):
        d = tmp / f"m{i}"
        d.mkdir()
        save_file(
            {k: v + 0.01 * i * torch.randn(512, 512, generator=g) for k, v in base.items()},
            str(d / "model.safetensors"),
        )
        paths.append(str(d))
    cfg = tmp / "merge.yml"
    cfg.write_text(yaml.safe_dump({
        "merge_method": "pcb", "base_model": paths[0],
        "models": [{"model": p, "parameters": {"weight": 1.0, "density": 0.5}} for p in paths[1:]],
    }))  # fmt: skip
    return cfg, tmp / "out"


def _stalled_env(stall: str) -> dict[str, str]:
    """The child's environment with NPSFUSE_TEST_STALL_AFTER=stall: the merge
    waits after a tensor (until cancelled, or for the seconds after the colon),
    so a signal sent once the temporary folder exists lands inside it
    however fast the machine merges."""
    return dict(_env(), NPSFUSE_TEST_STALL_AFTER=stall)


def _start(cfg: Path, out: Path, stall: str = "1") -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "npsfuse.cli", "merge", str(cfg), str(out), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_stalled_env(stall),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(".out.npsfuse-tmp-*")):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.02)
    time.sleep(0.1)  # into the merge
    return p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_merge_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    """Issue 16 Low 11: Ctrl-C or SIGTERM during ``npsfuse merge`` removes
    the partial output every time (it was left in 7 of 8 runs)."""
    cfg, out = _merge_to_interrupt(tmp_path)
    for _ in range(3):
        p = _start(cfg, out)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 128 + sig, err
        assert "nothing was written" in err, err
        assert not out.exists()
        assert not list(tmp_path.glob(".out.npsfuse-tmp-*")), err


def test_next_run_removes_what_a_killed_merge_left(tmp_path: Path) -> None:
    """Issue 16 Low 11: after kill -9 the partial output stays; the next
    merge into the same folder removes it (its writer is dead)."""
    cfg, out = _merge_to_interrupt(tmp_path)
    p = _start(cfg, out)
    p.kill()
    p.communicate(timeout=60)
    left = list(tmp_path.glob(".out.npsfuse-tmp-*"))
    assert len(left) == 1
    r = run_merge(str(tmp_path / "merge.yml"), str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".out.npsfuse-tmp-*"))
    assert (out / "model.safetensors").exists()


def test_input_truncated_during_the_merge(tmp_path: Path) -> None:
    """Issue 16 Medium 4: a model file truncated while it is merged (what
    saving a checkpoint over itself does) fails the merge with a message and
    leaves nothing; it killed the CLI with SIGABRT and left the temp folder."""
    cfg, out = _merge_to_interrupt(tmp_path)
    p = _start(cfg, out, stall="1:2")  # the rest is read after the truncation
    os.truncate(tmp_path / "m3" / "model.safetensors", 0)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "changed while it was being read" in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.npsfuse-tmp-*"))
