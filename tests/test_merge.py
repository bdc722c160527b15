"""``npsfuse.merge`` and ``npsfuse.task_vector`` against the NumPy reference."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import npsfuse
import numpy as np
import pytest
import reference as ref
import torch
from conftest import SHAPES, StateDict, make_family, to_numpy
from npsfuse.merging import USES_DENSITY
from safetensors.torch import save_file

ATOL = 1e-6

#: (method, parameters) pairs covering weights, λ, normalize and density.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("linear", {}),
    ("linear", {"weights": [0.5, 1.0, 2.0]}),
    ("linear", {"weights": [0.2, 0.3, 0.4], "normalize": False}),
    ("task_arithmetic", {}),
    ("task_arithmetic", {"weights": [0.3, 0.5, 0.9], "lam": 0.7, "normalize": True}),
    ("task_arithmetic", {"weights": [1.0, -0.5, 2.0], "lam": 1.3}),
    ("ties", {}),
    ("ties", {"density": 0.5, "weights": [0.5, 1.0, 1.5], "lam": 0.8}),
    ("ties", {"density": 0.7, "normalize": False, "lam": 1.2}),
    ("ties", {"density": 1.0}),
    ("dare_linear", {"density": 0.3, "seed": 7}),
    ("dare_linear", {"density": 0.6, "weights": [1.0, 0.5, 0.25], "normalize": True,
                     "seed": 2**63 + 11}),
    ("dare_linear", {"density": 1.0, "lam": 0.5}),
    ("dare_ties", {"density": 0.3, "seed": 3}),
    ("dare_ties", {"density": 0.8, "weights": [0.7, 1.1, 0.9], "lam": 0.9,
                   "normalize": True}),
    ("magnitude_prune", {"density": 0.1}),
    ("magnitude_prune", {"density": 0.45, "weights": [2.0, 1.0, 0.5], "lam": 0.6,
                         "normalize": True}),
]


def _ids(case: tuple[str, dict[str, Any]]) -> str:
    method, params = case
    return method + "-" + ",".join(f"{k}={v}" for k, v in params.items())


def assert_matches(
    got: dict[str, torch.Tensor], want: dict[str, np.ndarray], atol: float = ATOL
) -> None:
    """Every tensor of ``got`` is within ``atol`` of the float32 reference."""
    assert list(got) == list(want)
    for k, w in want.items():
        g = got[k]
        assert tuple(g.shape) == w.shape, k
        diff = np.abs(g.float().numpy() - w)
        assert diff.size == 0 or diff.max() <= atol, f"{k}: max abs diff {diff.max():.3g}"


def assert_close_lowp(
    got: dict[str, torch.Tensor], want: dict[str, np.ndarray], dtype: torch.dtype
) -> None:
    """``got`` equals the reference cast to ``dtype`` up to one unit in the last place.

    Go and NumPy may differ in the last float32 bit, which can flip the
    rounding to bf16/fp16; at least 99 % of entries must match exactly.
    """
    rtol = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    for k, w in want.items():
        g = got[k]
        assert g.dtype == dtype, k
        exp = torch.from_numpy(w).to(dtype)
        torch.testing.assert_close(g.float(), exp.float(), rtol=rtol, atol=ATOL, msg=k)
        if exp.numel():
            same = (g.view(torch.int16) == exp.view(torch.int16)).float().mean().item()
            assert same >= 0.99, f"{k}: only {same:.3f} of entries bit-identical"


def run_reference(
    base: StateDict, models: list[StateDict], method: str, **params: Any
) -> dict[str, np.ndarray]:
    """The NumPy reference on the float tensors of torch state dicts, widened to float32."""
    return ref.merge(to_numpy(base), [to_numpy(m) for m in models], method, **params)


# --------------------------------------------------------- reference sanity


def test_reference_rng_known_answers() -> None:
    # SplitMix64 seeded with 0: the first output is mix(0x9E3779B97F4A7C15).
    assert int(ref.mix(np.uint64(0x9E3779B97F4A7C15))) == 0xE220A8397B1DCDAF
    assert int(ref.fnv1a64("")) == 0xCBF29CE484222325
    assert int(ref.fnv1a64("a")) == 0xAF63DC4C8601EC8C
    u = ref.uniform(ref.stream_key(0, "w", 0), 10_000)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.02


def test_reference_topk_ties_by_lower_index() -> None:
    x = np.array([1, -3, 3, 2, -3, 0], dtype=np.float32)
    assert ref.topk_mask(x, 0.34).tolist() == [False, True, True, False, False, False]
    assert ref.topk_mask(x, 0.1).sum() == 0


# ------------------------------------------------------------ float32 matrix


def test_methods_list() -> None:
    got = npsfuse.methods()
    assert got == sorted(got)
    assert set(ref.METHODS) <= set(got)


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float32_matches_reference(case: tuple[str, dict[str, Any]], scope: str) -> None:
    method, params = case
    base, models = make_family(seed=1)
    got = npsfuse.merge(base, models, method, scope=scope, **params)
    want = run_reference(base, models, method, scope=scope, **params)
    for k in want:
        assert got[k].dtype == torch.float32
    assert_matches(got, want)


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("method", ["ties", "magnitude_prune"])
@pytest.mark.parametrize("density", [0.25, 0.5, 0.9])
def test_topk_ties_broken_by_lower_index(method: str, density: float, scope: str) -> None:
    # On 1/8 and 1/4 grids θ_t − θ₀ is exact and thousands of |τ| are equal,
    # so which tied entries are kept decides the result.
    base, models = make_family(seed=2, quantized=True)
    got = npsfuse.merge(base, models, method, density=density, scope=scope)
    want = run_reference(base, models, method, density=density, scope=scope)
    assert_matches(got, want)


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("method", ["ties", "magnitude_prune"])
def test_topk_large_tensor(method: str, scope: str) -> None:
    # Over 2^20 entries: the engine selects with several goroutines and
    # hands out tied slots chunk by chunk.
    shapes = {"big": (1025, 1024), "small.bias": (300,)}
    base, models = make_family(shapes, n_models=2, seed=3, quantized=True)
    got = npsfuse.merge(base, models, method, density=0.3, scope=scope)
    want = run_reference(base, models, method, density=0.3, scope=scope)
    assert_matches(got, want)


def test_magnitude_prune_keeps_exactly_k() -> None:
    base, models = make_family(n_models=1, seed=4)
    out = npsfuse.merge(base, models, "magnitude_prune", density=0.3)
    for k, b in base.items():
        kept = int((out[k] != b).sum())
        assert kept == int(0.3 * b.numel()), k


def test_global_scope_ranks_across_tensors() -> None:
    shapes = {"loud": (50, 40), "quiet": (30, 20)}
    base, models = make_family(shapes, n_models=1, seed=5)
    models[0]["quiet"] = base["quiet"] + 1e-3 * torch.sign(torch.randn(30, 20))
    models[0]["loud"] = base["loud"] + 1.0 + torch.rand(50, 40)
    # 2 000 of 2 600 entries kept: globally all of "loud", and 0 of "quiet".
    d = 2000 / 2600 + 1e-9
    glob = npsfuse.merge(base, models, "magnitude_prune", density=d, scope="global")
    per = npsfuse.merge(base, models, "magnitude_prune", density=d, scope="tensor")
    assert torch.equal(glob["quiet"], base["quiet"])
    assert int((glob["loud"] != base["loud"]).sum()) == 2000
    assert int((per["quiet"] != base["quiet"]).sum()) == int(d * 600)


def test_global_ties_at_the_cut_follow_tensor_names_not_dict_order() -> None:
    # Every |τ| is 1: the cut keeps the first half in (name, index) order,
    # i.e. all of "a", whatever order the state dicts list the tensors in.
    base = {"b": torch.zeros(4, 5), "a": torch.zeros(4, 5)}
    model = {"b": torch.ones(4, 5), "a": -torch.ones(4, 5)}
    for order in (["b", "a"], ["a", "b"]):
        b = {k: base[k] for k in order}
        m = {k: model[k] for k in order}
        out = npsfuse.merge(b, [m], "magnitude_prune", density=0.5, scope="global")
        assert torch.equal(out["a"], model["a"]), order
        assert torch.equal(out["b"], base["b"]), order
        assert list(out) == order


def _density(method: str, d: float) -> dict[str, float]:
    """``density=d`` for a method that reads it (the others refuse it)."""
    return {"density": d} if method in USES_DENSITY else {}


def test_edge_shapes_empty_and_scalar() -> None:
    shapes = {"w": (20, 10), "empty": (0, 4), "scalar": (), "v": (7,)}
    base, models = make_family(shapes, n_models=2, seed=6)
    for method in ref.METHODS:
        for scope in ("tensor", "global"):
            got = npsfuse.merge(base, models, method, scope=scope, **_density(method, 0.5))
            want = run_reference(base, models, method, density=0.5, scope=scope)
            assert got["empty"].shape == (0, 4) and got["scalar"].shape == ()
            assert_matches(got, want)


def test_numpy_state_dicts_accepted() -> None:
    base, models = make_family(seed=7)
    got = npsfuse.merge(to_numpy(base), [to_numpy(m) for m in models], "ties")
    want = npsfuse.merge(base, models, "ties")
    for k in want:
        assert torch.equal(got[k], want[k])


def test_requires_grad_inputs() -> None:
    base, models = make_family(seed=8)
    models = [{k: v.clone().requires_grad_(True) for k, v in m.items()} for m in models]
    got = npsfuse.merge(base, models, "task_arithmetic", lam=0.5)
    assert_matches(got, run_reference(base, models, "task_arithmetic", lam=0.5))
    assert not any(t.requires_grad for t in got.values())


# ----------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_low_precision_inputs(case: tuple[str, dict[str, Any]], dtype: torch.dtype) -> None:
    method, params = case
    base, models = make_family(seed=9, dtype=dtype)
    got = npsfuse.merge(base, models, method, **params)
    want = run_reference(base, models, method, **params)
    assert_close_lowp(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
def test_low_precision_inputs_float32_output(method: str, dtype: torch.dtype) -> None:
    # Widening is exact and the arithmetic float32, so a float32 output
    # matches the reference run on the widened values to float32 precision.
    base, models = make_family(seed=10, dtype=dtype)
    got = npsfuse.merge(base, models, method, seed=5, dtype=torch.float32,
                        **_density(method, 0.4))
    want = run_reference(base, models, method, density=0.4, seed=5)
    for t in got.values():
        assert t.dtype == torch.float32
    assert_matches(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_inputs_low_precision_output(dtype: torch.dtype) -> None:
    base, models = make_family(seed=11)
    got = npsfuse.merge(base, models, "ties", density=0.3, dtype=dtype)
    assert_close_lowp(got, run_reference(base, models, "ties", density=0.3), dtype)


def test_mixed_dtypes_per_tensor() -> None:
    base, models = make_family(seed=12)
    kinds = {"embed.weight": torch.bfloat16, "layer.0.weight": torch.float16}
    for sd in [base, *models]:
        for k, dt in kinds.items():
            sd[k] = sd[k].to(dt)
    got = npsfuse.merge(base, models, "dare_ties", density=0.5, seed=1)
    want = run_reference(base, models, "dare_ties", density=0.5, seed=1)
    for k, t in got.items():
        assert t.dtype == base[k].dtype
    assert_close_lowp({"embed.weight": got["embed.weight"]},
                      {"embed.weight": want["embed.weight"]}, torch.bfloat16)
    assert_close_lowp({"layer.0.weight": got["layer.0.weight"]},
                      {"layer.0.weight": want["layer.0.weight"]}, torch.float16)
    rest = [k for k in want if k not in kinds]
    assert_matches({k: got[k] for k in rest}, {k: want[k] for k in rest})


# ----------------------------------------------------- determinism and seeds


def _bits(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.view(torch.int32) for k, t in sd.items()}


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize(
    ("method", "scope"),
    [("dare_ties", "tensor"), ("dare_linear", "global"), ("ties", "global"),
     ("magnitude_prune", "tensor")],
)
def test_bit_identical_across_thread_counts(method: str, scope: str) -> None:
    shapes = {**SHAPES, "big": (1100, 1000)}
    base, models = make_family(shapes, n_models=2, seed=13, quantized=method != "dare_ties")
    results = []
    for n in (1, 0, 3):
        npsfuse.set_num_threads(n)
        if n == 1:
            assert npsfuse.get_num_threads() == 1
        results.append(_bits(npsfuse.merge(base, models, method, density=0.35, seed=99,
                                           scope=scope)))
    for other in results[1:]:
        for k in results[0]:
            assert torch.equal(results[0][k], other[k]), k


def _dare_mask(
    base: StateDict, models: list[StateDict], seed: int, weights: list[float] | None = None
) -> dict[str, np.ndarray]:
    """Which entries DARE kept (single model, or weights selecting one model)."""
    out = npsfuse.merge(base, models, "dare_linear", density=0.5, seed=seed, weights=weights)
    return {k: (out[k] != base[k]).flatten().numpy() for k in base}


def test_dare_mask_follows_documented_rng() -> None:
    base, models = make_family(n_models=2, seed=14)
    for m in range(2):
        w = [1.0 if i == m else 0.0 for i in range(2)]
        mask = _dare_mask(base, models, seed=123, weights=w)
        for k, b in base.items():
            want = ref.dare_mask(123, k, m, b.numel(), 0.5)
            np.testing.assert_array_equal(mask[k], want, err_msg=f"{k} model {m}")


def test_dare_seeds_models_and_names_give_different_masks() -> None:
    shapes = {"a": (100, 50), "b": (100, 50)}
    base, models = make_family(shapes, n_models=1, seed=15)
    models = [models[0], copy.deepcopy(models[0])]
    m1 = _dare_mask(base, models[:1], seed=1)
    m2 = _dare_mask(base, models[:1], seed=2)
    assert abs(m1["a"].mean() - 0.5) < 0.05
    assert (m1["a"] != m2["a"]).mean() > 0.3
    # Same task vector under two names, and in two model slots: other streams.
    models[0]["b"] = models[0]["a"].clone()
    base["b"] = base["a"].clone()
    m = _dare_mask(base, models[:1], seed=1)
    assert (m["a"] != m["b"]).mean() > 0.3
    first = _dare_mask(base, models, seed=1, weights=[1.0, 0.0])
    second = _dare_mask(base, models, seed=1, weights=[0.0, 1.0])
    assert (first["a"] != second["a"]).mean() > 0.3
    # And the same seed reproduces the mask.
    again = _dare_mask(base, models[:1], seed=1)
    np.testing.assert_array_equal(again["a"], m["a"])


# ------------------------------------------------------ mergekit convention


def _mergekit_ties(
    base: np.ndarray, models: list[np.ndarray], density: float, lam: float
) -> np.ndarray:
    """A direct transcription of mergekit's ``ties`` (weights 1, normalize true)."""
    deltas = np.stack([m - base for m in models]).reshape(len(models), -1)
    k = int(density * deltas.shape[1])
    trimmed = np.zeros_like(deltas)
    for i, d in enumerate(deltas):  # sparsify.magnitude: top-k of |delta|
        idx = np.argpartition(-np.abs(d), k - 1)[:k]
        trimmed[i, idx] = d[idx]
    weights = np.ones((len(models), 1), dtype=np.float32)
    weighted = trimmed * weights
    majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0).astype(np.float32)
    mask = np.sign(weighted) == majority
    mixed = (weighted * mask).sum(axis=0)
    divisor = (weights * mask).sum(axis=0)
    divisor[divisor == 0] = 1
    mixed = mixed / divisor
    return (base.reshape(-1) + np.float32(lam) * mixed).reshape(base.shape)


