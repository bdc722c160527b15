"""The Arrow C Data bridge: no copies, in-place output, struct ownership."""

from __future__ import annotations

import gc
import json
import weakref

import npsfuse
import numpy as np
import pytest
import reference as ref
import torch
from conftest import make_family, to_numpy
from npsfuse import _core
from npsfuse._bridge import ArrowPack, check_tensor
from npsfuse.merging import USES_DENSITY
from pyarrow.cffi import ffi


def _params(**kw: object) -> str:
    """The engine's JSON for a one-model linear merge (npsfuse.merge's keywords)."""
    from npsfuse.merging import _params as engine_params

    return json.dumps(engine_params("linear", 1, normalize=False, **kw))


def _buffer_address(pack: ArrowPack, i: int) -> int:
    """Address of the data buffer of the ``i``-th exported ArrowArray."""
    return int(ffi.cast("uintptr_t", pack._arrays[i].buffers[1]))


def _released(pack: ArrowPack) -> bool:
    return all(
        pack._arrays[i].release == ffi.NULL and pack._schemas[i].release == ffi.NULL
        for i in range(pack.count)
    )


def test_go_writes_into_the_python_allocated_output() -> None:
    base = torch.randn(40_000)  # three Go chunks
    model = torch.randn(40_000)
    out = torch.full((40_000,), float("nan"))
    ptr = out.data_ptr()
    pack = ArrowPack([("w", base), ("w (model 0)", model), ("w (output)", out)])
    # The exported structs point at the tensors' own memory.
    assert [_buffer_address(pack, i) for i in range(3)] == [
        base.data_ptr(), model.data_ptr(), ptr
    ]
    _core.call(_core.go.Merge, "linear", _params(weights=[2.0]), 1, 1, pack.arrays,
               pack.schemas)
    assert out.data_ptr() == ptr
    assert torch.equal(out, 2 * model)  # 2·θ₁ is exact in float32
    assert _released(pack)  # Go released every struct it was handed


def test_go_writes_low_precision_output_in_place() -> None:
    base = torch.randn(300)
    model = torch.randn(300)
    out = torch.zeros(300, dtype=torch.bfloat16)
    ptr = out.data_ptr()
    pack = ArrowPack([("w", base), ("w (model 0)", model), ("w (output)", out)])
    _core.call(_core.go.Merge, "linear", _params(), 1, 1, pack.arrays, pack.schemas)
    assert out.data_ptr() == ptr
    assert torch.equal(out, model.to(torch.bfloat16))


def test_inputs_are_not_modified() -> None:
    base, models = make_family(seed=30)
    before = [{k: v.clone() for k, v in sd.items()} for sd in [base, *models]]
    for method in ref.METHODS:
        kw = {"density": 0.3} if method in USES_DENSITY else {}
        npsfuse.merge(base, models, method, **kw)
    for saved, sd in zip(before, [base, *models], strict=True):
        for k in sd:
            assert torch.equal(saved[k], sd[k]), k


def test_contiguous_tensor_is_not_copied() -> None:
    t = torch.randn(8, 9)
    assert check_tensor("t", t) is t
    pack = ArrowPack([("t", t)])
    assert _buffer_address(pack, 0) == t.data_ptr()


def test_strided_view_is_copied_once_and_merges_correctly() -> None:
    base, models = make_family({"w": (60, 50)}, n_models=2, seed=31)
    tb = {"w": base["w"].t()}
    tm = [{"w": m["w"].t()} for m in models]
    assert not tb["w"].is_contiguous()
    # check_tensor makes the one copy a strided view needs.
    c = check_tensor("w", tb["w"])
    assert c.is_contiguous() and c.data_ptr() != tb["w"].data_ptr()
    assert torch.equal(c, tb["w"])
    got = npsfuse.merge(tb, tm, "ties", density=0.4)
    want = ref.merge(to_numpy({"w": tb["w"].contiguous()}),
                     [to_numpy({"w": m["w"].contiguous()}) for m in tm], "ties", density=0.4)
    assert got["w"].shape == (50, 60)
    np.testing.assert_allclose(got["w"].numpy(), want["w"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "tensors",
    [
        [torch.zeros(10), torch.zeros(7, dtype=torch.float16),
         torch.zeros(5, dtype=torch.bfloat16), torch.zeros(0)],
        [torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(0, 5, dtype=torch.float16)],
        [torch.zeros(0)],
    ],
    ids=["mixed", "2d", "empty-only"],
)
def test_inspect_reports_total_bytes(tensors: list[torch.Tensor]) -> None:
    pack = ArrowPack([(f"t{i}", t) for i, t in enumerate(tensors)])
    total = _core.call(_core.go.Inspect, pack.arrays, pack.schemas, pack.count)
    assert total == sum(t.numel() * t.element_size() for t in tensors)
    assert _released(pack)


def test_inspect_of_nothing() -> None:
    pack = ArrowPack([])
    assert _core.call(_core.go.Inspect, pack.arrays, pack.schemas, 0) == 0


def test_go_release_drops_the_tensor_reference() -> None:
    t = torch.zeros(16)
    ref_t = weakref.ref(t)
    pack = ArrowPack([("t", t)])
    del t
    gc.collect()
    assert ref_t() is not None  # the exported array keeps the tensor alive
    _core.call(_core.go.Inspect, pack.arrays, pack.schemas, 1)
    gc.collect()
    assert ref_t() is None  # released by Go although the pack still exists
    del pack  # __del__ must not release twice


def test_unused_pack_is_released_by_del() -> None:
    t = torch.zeros(16, dtype=torch.float16)
    ref_t = weakref.ref(t)
    pack = ArrowPack([("a", t), ("b", torch.zeros(3))])
    del t
    gc.collect()
    assert ref_t() is not None
    pack.__del__()
    assert _released(pack)
    gc.collect()
    assert ref_t() is None
    del pack  # a second __del__ is a no-op
    gc.collect()


def test_structs_released_when_go_fails() -> None:
    t = torch.zeros(16)
    ref_t = weakref.ref(t)
    pack = ArrowPack([("w", t), ("w (model 0)", torch.zeros(16)), ("w (output)", torch.zeros(16))])
    del t
    with pytest.raises(ValueError, match="parameters"):
        _core.call(_core.go.Merge, "linear", '{"bogus": 1}', 1, 1, pack.arrays, pack.schemas)
    assert _released(pack)
    gc.collect()
    assert ref_t() is None


def test_merge_returns_fresh_tensors_not_inputs() -> None:
    base, models = make_family({"w": (10, 10)}, n_models=1, seed=32)
    out = npsfuse.merge(base, models, "linear")
    assert out["w"].data_ptr() not in (base["w"].data_ptr(), models[0]["w"].data_ptr())
    # linear averages the base in as the last model
    assert torch.equal(out["w"], (models[0]["w"] + base["w"]) / 2)
    alone = npsfuse.merge(None, models, "linear")
    assert alone["w"].data_ptr() != models[0]["w"].data_ptr()
    assert torch.equal(alone["w"], models[0]["w"])  # the average of one model is itself
