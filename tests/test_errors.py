"""Bad input raises the right exception with a message naming the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import npsfuse
import pytest
import reference as ref
import torch
from conftest import StateDict, make_family
from npsfuse import _core
from npsfuse.merging import BASE_AS_MODEL, USES_DENSITY

SMALL = {"w": (6, 5), "b": (5,)}


@pytest.fixture
def small() -> tuple[StateDict, list[StateDict]]:
    return make_family(SMALL, n_models=2, seed=40)


def test_unknown_method_lists_valid_ones(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    with pytest.raises(ValueError, match=r'^unknown merge method "tiez" \(valid: ') as err:
        npsfuse.merge(base, models, "tiez")
    for name in ref.METHODS:
        assert name in str(err.value)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
@pytest.mark.parametrize("density", [0.0, 1.5, -0.1, float("nan")])
def test_density_outside_unit_interval(
    small: tuple[StateDict, list[StateDict]], method: str, density: float
) -> None:
    base, models = small
    with pytest.raises(ValueError, match="density") as err:
        npsfuse.merge(base, models, method, density=density)
    assert format(density, 'g') in str(err.value).lower()  # the engine writes 0, NaN


@pytest.mark.parametrize("weights", [[1.0], [1.0, 2.0, 3.0], []])
def test_weights_of_wrong_length(
    small: tuple[StateDict, list[StateDict]], weights: list[float]
) -> None:
    base, models = small
    with pytest.raises(ValueError, match=rf"{len(weights)} values of weights given for 2 models"):
        npsfuse.merge(base, models, "task_arithmetic", weights=weights)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(small: tuple[StateDict, list[StateDict]], bad: float) -> None:
    base, models = small
    with pytest.raises(ValueError, match="weights of model 1 must be a finite number"):
        npsfuse.merge(base, models, "linear", weights=[1.0, bad])


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "dare_linear"])
def test_weights_summing_to_zero_cannot_normalize(
    small: tuple[StateDict, list[StateDict]], method: str
) -> None:
    base, models = small
    # linear averages the base in with the default weight 1: −2 cancels both
    weights = [1.0, -2.0] if method in BASE_AS_MODEL else [1.0, -1.0]
    with pytest.raises(ValueError, match="sum to 0"):
        npsfuse.merge(base, models, method, weights=weights, normalize=True)


def test_empty_model_list(small: tuple[StateDict, list[StateDict]]) -> None:
    base, _ = small
    with pytest.raises(ValueError, match="non-empty"):
        npsfuse.merge(base, [], "ties")


def test_tensor_missing_from_a_model(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    del models[1]["b"]
    with pytest.raises(ValueError, match=r'"b" is missing from model 1'):
        npsfuse.merge(base, models, "ties")


def test_extra_tensor_in_a_model(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    models[0]["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r'"extra.weight" of model 0 is not in the base'):
        npsfuse.merge(base, models, "ties")


def test_shape_mismatch_names_tensor_and_both_shapes(
    small: tuple[StateDict, list[StateDict]],
) -> None:
    base, models = small
    models[1]["w"] = torch.zeros(5, 6)
    with pytest.raises(ValueError) as err:
        npsfuse.merge(base, models, "ties")
    msg = str(err.value)
    assert 'tensor "w" has shape [5 6] in model 1 but [6 5] in the base' in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["base", "model"])
@pytest.mark.parametrize("method", ["ties", "linear"])
def test_non_finite_values_name_the_tensor(
    dtype: torch.dtype, bad: float, where: str, method: str
) -> None:
    shapes = {"ok": (4, 4), "big.weight": (200, 100)}
    base, models = make_family(shapes, n_models=2, seed=41, dtype=dtype)
    target = base if where == "base" else models[1]
    target["big.weight"] = target["big.weight"].clone()
    target["big.weight"][150, 7] = bad  # in the second Go chunk
    with pytest.raises(ValueError, match=r"'big.weight'|\"big.weight\"") as err:
        npsfuse.merge(base, models, method)
    msg = str(err.value)
    assert ("base" in msg) if where == "base" else ("model 1" in msg)
    assert str(150 * 100 + 7) in msg  # the flat index
    assert re.search("nan|inf", msg, re.IGNORECASE)


def test_non_cpu_tensor_is_a_type_error(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    # The "meta" device stands in for CUDA: anything that is not CPU memory.
    models[0]["w"] = torch.empty(6, 5, device="meta")
    with pytest.raises(TypeError, match=r"'w'.*meta"):
        npsfuse.merge(base, models, "ties")
    models[0]["w"] = base["w"].clone()
    base["b"] = torch.empty(5, device="meta")
    with pytest.raises(TypeError, match=r"'b'.*meta"):
        npsfuse.merge(base, models, "linear")


@pytest.mark.parametrize("dtype", [torch.complex64])  # float64: test_peft_inputs.py
def test_unsupported_float_dtype(
    small: tuple[StateDict, list[StateDict]], dtype: torch.dtype
) -> None:
    base, models = small
    for sd in [base, *models]:
        sd["w"] = sd["w"].to(dtype)
    name = {torch.float64: "F64", torch.complex64: "C64"}[dtype]
    with pytest.raises(TypeError, match=f'"w" has dtype {name} in the base'):
        npsfuse.merge(base, models, "ties")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensors_that_differ(
    small: tuple[StateDict, list[StateDict]], dtype: torch.dtype
) -> None:
    base, models = small
    base["ids"] = torch.zeros(4, dtype=dtype)
    models[0]["ids"] = torch.zeros(4, dtype=dtype)
    models[1]["ids"] = torch.ones(4, dtype=dtype)
    name = {torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}[dtype]
    with pytest.raises(TypeError, match=rf'"ids" \({name}\) differs between the base and model 1'):
        npsfuse.merge(base, models, "ties")


def test_unsupported_output_dtype(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    with pytest.raises(TypeError, match="float64"):
        npsfuse.merge(base, models, "ties", dtype=torch.float64)


def test_unknown_keyword(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    with pytest.raises(ValueError, match="densty"):
        npsfuse.merge(base, models, "ties", densty=0.5)


@pytest.mark.parametrize("scope", ["layer", "", "GLOBAL"])
def test_bad_scope(small: tuple[StateDict, list[StateDict]], scope: str) -> None:
    base, models = small
    with pytest.raises(ValueError, match="scope"):
        npsfuse.merge(base, models, "ties", scope=scope)


def test_nonexistent_checkpoint_path(tmp_path: Path, small: tuple[StateDict, list[StateDict]]
                                     ) -> None:
    base, models = small
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        npsfuse.merge(base, [missing, *models], "ties")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        npsfuse.merge(str(missing), models, "ties")
    with pytest.raises(FileNotFoundError):
        npsfuse.task_vector(base, missing)


def test_folder_without_weights(tmp_path: Path, small: tuple[StateDict, list[StateDict]]
                                ) -> None:
    base, models = small
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no safetensors"):
        npsfuse.merge(base, [tmp_path / "empty"], "ties")


def test_not_a_model(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    with pytest.raises(TypeError, match="model 1"):
        npsfuse.merge(base, [models[0], 42], "ties")


def test_task_vector_shape_mismatch(small: tuple[StateDict, list[StateDict]]) -> None:
    base, models = small
    models[0]["b"] = torch.zeros(6)
    with pytest.raises(ValueError, match=r'"b" has shape \[6\] in model 0 but \[5\] in the base'):
        npsfuse.task_vector(base, models[0])


# ------------------------------------------- Go errors reach Python typed


def test_go_input_errors_become_value_errors() -> None:
    with pytest.raises(ValueError, match="parameters"):
        _core.call(_core.go.Merge, "ties", json.dumps({"bogus": 1}), 0, 1, 0, 0)
    with pytest.raises(ValueError, match="unknown merge method"):
        _core.call(_core.go.Merge, "nope", "{}", 0, 1, 0, 0)


def test_go_bad_tensor_errors_become_type_errors() -> None:
    with pytest.raises(TypeError, match="null"):
        _core.call(_core.go.Inspect, 0, 0, 1)
    with pytest.raises(TypeError, match="negative"):
        _core.call(_core.go.Inspect, 0, 0, -1)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della"])
def test_overflow_is_refused_not_written(method: str) -> None:
    """λ ≥ 3e38, or a float16 sum beyond 65504, must not become ±Inf silently."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 8, generator=g)}
    models = [{"w": base["w"] + torch.randn(4, 8, generator=g)} for _ in range(2)]
    with pytest.raises(ValueError, match=r'tensor "w": the merged value .* every input is finite'):
        npsfuse.merge(base, models, method, lam=3e38,
                      **({"density": 0.5} if method in USES_DENSITY else {}))
    half = {"w": torch.full((4, 8), 60000.0, dtype=torch.float16)}
    up = [{"w": torch.full((4, 8), 65000.0, dtype=torch.float16)} for _ in range(2)]
    with pytest.raises(ValueError, match="does not fit the output dtype float16"):
        npsfuse.merge(half, up, "task_arithmetic", lam=1.0)
