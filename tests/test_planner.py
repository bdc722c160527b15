"""One planner behind every door: ``npsfuse.merge`` (in process), ``npsfuse
merge`` (the CLI's ``merge_checkpoints``) and the daemon's merge job match a
merge's inputs with ``gocore/plan``, so they refuse the same bad inputs with
the same words (only the paths each door knows, and the name of its
allow-missing option, differ) and treat integer tensors the same way: copied
from the base, which every model must match in dtype, shape and values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import npsfuse
import pytest
import torch
from conftest import load_folder, make_family, save_family
from npsfuse.client import JobFailedError
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)

StateDict = dict[str, torch.Tensor]

SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (12, 8),
    "blk.0.mlp.weight": (8, 8),
    "blk.0.mlp.bias": (8,),
    "norm.weight": (8,),
}


def _family(seed: int) -> tuple[StateDict, list[StateDict]]:
    """Two fine-tunes of a base that also holds integer and boolean tensors
    every model shares."""
    base, models = make_family(SHAPES, 2, seed=seed, delta=0.1)
    for sd in (base, *models):
        sd["position_ids"] = torch.arange(6).reshape(1, 6)
        sd["mask"] = torch.tensor([True, False, True])
    return base, models


def _drop(*names: str) -> Callable[[StateDict, list[StateDict]], None]:
    def f(_: StateDict, ms: list[StateDict]) -> None:
        for n in names:
            del ms[1][n]
    return f


def _set(model: int | None, name: str, value: Callable[[], torch.Tensor]
         ) -> Callable[[StateDict, list[StateDict]], None]:
    def f(b: StateDict, ms: list[StateDict]) -> None:
        for sd in ([b, *ms] if model is None else [ms[model]]):
            sd[name] = value()
    return f


#: (case, how the inputs are spoiled, the problems every door lists, without paths).
BAD = [
    ("missing", _drop("blk.0.mlp.bias"),
     ['tensor "blk.0.mlp.bias" is missing from model 1']),
    ("missing several", _drop("norm.weight", "blk.0.mlp.bias", "mask"),
     ['tensor "blk.0.mlp.bias" is missing from model 1 (and 2 more)']),
    ("extra", _set(0, "extra.weight", lambda: torch.zeros(3)),
     ['tensor "extra.weight" of model 0 is not in the base']),
    ("shape", _set(1, "norm.weight", lambda: torch.zeros(9)),
     ['tensor "norm.weight" has shape [9] in model 1 but [8] in the base']),
    ("float stored as int", _set(1, "norm.weight", lambda: torch.zeros(8, dtype=torch.int32)),
     ['tensor "norm.weight" has dtype I32 in model 1 but F32 in the base; a merged tensor '
      "must be F32, F16 or BF16 in every model"]),
    ("float64", _set(None, "norm.weight", lambda: torch.zeros(8, dtype=torch.float64)),
     ['tensor "norm.weight" has dtype F64 in the base; npsfuse merges F32, F16 and BF16 '
      "tensors and copies integer and boolean ones: convert it"]),
    ("integer values", _set(1, "position_ids", lambda: torch.arange(1, 7).reshape(1, 6)),
     ['tensor "position_ids" (I64) differs between the base and model 1; integer and '
      "boolean tensors are copied from the base, so every model must hold the same dtype, "
      "shape and values"]),
    ("integer dtype", _set(0, "position_ids", lambda: torch.arange(6, dtype=torch.int32)
                           .reshape(1, 6)),
     ['tensor "position_ids" has dtype I32 in model 0 but I64 in the base; integer and '
      "boolean tensors are copied from the base, so every model must hold the same dtype, "
      "shape and values"]),
    ("integer shape and a missing mask", lambda b, ms: (
        _set(0, "position_ids", lambda: torch.arange(6))(b, ms), _drop("mask")(b, ms)),
     ['tensor "mask" is missing from model 1',
      'tensor "position_ids" has shape [6] in model 0 but [1 6] in the base']),
]


def _problems(message: str) -> list[str]:
    """The listed problems of a door's error, without the paths in
    parentheses and the door's allow-missing hint."""
    assert "the models do not fit together (" in message, message
    lines = [ln[4:] for ln in message.splitlines() if ln.startswith("  - ")]
    lines = [re.sub(r" \(/[^)]*\)", "", ln) for ln in lines]
    return [re.sub(r"; (--allow-missing|allow_missing) keeps the base's$", "", ln)
            for ln in lines]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_every_door_refuses_with_the_same_words(case, tmp_path: Path, daemon) -> None:  # noqa: F811
    name, spoil, problems = case
    base, models = _family(31)
    spoil(base, models)
    kind = TypeError if name in ("float stored as int", "integer values",
                                 "integer dtype") else ValueError
    if name == "float64":
        # npsfuse.merge narrows float64 inputs to float32 (issue #18, item 10) and returns
        # float64; the checkpoint doors (Go reads the files) still refuse F64 tensors.
        got = npsfuse.merge(base, models, "ties")
        narrowed = {k: v.float() if v.dtype == torch.float64 else v for k, v in base.items()}
        want = npsfuse.merge(narrowed, models, "ties")
        assert got["norm.weight"].dtype == torch.float64
        assert torch.equal(got["norm.weight"].float(), want["norm.weight"])
    else:
        with pytest.raises(kind) as notebook:
            npsfuse.merge(base, models, "ties")
        assert _problems(str(notebook.value)) == problems

    base_dir, dirs = save_family(tmp_path, base, models)
    cfg = {"merge_method": "ties", "base_model": str(base_dir),
           "models": [{"model": str(d)} for d in dirs]}
    with pytest.raises(ValueError) as cli:
        npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    assert _problems(str(cli.value)) == problems
    if name.startswith("missing"):
        assert "; --allow-missing keeps the base's" in str(cli.value)
    assert not (tmp_path / "out").exists()

    job = {"merge_method": "ties", "base_model": base, "models": [{"model": m} for m in models]}
    with pytest.raises(JobFailedError) as dmn:
        daemon.client().submit_merge(job).result(timeout=120)
    assert _problems(str(dmn.value)) == problems