@pytest.mark.parametrize("density", [0.2, 0.6])
def test_ties_equals_mergekit(density: float) -> None:
    base, models = make_family(seed=16)
    got = npsfuse.merge(base, models, "ties", density=density, lam=0.9)
    for k, b in to_numpy(base).items():
        want = _mergekit_ties(b, [m[k].numpy() for m in models], density, 0.9)
        np.testing.assert_allclose(got[k].numpy(), want, rtol=0, atol=ATOL, err_msg=k)


def test_task_arithmetic_equals_mergekit() -> None:
    base, models = make_family(seed=17)
    got = npsfuse.merge(base, models, "task_arithmetic", weights=[0.5, 0.3, 0.2], lam=1.1)
    for k, b in base.items():
        want = b + 1.1 * sum(w * (m[k] - b) for w, m in zip([0.5, 0.3, 0.2], models, strict=True))
        torch.testing.assert_close(got[k], want, rtol=0, atol=ATOL)


# ------------------------------------------------------------- model forms


def _tiny_net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )


def test_module_inputs_match_state_dicts() -> None:
    base = _tiny_net(0)
    tuned = []
    for i in range(3):
        net = copy.deepcopy(base)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        tuned.append(net)
    got = npsfuse.merge(base, tuned, "ties", density=0.5)
    want = npsfuse.merge(base.state_dict(), [n.state_dict() for n in tuned], "ties", density=0.5)
    assert list(got) == list(base.state_dict())
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert got["1.num_batches_tracked"].dtype == torch.int64
    ref_out = run_reference(base.state_dict(), [n.state_dict() for n in tuned], "ties",
                            density=0.5)
    assert_matches({k: got[k] for k in ref_out}, ref_out)
    fresh = _tiny_net(1)
    fresh.load_state_dict(got)  # the result is a loadable state dict


