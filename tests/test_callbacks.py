"""``MergeOnSave`` in a real ``transformers.Trainer`` run (issue 18, items 3
and 4): with checkpoint rotation on, no checkpoint and no merge is deleted
by mistake and every merge finds its input; without a daemon, training goes
on (a warning, or the merge done in-process)."""

from __future__ import annotations

import logging
from pathlib import Path

import npsfuse
import pytest
import torch
from npsfuse.callbacks import MergeOnSave
from safetensors.torch import load_file
from test_daemon import Daemon, daemon, make_daemon, npsfused_bin  # noqa: F401  (fixtures)

transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.arange(8) * (i + 1) % 32
        return {"input_ids": ids, "labels": ids}


def _train(out: Path, base: Path, callback: MergeOnSave, limit: int | None = 2) -> None:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    if not base.exists():
        model.save_pretrained(base)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=8, save_steps=2, save_total_limit=limit,
        per_device_train_batch_size=2, report_to=[], use_cpu=True, logging_strategy="no",
        learning_rate=1e-2, disable_tqdm=True,
    )  # fmt: skip
    transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(), callbacks=[callback]
    ).train()


def _merged(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_rotation_deletes_neither_checkpoints_nor_merges(daemon: Daemon) -> None:  # noqa: F811
    base, out = daemon.root / "base", daemon.root / "run"
    cb = MergeOnSave(base, method="task_arithmetic", parameters={"lambda": 0.5},
                     client=daemon.client())  # fmt: skip
    _train(out, base, cb)
    # save_total_limit = 2 keeps the newest two checkpoints, and only them.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    assert [j.status()["state"] for j in cb.jobs] == ["done"] * 4
    merged = out / "merged"
    assert sorted(p.name for p in merged.iterdir()) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    # The last merge is the merge of the last checkpoint.
    want = npsfuse.merge_checkpoints(
        {"merge_method": "task_arithmetic", "base_model": str(base),
         "models": [{"model": str(out / "checkpoint-8")}], "parameters": {"lambda": 0.5}},
        daemon.dir / "want", quiet=True,
    )  # fmt: skip
    got, exp = _merged(merged / "checkpoint-8"), _merged(want)
    assert got.keys() == exp.keys() and all(torch.equal(got[k], exp[k]) for k in got)


@pytest.mark.parametrize("mode", ["warn", "local"])
def test_no_daemon_training_goes_on(tmp_path: Path, mode: str, caplog) -> None:
    base, out = tmp_path / "base", tmp_path / "run"
    cb = MergeOnSave(base, method="task_arithmetic", address=f"unix://{tmp_path}/none.sock",
                     on_unavailable=mode)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="npsfuse"):
        _train(out, base, cb, limit=None)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        f"checkpoint-{s}" for s in (2, 4, 6, 8)
    ]
    merged = sorted(p.name for p in (out / "merged").glob("*")) if mode == "local" else []
    if mode == "warn":
        assert sum("not merged" in r.message for r in caplog.records) == 4, caplog.text
        assert not (out / "merged").exists()
    else:
        assert merged == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]


def test_no_daemon_raise_stops_training(tmp_path: Path) -> None:
    cb = MergeOnSave(tmp_path / "base", address=f"unix://{tmp_path}/none.sock",
                     on_unavailable="raise")  # fmt: skip
    with pytest.raises(ConnectionError):
        _train(tmp_path / "run", tmp_path / "base", cb, limit=None)
    with pytest.raises(ValueError, match="on_unavailable"):
        MergeOnSave(tmp_path / "base", on_unavailable="ignore")