def test_integer_tensors_are_copied_alike(tmp_path: Path, daemon) -> None:  # noqa: F811
    """Every door copies the base's integer and boolean tensors, unchanged by
    the output dtype, and merges the rest to the same bits."""
    base, models = _family(32)
    want = npsfuse.merge(base, models, "task_arithmetic", dtype=torch.bfloat16)
    for k in ("position_ids", "mask"):
        assert want[k].dtype == base[k].dtype and torch.equal(want[k], base[k])
    assert want["norm.weight"].dtype == torch.bfloat16

    base_dir, dirs = save_family(tmp_path, base, models)
    cfg = {"merge_method": "task_arithmetic", "base_model": str(base_dir),
           "out_dtype": "bfloat16", "models": [{"model": str(d)} for d in dirs]}
    got_cli = load_folder(npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True))
    job = {"merge_method": "task_arithmetic", "base_model": base, "out_dtype": "bfloat16",
           "models": [{"model": m} for m in models]}
    got_daemon = daemon.client().submit_merge(job).result(timeout=120)
    for door, got in (("npsfuse merge", got_cli), ("daemon", got_daemon)):
        assert sorted(got) == sorted(want), door
        for k, w in want.items():
            assert got[k].dtype == w.dtype and torch.equal(got[k], w), f"{door}: {k}"


def test_allow_missing_is_one_rule(tmp_path: Path) -> None:
    """The CLI's --allow-missing keeps the base's tensor (integer ones too)
    and notes it; what the models do hold must still fit."""
    base, models = _family(33)
    del models[1]["mask"], models[1]["norm.weight"]
    base_dir, dirs = save_family(tmp_path, base, models)
    cfg = {"merge_method": "task_arithmetic", "base_model": str(base_dir),
           "models": [{"model": str(d)} for d in dirs]}
    res = npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True, allow_missing=True)
    got = load_folder(res)
    for k in ("mask", "norm.weight"):
        assert torch.equal(got[k], base[k]), k
    models[0]["position_ids"] = models[0]["position_ids"] + 1
    (tmp_path / "2").mkdir()
    base_dir, dirs = save_family(tmp_path / "2", base, models)
    cfg["base_model"], cfg["models"] = str(base_dir), [{"model": str(d)} for d in dirs]
    with pytest.raises(ValueError, match=r'"position_ids" \(I64\) differs between the base'):
        npsfuse.merge_checkpoints(cfg, tmp_path / "out2", quiet=True, allow_missing=True)


def test_prefix_mismatch_is_explained() -> None:
    """Issue 18 item 9: a sequence-classification model against the bare
    base (names prefixed "bert.") gets a hint naming the prefix, not only
    "missing (and 102 more)"."""
    base = {f"encoder.layer.{i}.weight": torch.zeros(2, 2) for i in range(4)}
    model = {f"bert.{k}": v + 1 for k, v in base.items()}
    model["classifier.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r'the prefix "bert\." added'):
        npsfuse.merge(base, [model], "task_arithmetic")


def test_transposed_table_is_the_engines() -> None:
    """``npsfuse.merging.TRANSPOSED_BY_MODEL_TYPE`` (public since 0.1) shows the
    engine's table: GPT-2's Conv1D weights, the cross-attention ones included."""
    from npsfuse.merging import TRANSPOSED_BY_MODEL_TYPE

    gpt2 = TRANSPOSED_BY_MODEL_TYPE["gpt2"]
    assert isinstance(gpt2, tuple)
    assert {"mlp.c_fc.weight", "attn.c_attn.weight", "crossattention.c_attn.weight"} <= set(gpt2)
