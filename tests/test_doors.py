"""One engine behind every door: ``npsfuse.merge`` (the notebook), ``npsfuse
merge`` YAML (the CLI) and the daemon's merge job give the same tensors, bit
for bit, for every merge method with non-default values of every parameter
it reads; and the three refuse the same bad values with the same words.

The methods and their parameters come from the engine's spec table
(``npsfuse._spec``), so a new method is covered here without editing this
file: it only needs a non-default value for a parameter no method had yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
import yaml
from conftest import load_folder, make_family, save_family
from npsfuse import _spec
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)

StateDict = dict[str, torch.Tensor]

SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (40, 16),
    "blk.0.attn.weight": (16, 16),
    "blk.0.mlp.weight": (32, 16),
    "blk.0.mlp.bias": (32,),
    "norm.weight": (16,),
}

#: A value other than the default for every parameter of the spec table
#: (by spec name); per-model parameters get one value per model.
NON_DEFAULT: dict[str, Any] = {
    "density": 0.4, "lambda": 0.9, "seed": 3, "gamma": 0.05, "epsilon": 0.05, "t": 0.3,
    "k": 1, "tall_lambda": 0.6, "mask_rate": 0.7, "lam1": 0.5, "lam2": 2.0,
    "fisher_floor": 1e-5, "alpha": 0.7, "common_space_fraction": 0.6, "scope": "global",
    "normalize_weights": False, "eps": 1e-6, "max_iter": 3, "tol": 1e-4,
    "select_topk": 0.4, "int8_mask": True, "nuslerp_flatten": False, "nuslerp_row_wise": True,
    "scale": 0.7,
}
#: Method-specific values where the shared one does not fit.
SPECIAL: dict[tuple[str, str], Any] = {
    ("nearswap", "t"): 0.02,
    ("nuslerp", "nuslerp_flatten"): True,  # the only form supported (false is refused)
}

TABLE = _spec.table()
#: Every method but the data-aware ones (their YAML and daemon paths need
#: statistics files: tests/test_data_aware.py covers them).
METHODS = sorted(m for m, row in TABLE.methods.items() if not row.data_aware)


def _n_models(method: str) -> int:
    row = TABLE.methods[method]
    return row.max_models or 3


def _case(method: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(YAML global parameters and top-level keys, per-model YAML parameters,
    npsfuse.merge keywords) with non-default values of what ``method`` reads."""
    row = TABLE.methods[method]
    n = _n_models(method)
    params: dict[str, Any] = {}
    top: dict[str, Any] = {}
    per_model: list[dict[str, Any]] = [{} for _ in range(n)]
    kw: dict[str, Any] = {}
    for name in row.params:
        p = TABLE.params[name]
        if name == "weight":
            ws = [0.5, 1.5, 1.0][:n]
            for i, w in enumerate(ws):
                per_model[i]["weight"] = w
            kw["weights"] = ws
            continue
        if name == "normalize":
            params["normalize"] = not row.normalize
            kw["normalize"] = not row.normalize
            continue
        if name == "rescale":  # true is refused where the method does not rescale
            params["rescale"] = kw["rescale"] = False
            continue
        value = SPECIAL.get((method, name), NON_DEFAULT[name])
        if name in ("scope", "seed"):
            top[name] = value
        else:
            params[name] = value
        kw[p.python] = value
    return {"parameters": params, **top}, per_model, kw


_save = save_family
_load = load_folder


def _assert_equal(got: StateDict, want: StateDict, door: str) -> None:
    assert sorted(got) == sorted(want), door
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(got[k], w), f"{door}: {k}"


@pytest.mark.parametrize("method", METHODS)
def test_notebook_cli_daemon_agree(method: str, tmp_path: Path, daemon) -> None:  # noqa: F811
    base, models = make_family(SHAPES, _n_models(method), seed=21, delta=0.1)
    top, per_model, kw = _case(method)
    want = npsfuse.merge(base, models, method, **kw)

    base_dir, dirs = _save(tmp_path, base, models)
    # linear averages the base in at every door (as mergekit). A
    # passthrough config with a base is refused (two inputs, as mergekit).
    no_base = method == "passthrough"
    yaml_base = None if no_base else str(base_dir)
    cfg = {"merge_method": method, "base_model": yaml_base, **top,
           "models": [{"model": str(d), "parameters": p} for d, p in
                      zip(dirs, per_model, strict=True)]}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = npsfuse.merge_checkpoints(path, tmp_path / "out", quiet=True)
    _assert_equal(_load(out), want, "npsfuse merge")

    job = {"merge_method": method, "base_model": None if no_base else base, **top,
           "models": [{"model": m, "parameters": p} for m, p in
                      zip(models, per_model, strict=True)]}
    got = daemon.client().submit_merge(job).result(timeout=120)
    _assert_equal(got, want, "daemon")


#: (method, npsfuse.merge keywords, YAML config parts, the problem every door names).
BAD = [
    ("ties", {"density": 1.5}, {"parameters": {"density": 1.5}},
     "density must lie in (0, 1], got 1.5"),
    ("breadcrumbs", {"gamma": 1.0}, {"parameters": {"gamma": 1.0}},
     "gamma must lie in [0, 1), got 1"),
    ("ties", {"gamma": 0.1}, {"parameters": {"gamma": 0.1}},
     "gamma is not a parameter of ties (it belongs to breadcrumbs, breadcrumbs_ties)"),
    ("neuro", {"mask_rate": 1.0}, {"parameters": {"mask_rate": 1.0}},
     "mask_rate must lie in [0, 1), got 1"),
    ("dare_ties", {"seed": -1}, {"seed": -1}, "seed must be ≥ 0, got -1"),
    ("ties", {"scope": "layer"}, {"scope": "layer"},
     'scope must be one of "tensor", "global", got layer'),
]


