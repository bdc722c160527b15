"""Compressed storage of pruned task vectors and the compress/decompress commands."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StateDict, make_family
from npsfuse import compress, nps
from npsfuse._cli_nps import add_commands, task_name
from safetensors.torch import load_file, save_file

SHAPES = {"emb.weight": (50, 40), "lin.weight": (30, 50), "lin.bias": (30,)}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so −0.0 ≠ 0.0, unlike torch.equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        a, b = a.view(ints[a.element_size()]), b.view(ints[b.element_size()])
    return torch.equal(a, b)


def _prune(base: StateDict, ft: StateDict, density: float, seed: int = 0) -> nps.NPSResult:
    def score(sd: StateDict) -> float:
        return -sum(float(((sd[k].float() - ft[k].float()) ** 2).sum()) for k in SHAPES)

    return nps.prune(base, ft, score, density=density, subspaces=4, generations=3, seed=seed,
                     progress=False)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16, torch.float16],
                ids=["f32", "bf16", "f16"])
def family(request: pytest.FixtureRequest) -> tuple[StateDict, dict[str, nps.NPSResult]]:
    base, fts = make_family(SHAPES, n_models=2, seed=20, dtype=request.param, buffers=True)
    return base, {"math": _prune(base, fts[0], 0.05), "code": _prune(base, fts[1], 0.1, 1)}


def test_round_trip_is_exact(family: tuple, tmp_path: Path) -> None:
    base, results = family
    path = compress.save(tmp_path / "tasks.safetensors", base, results)
    assert compress.tasks(path) == ["math", "code"]
    for name, res in results.items():
        want = res.state_dict()
        got = compress.load(base, path, name)
        assert list(got) == list(want)
        for k in want:
            assert _same_bits(got[k], want[k]), k
        tau = compress.load_task_vector(path, name, base=base)
        for k, t in res.task_vector().items():
            assert _same_bits(tau[k], t), k
        half = compress.load(base, path, name, lam=0.5)
        ref = res.state_dict(0.5)
        assert all(_same_bits(half[k], ref[k]) for k in ref)


def test_report_bits_per_parameter(family: tuple, tmp_path: Path) -> None:
    base, results = family
    path = compress.save(tmp_path / "c.safetensors", base, results)
    rep = compress.report(path)
    assert rep["tensors"] == len(SHAPES)
    assert rep["file_bytes"] == path.stat().st_size
    n = sum(math.prod(s) for s in SHAPES.values())
    bits = torch.finfo(base["lin.weight"].dtype).bits
    for name, res in results.items():
        r = rep["tasks"][name]
        assert r["parameters"] == n and r["kept"] == res.kept == int(res.density * n)
        assert r["keep"] == res.density and r["weights"] == res.weights.tolist()
        mask_bytes = sum(math.ceil(math.prod(s) / 8) for s in SHAPES.values())
        assert r["mask_bytes"] == mask_bytes
        assert r["value_bytes"] == res.kept * bits // 8
        assert r["bits_per_parameter"] == pytest.approx(8 * (mask_bytes + r["value_bytes"]) / n)
        # ≈ 1 bit of mask + density × value bits (METHODS: r = 0.05 in float32 ≈ 2.6)
        assert r["bits_per_parameter"] == pytest.approx(1 + res.density * bits, abs=0.02)


def test_negative_zero_and_plain_task_vectors(tmp_path: Path) -> None:
    base = {"w": torch.tensor([1.0, -0.0, 2.0, 0.0]), "i": torch.arange(3)}
    tau = {"w": torch.tensor([-0.0, 0.0, 0.5, -0.25])}
    path = compress.save(tmp_path / "z.safetensors", base, {"t": tau})
    back = compress.load_task_vector(path, "t")
    assert _same_bits(back["w"], tau["w"])  # −0.0 is kept
    sd = compress.load(base, path, "t")
    assert _same_bits(sd["w"], base["w"] + tau["w"])  # −0.0 + −0.0 stays −0.0
    assert sd["i"] is base["i"]
    assert compress.report(path)["tasks"]["t"]["kept"] == 3


def test_wrong_base_is_detected(tmp_path: Path) -> None:
    base, (ft,) = make_family(SHAPES, n_models=1, seed=21)
    res = _prune(base, ft, 0.1)
    path = compress.save(tmp_path / "c.safetensors", base, {"t": res})
    other, _ = make_family(SHAPES, n_models=1, seed=22)
    with pytest.raises(ValueError, match="made for another base model"):
        compress.load(other, path, "t")
    nudged = dict(base)
    nudged["lin.weight"] = base["lin.weight"].clone()
    nudged["lin.weight"][-1, -1] += 1  # the last element is always sampled
    with pytest.raises(ValueError, match="another base model"):
        compress.load(nudged, path, "t")
    with pytest.raises(ValueError, match="another base model"):
        compress.load({k: v.to(torch.bfloat16) for k, v in base.items()}, path, "t")
    with pytest.raises(ValueError, match="lacks tensor"):
        compress.load({"lin.bias": base["lin.bias"]}, path, "t")
    with pytest.raises(ValueError, match="not the one the result was computed from"):
        compress.save(tmp_path / "d.safetensors", other, {"t": res})


def test_bad_files_and_tasks(tmp_path: Path) -> None:
    base, (ft,) = make_family(SHAPES, n_models=1, seed=23)
    path = compress.save(tmp_path / "c.safetensors", base, {"t": _prune(base, ft, 0.1)})
    with pytest.raises(KeyError, match="no task 'u'; it holds: t"):
        compress.load(base, path, "u")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not an npsfuse compressed file"):
        compress.report(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        compress.tasks(junk)
    with pytest.raises(FileNotFoundError):
        compress.tasks(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="non-empty"):
        compress.save(tmp_path / "e.safetensors", base, {})
    with pytest.raises(ValueError, match="only floating-point tensors"):
        compress.save(tmp_path / "e.safetensors", {**base, "i": torch.arange(3)},
                      {"t": {"i": torch.arange(3)}})
    with pytest.raises(ValueError, match="which the base lacks"):
        compress.save(tmp_path / "e.safetensors", base, {"t": {"nope": torch.zeros(2)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.safetensors", "junk.safetensors", "plain.safetensors"
    ]  # failed saves leave nothing behind


# ------------------------------------------------------------------ CLI -----


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="npsfuse")
    add_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return int(args.func(args))


def test_task_names_from_file_names() -> None:
    assert task_name("out/math.nps.safetensors") == "math"
    assert task_name("code.safetensors") == "code"
    assert task_name("x.y.nps") == "x.y"


def test_cli_compress_and_decompress(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, fts = make_family(SHAPES, n_models=2, seed=24)
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    save_file(base, str(base_dir / "model.safetensors"))
    (base_dir / "config.json").write_text(json.dumps({"model_type": "toy"}))
    res = {name: _prune(base, ft, 0.05, i) for i, (name, ft) in
           enumerate(zip(["math", "code"], fts, strict=True))}
    files = [str(r.save(tmp_path / f"{n}.nps.safetensors")) for n, r in res.items()]
    out = tmp_path / "tasks.safetensors"

    assert _cli(["compress", str(base_dir), *files, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "math" in printed and "bits/parameter" in printed
    assert compress.tasks(out) == ["math", "code"]
    with pytest.raises(FileExistsError):
        _cli(["compress", str(base_dir), *files, "-o", str(out)])
    assert _cli(["compress", str(base_dir), *files, "-o", str(out), "--force", "--quiet",
                 "--name", "a", "--name", "b"]) == 0
    assert compress.tasks(out) == ["a", "b"]
    with pytest.raises(ValueError, match="1 --name given for 2 results"):
        _cli(["compress", str(base_dir), *files, "-o", str(out), "--force", "--name", "a"])

    dest = tmp_path / "rebuilt"
    assert _cli(["decompress", str(base_dir), str(out), "b", str(dest), "--quiet"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    got = load_file(str(dest / "model.safetensors"))
    want = res["code"].state_dict()
    assert set(got) == set(want)
    assert all(_same_bits(got[k], want[k]) for k in want)
    with pytest.raises(FileExistsError, match="not empty"):
        _cli(["decompress", str(base_dir), str(out), "b", str(dest)])
    with pytest.raises(ValueError, match="no task 'zzz'"):
        _cli(["decompress", str(base_dir), str(out), "zzz", str(tmp_path / "x"), "--quiet"])
    single = tmp_path / "single"
    assert _cli(["decompress", str(base_dir / "model.safetensors"), str(out), "a",
                 str(single), "--quiet", "--lam", "0.5"]) == 0
    assert [p.name for p in single.iterdir()] == ["model.safetensors"]
    half = load_file(str(single / "model.safetensors"))
    ref = res["math"].state_dict(0.5)
    assert all(_same_bits(half[k], ref[k]) for k in ref)
    assert np.isfinite(compress.report(out)["tasks"]["a"]["bits_per_parameter"])
