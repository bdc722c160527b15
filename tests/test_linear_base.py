"""``linear`` and its base (issue #13): the notebook's door, the CLI's and
mergekit 0.1.5 agree bit for bit.

mergekit's ``linear`` with a ``base_model`` that is not among ``models``
averages the base in as one more model, the last, with the global
``parameters.weight``; ``npsfuse merge`` does the same (``stream.ParseConfig``)
and so does ``npsfuse.merge`` for every method whose spec-table row has
``base_as_model``. Without a base (``base=None``, a YAML without
``base_model``) the models alone are averaged, the first laying the output
out.

The family is test_mergekit_compat's tiny Llama (float32 safetensors
folders). Bit for bit with mergekit needs weights whose products with the
entries are exact (powers of two): mergekit accumulates Σ w_t·θ_t with a
fused multiply-add, npsfuse rounds each product first
(test_linear_differences_are_mergekits_fused_multiply_add); for other weights
each is checked against its own formula, the base last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
from conftest import make_family
from npsfuse import _spec
from npsfuse.merging import BASE_AS_MODEL
from test_mergekit_compat import _load, _run_mergekit, _run_npsfuse, llama  # noqa: F401

StateDict = dict[str, torch.Tensor]
TABLE = _spec.table()


def _config(
    base: str | None,
    models: list[str],
    per_model: list[float] | None,
    weight: float | None = None,
    normalize: bool | None = None,
) -> dict[str, Any]:
    """A mergekit ``linear`` config: per-model weights (or none), a global
    weight and ``normalize`` when given."""
    conf: dict[str, Any] = {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [
            {"model": m, "parameters": {"weight": w}} if per_model else {"model": m}
            for m, w in zip(models, per_model or [None] * len(models), strict=True)
        ],
    }
    if base is not None:
        conf["base_model"] = base
    params: dict[str, Any] = {}
    if weight is not None:
        params["weight"] = weight
    if normalize is not None:
        params["normalize"] = normalize
    if params:
        conf["parameters"] = params
    return conf


def _cli(conf: dict[str, Any], out: Path) -> StateDict:
    r = _run_npsfuse(conf, out)
    assert r.returncode == 0, r.stderr
    return _load(out)


def _assert_same(got: StateDict, want: StateDict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(got[k], w), f"{what}: {k}"


#: (id, per-model weights in the YAML, global weight, normalize,
#: npsfuse.merge keywords). Every weight is a power of two, so mergekit's
#: fused accumulation gives the same bits (see the module docstring).
EXACT: list[tuple[str, list[float] | None, float | None, bool | None, dict[str, Any]]] = [
    ("unit-weights", [1.0, 1.0, 1.0], 1.0, None, {}),
    ("unit-weights-no-normalize", [1.0, 1.0, 1.0], 1.0, False, {"normalize": False}),
    ("weights-base-last", [0.5, 0.25, 2.0], 0.5, None, {"weights": [0.5, 0.25, 2.0, 0.5]}),
    (
        "weights-no-normalize",
        [0.5, 0.25, 2.0],
        4.0,
        False,
        {"weights": [0.5, 0.25, 2.0, 4.0], "normalize": False},
    ),
    ("global-weight-only", None, 0.25, None, {"weights": 0.25}),
]


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
def test_notebook_cli_mergekit_agree_with_the_base_averaged_in(
    llama: dict[str, Any],  # noqa: F811  (the fixture)
    tmp_path: Path,
    case: tuple[Any, ...],
) -> None:
    name, per_model, weight, normalize, kw = case
    B, M = llama["base"], llama["ft"]
    conf = _config(B, M, per_model, weight, normalize)
    got = npsfuse.merge(B, M, "linear", **kw)
    _assert_same(got, _cli(conf, tmp_path / "np"), f"{name}: npsfuse merge")
    _assert_same(got, _run_mergekit(conf, tmp_path / "mk"), f"{name}: mergekit")
    # The base is averaged in: the result is not the models' average.
    alone = npsfuse.merge(None, M, "linear", **{k: v for k, v in kw.items() if k != "weights"})
    assert any(not torch.equal(got[k], alone[k]) for k in got), name


def test_the_base_without_a_global_weight_takes_the_default(
    llama: dict[str, Any],  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    """With one weight per model and none for the base, npsfuse merge gives
    the base the declared default (1); mergekit requires a global weight
    there and gives the same bits with ``parameters.weight: 1``. In Python
    the same is ``len(models)`` weights."""
    B, M = llama["base"], llama["ft"]
    ws = [0.5, 0.25, 2.0]
    assert TABLE.params["weight"].default == 1.0
    got = npsfuse.merge(B, M, "linear", weights=ws)
    _assert_same(got, _cli(_config(B, M, ws), tmp_path / "np"), "npsfuse merge")
    with pytest.raises(RuntimeError, match="Missing required parameter weight"):
        _run_mergekit(_config(B, M, ws), tmp_path / "mk0")
    _assert_same(got, _run_mergekit(_config(B, M, ws, 1.0), tmp_path / "mk"), "mergekit")
    _assert_same(got, npsfuse.merge(B, M, "linear", weights=[*ws, 1.0]), "explicit base weight")


def test_inexact_weights_each_door_its_own_rounding(
    llama: dict[str, Any],  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    """Weights whose products round: the CLI and npsfuse.merge give the same
    bits, Σ_t round(w_t·θ_t) over the models then the base, divided by Σ w;
    mergekit the fused sum. The order (base last) shows in the bits."""
    B, M = llama["base"], llama["ft"]
    ws, wb = [0.3, 0.7, 1.1], 0.9
    conf = _config(B, M, ws, wb)
    got = npsfuse.merge(B, M, "linear", weights=[*ws, wb])
    _assert_same(got, _cli(conf, tmp_path / "np"), "npsfuse merge")
    want = _run_mergekit(conf, tmp_path / "mk")
    xs = [_load(Path(m)) for m in [*M, B]]
    w = torch.tensor([*ws, wb], dtype=torch.float32)
    for k in want:
        fused = torch.zeros_like(xs[0][k])
        unfused = torch.zeros_like(xs[0][k])
        for i, x in enumerate(xs):
            fused = (fused.double() + x[k].double() * w[i].double()).float()
            unfused = unfused + x[k] * w[i]
        assert torch.equal(got[k], unfused / w.sum()), k
        assert torch.equal(want[k], fused / w.sum()), k


@pytest.mark.parametrize("normalize", [None, False])
def test_no_base_equals_a_config_without_base_model(
    llama: dict[str, Any],  # noqa: F811  (the fixture)
    tmp_path: Path,
    normalize: bool | None,
) -> None:
    """``base=None`` is the plain soup: a YAML without ``base_model``, and
    mergekit's; a base among the models is not added a second time."""
    B, M = llama["base"], llama["ft"]
    ws = [0.5, 0.25, 2.0]
    kw: dict[str, Any] = {} if normalize is None else {"normalize": normalize}
    got = npsfuse.merge(None, M, "linear", weights=ws, **kw)
    conf = _config(None, M, ws, normalize=normalize)
    _assert_same(got, _cli(conf, tmp_path / "np"), "npsfuse merge")
    _assert_same(got, _run_mergekit(conf, tmp_path / "mk"), "mergekit")
    # the first model as the base: among the models (same path), not added
    _assert_same(npsfuse.merge(M[0], M, "linear", weights=ws, **kw), got, "base among models")
    among = dict(_config(M[0], M, ws, normalize=normalize))
    _assert_same(_cli(among, tmp_path / "np_among"), got, "npsfuse merge, base among models")
    # the same model as a state dict (the same object) is not added either
    sds = [_load(Path(m)) for m in M]
    _assert_same(npsfuse.merge(sds[0], sds, "linear", weights=ws, **kw), got, "dicts")
    # and the result is not the one with the pre-trained base averaged in
    with_base = npsfuse.merge(B, M, "linear", weights=ws, **kw)
    assert any(not torch.equal(got[k], with_base[k]) for k in got)