@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}-{c[3][:20]}" for c in BAD])
def test_every_door_refuses_with_the_same_words(case, tmp_path: Path) -> None:
    method, kw, cfg_parts, problem = case
    base, models = make_family(SHAPES, 2, seed=22, delta=0.1)
    with pytest.raises(ValueError) as notebook:
        npsfuse.merge(base, models, method, **kw)
    assert problem in str(notebook.value)
    base_dir, dirs = _save(tmp_path, base, models)
    cfg = {"merge_method": method, "base_model": str(base_dir),
           "models": [{"model": str(d)} for d in dirs], **cfg_parts}
    with pytest.raises(ValueError) as cli:
        npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    assert problem in str(cli.value)


def test_derived_python_tables() -> None:
    """The Python views of the spec table keep their meaning."""
    from npsfuse import merging

    assert merging.DEFAULT_NORMALIZE["ties"] and merging.DEFAULT_NORMALIZE["linear"]
    assert not merging.DEFAULT_NORMALIZE["task_arithmetic"]
    assert merging.DEFAULT_SCOPE == {"neuro": "global"}
    assert merging.DATA_AWARE == {"fisher", "regmean"}
    assert {"ties", "dare_ties", "pcb", "della"} <= merging.USES_DENSITY
    assert "tsv" not in merging.USES_DENSITY and "neuro" not in merging.USES_DENSITY
    assert merging.METHOD_PARAMS["neuro"] == {"mask_rate": 0.5, "lam1": 0.0, "lam2": None}
    assert merging.METHOD_PARAMS["breadcrumbs"] == {"rescale": None, "gamma": 0.01}
    assert set(TABLE.methods) == set(npsfuse.methods())


def test_lists_per_model_and_their_length() -> None:
    base, models = make_family(SHAPES, 3, seed=23, delta=0.1)
    per = npsfuse.merge(base, models, "ties", density=[0.2, 0.5, 0.9])
    assert set(per) == set(base)
    with pytest.raises(ValueError, match="2 values of density given for 3 models"):
        npsfuse.merge(base, models, "ties", density=[0.2, 0.5])
    with pytest.raises(ValueError, match="seed must be a number, got"):
        npsfuse.merge(base, models, "dare_ties", seed=[1, 2, 3])
    with pytest.raises(ValueError, match="nearswap merges exactly 1 models, got 3"):
        npsfuse.merge(base, models, "nearswap", t=0.1)
    with pytest.raises(ValueError, match="t must be given: nearswap has no default"):
        npsfuse.merge(base, models[:1], "nearswap")


def test_nearswap_equals_mergekit_expression() -> None:
    """NearSwap bit for bit against mergekit's torch expression (and against
    mergekit's own function when mergekit is installed)."""
    base, models = make_family(SHAPES, 1, seed=24, delta=0.1)
    t = 0.03
    got = npsfuse.merge(base, models, "nearswap", t=t)
    try:
        from mergekit.merge_methods.nearswap import nearswap as mk
    except ImportError:
        mk = None
    for k, b in base.items():
        x = models[0][k]
        w = torch.nan_to_num(t / torch.abs(b - x), nan=1.0, posinf=1.0, neginf=1.0).clamp(0, 1)
        want = w * x + (1 - w) * b
        assert torch.equal(got[k], want), k
        if mk is not None:
            assert torch.equal(got[k], mk(t, b, x)), k


GPT2_SHAPES: dict[str, tuple[int, ...]] = {
    "transformer.h.0.attn.c_attn.weight": (16, 48),
    "transformer.h.0.crossattention.q_attn.weight": (16, 24),
    "transformer.h.0.mlp.c_fc.weight": (16, 64),
    "transformer.h.0.mlp.c_fc.bias": (64,),
}


@pytest.mark.parametrize("patterns", [None, [], ["mlp.c_fc.weight"], ["h.*.crossattention.*"]])
def test_transposed_patterns_mean_the_same_in_every_door(patterns, tmp_path: Path) -> None:
    """``transposed`` (and its detection from ``model_type``) is one rule:
    bare suffixes match, cross-attention Conv1D weights are GPT-2's too,
    and an explicit empty list means none."""
    import json

    base, models = make_family(GPT2_SHAPES, 2, seed=25, delta=0.1)
    base_dir, dirs = _save(tmp_path, base, models)
    for d in [base_dir, *dirs]:
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    kw = {} if patterns is None else {"transposed": patterns}
    want = npsfuse.merge(str(base_dir), [str(d) for d in dirs], "della", density=0.5, **kw)
    cfg: dict[str, Any] = {"merge_method": "della", "base_model": str(base_dir),
                           "parameters": {"density": 0.5},
                           "models": [{"model": str(d)} for d in dirs]}
    if patterns is not None:
        cfg["transposed"] = patterns
    out = npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    _assert_equal(_load(out), want, "npsfuse merge")
    # The orientation matters for della, so the doors agreeing means something.
    other = npsfuse.merge(str(base_dir), [str(d) for d in dirs], "della", density=0.5,
                          transposed=["*"] if patterns == [] else [])
    assert any(not torch.equal(other[k], want[k]) for k in GPT2_SHAPES if k.endswith("weight"))
