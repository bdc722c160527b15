"""The subspace merges ``tsv`` (TSV-Merge), ``iso_c`` and ``iso_cts`` (isotropic
merging) against the float64 NumPy reference (full SVDs), on random state
dicts with tall, wide, square, transposed, tiny, 1-D and conv tensors; through
``npsfuse merge`` YAML on safetensors checkpoints and the daemon's merge job
(both bit for bit equal to ``npsfuse.merge``); and their parameters and errors.

Accuracy against the reference (entries of order 1, task vectors of order
0.1): on this family every 2-D tensor agrees to 5.4e-7 or better (float32
rounding of the output); over 12 random families with weights (0.5, 1.5, −1)
the worst gaps were 3.6e-7 (iso_c), 4.2e-7 (tsv) and 6.9e-6 (iso_cts, whose
cuts between common and task-specific directions are the least well
conditioned). ``ATOL`` = 1e-5 is the bound the tests hold; tensors that are
not 2-D (the mean of the task vectors) are compared bit for bit. The bf16
test allows one bfloat16 step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import npsfuse
import numpy as np
import pytest
import torch
import yaml
from conftest import load_folder, make_family, save_family, to_numpy
from npsfuse import reference as ref
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)

StateDict = dict[str, torch.Tensor]
METHODS = ref.SUBSPACE_METHODS

#: Tall, wide (and flagged as stored transposed), square, a matrix smaller
#: than the number of tasks (TSV's k = 0), a bias and a conv kernel.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (130, 48),
    "blk.0.attn.c_attn.weight": (40, 72),
    "blk.0.mlp.weight": (56, 56),
    "blk.0.mlp.bias": (56,),
    "conv.weight": (6, 3, 3, 3),
    "tiny.weight": (2, 9),
}
TRANSPOSED = ["blk.0.attn.c_attn.weight"]

#: Largest |npsfuse − reference| allowed on the 2-D tensors.
ATOL = 1e-5


def _compare(got: StateDict, want: dict[str, np.ndarray], atol: float = ATOL) -> float:
    """Assert agreement (bit for bit off the matrices); return the largest gap."""
    assert list(got) == list(want)
    worst = 0.0
    for k, w in want.items():
        g = got[k].float().numpy()
        assert g.shape == w.shape, k
        assert np.isfinite(g).all(), k
        if w.ndim == 2:
            worst = max(worst, float(np.abs(g - w).max()))
            np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=k)
        else:
            np.testing.assert_array_equal(g, w, err_msg=k)
    return worst


@pytest.fixture(scope="module")
def fam() -> tuple[StateDict, list[StateDict]]:
    return make_family(SHAPES, 3, seed=11, delta=0.1)


def _ref(base: StateDict, models: list[StateDict], method: str, **kw: Any) -> dict:
    return ref.merge_subspace(to_numpy(base), [to_numpy(m) for m in models], method,
                              transposed=TRANSPOSED, **kw)


@pytest.mark.parametrize("n_models", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(method: str, n_models: int, fam) -> None:
    base, models = fam
    models = models[:n_models]
    got = npsfuse.merge(base, models, method, transposed=TRANSPOSED)
    assert got.report == {}
    _compare(got, _ref(base, models, method))


#: Non-default values of everything the methods read.
PARAMS: dict[str, dict[str, Any]] = {
    "tsv": {"lam": 0.7},
    "iso_c": {"lam": 1.3},
    "iso_cts": {"lam": 0.9, "common_space_fraction": 0.6},
}


@pytest.mark.parametrize("method", METHODS)
def test_parameters_and_weights(method: str, fam) -> None:
    base, models = fam
    weights = [0.5, 1.5, -1.0]
    kw = PARAMS[method]
    got = npsfuse.merge(base, models, method, weights=weights, transposed=TRANSPOSED, **kw)
    _compare(got, _ref(base, models, method, weights=weights, **kw))
    # normalize and seed are accepted and not read; density is refused (issue #18, item 7).
    other = npsfuse.merge(base, models, method, weights=weights, transposed=TRANSPOSED,
                          normalize=True, seed=5, **kw)
    for k in got:
        assert torch.equal(got[k], other[k]), k
    with pytest.raises(ValueError, match=f"density is not used by {method}"):
        npsfuse.merge(base, models, method, weights=weights, density=0.1, **kw)


def test_iso_cts_fraction_limits(fam) -> None:
    """common_space_fraction 1 is Iso-C; 0 leaves no common subspace."""
    base, models = fam
    iso = npsfuse.merge(base, models, "iso_c")
    cts = npsfuse.merge(base, models, "iso_cts", common_space_fraction=1.0)
    for k in iso:
        assert torch.equal(iso[k], cts[k]), k
    got = npsfuse.merge(base, models, "iso_cts", common_space_fraction=0.0,
                        transposed=TRANSPOSED)
    _compare(got, _ref(base, models, "iso_cts", common_space_fraction=0.0))


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_inputs(method: str) -> None:
    base, models = make_family(SHAPES, 3, seed=12, delta=0.1, dtype=torch.bfloat16)
    got = npsfuse.merge(base, models, method, transposed=TRANSPOSED)
    want = _ref(base, models, method)
    for k, w in want.items():
        assert got[k].dtype == torch.bfloat16
        # One bfloat16 step at most (the float32 results may straddle a
        # rounding boundary).
        np.testing.assert_allclose(got[k].float().numpy(), w, rtol=2**-7, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("method", METHODS)
def test_threads_do_not_change_bits(method: str, fam, restore_threads) -> None:
    base, models = fam
    outs = []
    for n in (1, 2):
        npsfuse.set_num_threads(n)
        outs.append(npsfuse.merge(base, models, method, transposed=TRANSPOSED))
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


@pytest.mark.parametrize("method", METHODS)
def test_zero_task_vectors(method: str, fam) -> None:
    base, _ = fam
    got = npsfuse.merge(base, [dict(base), dict(base)], method)
    for k, b in base.items():
        assert torch.equal(got[k], b), k


def test_bad_parameters(fam) -> None:
    base, models = fam
    with pytest.raises(ValueError, match=r"common_space_fraction must lie in \[0, 1\]"):
        npsfuse.merge(base, models, "iso_cts", common_space_fraction=1.5)
    with pytest.raises(ValueError, match="common_space_fraction is not a parameter of tsv"):
        npsfuse.merge(base, models, "tsv", common_space_fraction=0.5)
    bad = [dict(m) for m in models]
    bad[1]["blk.0.mlp.weight"] = bad[1]["blk.0.mlp.weight"].clone()
    bad[1]["blk.0.mlp.weight"][3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"blk\.0\.mlp\.weight.*model 1 has NaN at flat index 172"):
        npsfuse.merge(base, bad, "iso_c")


# ---------------------------------------------------------------------------
# npsfuse merge: the YAML path streams tensor by tensor through the same engine


def _checkpoints(root: Path) -> tuple[Path, list[Path]]:
    """A base and three fine-tunes, one safetensors file per folder."""
    return save_family(root, *make_family(SHAPES, 3, seed=13, delta=0.1))


_load = load_folder


#: (method, YAML parameters, npsfuse.merge keywords), per-model weights apart.
CLI_CASES = [
    ("tsv", {"lambda": 0.8}, {"lam": 0.8}),
    ("iso_c", {}, {}),
    ("iso_cts", {"common_space_fraction": 0.7, "lambda": 1.2},
     {"common_space_fraction": 0.7, "lam": 1.2}),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_yaml_equals_in_memory(case, tmp_path: Path) -> None:
    method, params, kw = case
    base, models = _checkpoints(tmp_path)
    weights = [1.0, 0.5, 2.0]
    cfg = {
        "merge_method": method,
        "base_model": str(base),
        "parameters": params,
        "transposed": TRANSPOSED,
        "models": [{"model": str(m), "parameters": {"weight": w}}
                   for m, w in zip(models, weights, strict=True)],
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = npsfuse.merge_checkpoints(path, tmp_path / "out", quiet=True)
    got = _load(out)
    want = npsfuse.merge(str(base), [str(m) for m in models], method, weights=weights,
                         transposed=TRANSPOSED, **kw)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(got[k], w), k


def test_cli_command(tmp_path: Path) -> None:
    """The ``npsfuse merge`` command itself (a child process)."""
    base, models = _checkpoints(tmp_path)
    cfg = {"merge_method": "iso_cts", "base_model": str(base),
           "parameters": {"common_space_fraction": 0.5},
           "models": [{"model": str(m)} for m in models]}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    src = str(Path(npsfuse.__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-m", "npsfuse.cli", "merge", str(path),
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": src}, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "out")
    want = npsfuse.merge(str(base), [str(m) for m in models], "iso_cts",
                         common_space_fraction=0.5)
    for k, w in want.items():
        assert torch.equal(got[k], w), k


def test_yaml_parameter_belongs_to_iso_cts(tmp_path: Path) -> None:
    base, models = _checkpoints(tmp_path)
    cfg = {"merge_method": "tsv", "base_model": str(base),
           "parameters": {"common_space_fraction": 0.5},
           "models": [{"model": str(m)} for m in models]}
    with pytest.raises(ValueError, match="common_space_fraction.*belongs to iso_cts"):
        npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    cfg["merge_method"] = "iso_cts"
    cfg["parameters"] = {"common_space_fraction": 2.0}
    with pytest.raises(ValueError, match=r"common_space_fraction must lie in \[0, 1\], got 2"):
        npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)


# ---------------------------------------------------------------------------
# The daemon's merge job (same config schema, same engine)


@pytest.mark.parametrize("method", ["tsv", "iso_cts"])
def test_daemon_merge_job(method: str, daemon) -> None:  # noqa: F811
    base, models = make_family(SHAPES, 3, seed=14, delta=0.1)
    kw = {"common_space_fraction": 0.6} if method == "iso_cts" else {}
    want = npsfuse.merge(base, models, method, weights=[1.0, 2.0, 0.5], lam=0.9, **kw)
    cfg = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": w}}
                   for m, w in zip(models, [1.0, 2.0, 0.5], strict=True)],
        "parameters": {"lambda": 0.9, **kw},
    }
    got = daemon.client().submit_merge(cfg).result(timeout=120)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert torch.equal(got[k], w), k