# ----------------------------------------------------- from the spec table

SHAPES = {"a.weight": (12, 8), "a.bias": (8,), "b.weight": (5, 3)}


def test_the_table_decides_which_methods() -> None:
    assert {m for m, row in TABLE.methods.items() if row.base_as_model} == BASE_AS_MODEL
    assert "linear" in BASE_AS_MODEL


@pytest.mark.parametrize("method", sorted(BASE_AS_MODEL))
def test_base_as_model_is_the_base_merged_last(method: str) -> None:
    """For every ``base_as_model`` method: the base merged as a model is the
    merge of the models and the base, the base last, without a base."""
    base, models = make_family(SHAPES, 3, seed=51, buffers=False)
    got = npsfuse.merge(base, models, method)
    want = npsfuse.merge(None, [*models, base], method)
    _assert_same(got, want, method)
    w = [0.5, 1.5, 1.0, 0.25]
    got = npsfuse.merge(base, models, method, weights=w)
    _assert_same(got, npsfuse.merge(None, [*models, base], method, weights=w), method)
    # len(models) weights: the base's is the declared default
    got = npsfuse.merge(base, models, method, weights=w[:3])
    want = npsfuse.merge(
        None, [*models, base], method, weights=[*w[:3], TABLE.params["weight"].default]
    )
    _assert_same(got, want, method)


