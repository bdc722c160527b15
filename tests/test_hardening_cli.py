"""``npsfuse merge`` refuses inputs that are not regular files (issue 16,
Medium 9 and Low 15): a FIFO named like a weight file, a config.json, a
tokenizer file, statistics or the YAML config itself is reported at once,
naming the file, instead of hanging the merge; a folder given as the
config says it is a folder."""

from __future__ import annotations

import os
import subprocess
import sys
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