def _save_folder(sd: StateDict, folder: Path, sharded: bool) -> None:
    """Write ``sd`` as a Hugging Face folder, in one file or two shards with an index."""
    folder.mkdir()
    if not sharded:
        save_file(sd, str(folder / "model.safetensors"))
        return
    keys = list(sd)
    shards = [keys[::2], keys[1::2]]
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, str(folder / fname))
        weight_map.update({k: fname for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize(("method", "scope"), [("ties", "tensor"), ("ties", "global"),
                                               ("dare_ties", "tensor"), ("linear", "tensor")])
def test_safetensors_folder_matches_state_dicts(
    tmp_path: Path, sharded: bool, method: str, scope: str
) -> None:
    base, models = make_family(seed=18, buffers=True)
    _save_folder(base, tmp_path / "base", sharded)
    for i, m in enumerate(models):
        _save_folder(m, tmp_path / f"ft{i}", sharded)
    paths = [str(tmp_path / f"ft{i}") for i in range(len(models))]
    kw = {"density": 0.4} if method in USES_DENSITY else {}
    got = npsfuse.merge(tmp_path / "base", paths, method, seed=4, scope=scope, **kw)
    want = npsfuse.merge(base, models, method, seed=4, scope=scope, **kw)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_single_safetensors_file(tmp_path: Path) -> None:
    base, models = make_family(seed=19)
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(models[0], str(tmp_path / "ft.safetensors"))
    got = npsfuse.merge(str(tmp_path / "base.safetensors"), [tmp_path / "ft.safetensors"],
                        "task_arithmetic")
    want = npsfuse.merge(base, models[:1], "task_arithmetic")
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ------------------------------------------------------ buffers, task_vector


@pytest.mark.parametrize("method", ref.METHODS)
def test_integer_buffers_copied_from_base(method: str) -> None:
    base, models = make_family(seed=20, buffers=True)
    got = npsfuse.merge(base, models, method, **_density(method, 0.5))
    assert list(got) == list(base)
    for k in ("position_ids", "mask"):
        assert got[k].dtype == base[k].dtype
        assert torch.equal(got[k], base[k])
    assert_matches({k: got[k] for k in SHAPES}, run_reference(base, models, method,
                                                              density=0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_task_vector_is_exact_difference(dtype: torch.dtype) -> None:
    base, models = make_family(seed=21, dtype=dtype, buffers=True)
    tv = npsfuse.task_vector(base, models[0])
    assert list(tv) == list(SHAPES)  # integer/bool buffers left out
    for k, t in tv.items():
        want = (models[0][k].float() - base[k].float()).to(dtype)
        assert t.dtype == dtype
        assert torch.equal(t.view(torch.uint8), want.view(torch.uint8)), k


def test_task_vector_output_dtype() -> None:
    base, models = make_family(seed=22, dtype=torch.bfloat16)
    tv = npsfuse.task_vector(base, models[1], dtype=torch.float32)
    for k, t in tv.items():
        assert t.dtype == torch.float32
        assert torch.equal(t, models[1][k].float() - base[k].float()), k


def test_task_vector_then_task_arithmetic_round_trip() -> None:
    base, models = make_family(seed=23)
    tvs = [npsfuse.task_vector(base, m) for m in models]
    got = npsfuse.merge(base, models, "task_arithmetic", lam=0.4)
    for k, b in base.items():
        want = b + 0.4 * ((tvs[0][k] + tvs[1][k]) + tvs[2][k])
        torch.testing.assert_close(got[k], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_ties_agreeing_weights_summing_to_zero(method: str, normalize: bool) -> None:
    # w·τ = (0.5, 0.5): both agree with γ = +1, Σ_A w_t = 1 − 1 = 0.
    base = {"w": torch.zeros(4)}
    models = [{"w": torch.full((4,), 0.5)}, {"w": torch.full((4,), -0.5)}]
    got = npsfuse.merge(base, models, method, density=1.0, weights=[1.0, -1.0],
                        normalize=normalize)
    want = run_reference(base, models, method, density=1.0, weights=[1.0, -1.0],
                         normalize=normalize)
    assert_matches(got, want)


def test_merge_result_has_a_short_repr() -> None:
    """Issue 18 item 15: displaying a MergeResult printed every tensor."""
    base = {"a.weight": torch.zeros(300, 400), "b.bias": torch.zeros(400)}
    fts = [{k: v + i for k, v in base.items()} for i in (1, 2)]
    r = npsfuse.merge(base, fts, "task_arithmetic")
    assert repr(r) == "<MergeResult: 2 tensors, 120.4K parameters, float32>"
    n = npsfuse.merge(base, fts, "neuro")
    assert "report: " in repr(n) and "lam1" in repr(n)


@pytest.mark.parametrize("dtype", ["bfloat16", "torch.bfloat16", torch.bfloat16])
def test_dtype_by_name(dtype: Any) -> None:
    """Issue 18 item 14: dtype names are accepted as the CLI, Client and
    Evolver accept them; a bad one is refused naming the choices."""
    base = {"w": torch.zeros(4, 3)}
    fts = [{"w": torch.ones(4, 3)}, {"w": 2 * torch.ones(4, 3)}]
    r = npsfuse.merge(base, fts, "task_arithmetic", dtype=dtype)
    assert r["w"].dtype == torch.bfloat16
    want = npsfuse.merge(base, fts, "task_arithmetic", dtype=torch.bfloat16)
    assert torch.equal(r["w"], want["w"])


def test_bad_dtype_name_is_refused() -> None:
    base = {"w": torch.zeros(4, 3)}
    with pytest.raises(TypeError, match=r"dtype must be one of float32, float16, bfloat16.*'int8'"):
        npsfuse.merge(base, [base], "task_arithmetic", dtype="int8")