@pytest.mark.parametrize("method", sorted(set(TABLE.methods) - BASE_AS_MODEL))
def test_methods_that_need_a_base_refuse_none(method: str) -> None:
    _, models = make_family(SHAPES, 2, seed=52)
    with pytest.raises(ValueError, match=f"{method} needs a base model"):
        npsfuse.merge(None, models, method)


def test_weights_of_the_wrong_length_with_the_base() -> None:
    base, models = make_family(SHAPES, 3, seed=53)
    for n in (2, 5):
        with pytest.raises(
            ValueError,
            match=rf"{n} values of weights given for 3 models "
            r"\(linear also merges the base",
        ):
            npsfuse.merge(base, models, "linear", weights=[1.0] * n)
    # without the base, or with it among the models, one weight per model
    for b in (None, models[1]):
        with pytest.raises(ValueError, match="4 values of weights given for 3 models$"):
            npsfuse.merge(b, models, "linear", weights=[1.0] * 4)


def test_without_a_base_the_first_model_lays_out_and_is_named() -> None:
    """The planner's words name model 0, not a base, as for a YAML config
    without ``base_model``; integer buffers come from the first model."""
    base, models = make_family(SHAPES, 2, seed=54, buffers=True)
    got = npsfuse.merge(None, models, "linear")
    assert list(got) == list(models[0])
    for k, t in models[0].items():
        if not t.is_floating_point():
            assert torch.equal(got[k], t), k
    del models[1]["b.weight"]
    with pytest.raises(ValueError) as err:
        npsfuse.merge(None, models, "linear")
    assert '"b.weight" is missing from model 1' in str(err.value)
    assert "base" not in str(err.value)


def test_the_experiments_weight_averaging_row_averages_the_fine_tunes_alone() -> None:
    """experiments/methods.py's "weight averaging" row keeps its meaning: the
    fine-tunes' average, without θ₀ (``base=None``)."""
    import contextlib
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import config
    import methods
    import names

    spec = next(s for s in methods.plan(config.MINI).specs if s.row == names.AVERAGING)
    assert spec.method == "linear" and not spec.base
    theta0, fts = make_family(SHAPES, 3, seed=55)
    meter = SimpleNamespace(work=lambda *a, **k: contextlib.nullcontext())
    st = SimpleNamespace(theta0=theta0, finetuned=fts, seed=0, n_params=1, meter=meter)
    got = methods.build_fn(st, spec)(float("nan"))
    _assert_same(got, npsfuse.merge(None, fts, "linear"), "weight averaging")
    for k in SHAPES:  # (θ₁ + θ₂ + θ₃) / 3, in model order
        assert torch.equal(got[k], (fts[0][k] + fts[1][k] + fts[2][k]) / 3), k
