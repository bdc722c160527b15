"""Model references inside the ``tokenizer:`` block (issue #14 items 4 and 5).

mergekit's ``tokenizer.source`` and each ``tokens:`` rule's ``source`` (a
model, or a ``model_token``'s ``model``) are model references like
``models[].model``: a Hugging Face Hub id or ``MODEL+LORA`` there is resolved
the same way, and one reference written in several places resolves to one
folder, so a rule still names the model it names in ``models:``. A merge
whose references are Hub ids must give the checkpoint (and tokenizer) the
same config with local paths gives.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import npsfuse  # noqa: E402
from npsfuse import _hub  # noqa: E402
from test_mergekit_tokenizer import _make_family  # noqa: E402
from test_peft_inputs import _fake_hub_repo  # noqa: E402


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The tokenizer family, each model also in a fake Hugging Face cache as
    org/<name>; offline."""
    fam = _make_family(tmp_path / "family", tied=False)
    cache = tmp_path / "hf" / "hub"
    for i, (name, folder) in enumerate(fam.items()):
        _fake_hub_repo(cache, f"org/{name}", Path(folder), f"{i:x}" * 40, ("main",))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return fam


def _config(ref: dict[str, str], source: str) -> dict[str, Any]:
    """task_arithmetic of ft0 and ft1 with a tokenizer block whose source and
    rules name models through ``ref``."""
    return {
        "merge_method": "task_arithmetic",
        "base_model": ref["base"],
        "dtype": "float32",
        "models": [
            {"model": ref["ft0"], "parameters": {"weight": 0.7}},
            {"model": ref["ft1"], "parameters": {"weight": 0.4}},
        ],
        "tokenizer": {
            "source": source,
            "pad_to_multiple_of": 16,
            "tokens": {
                "<a>": {"source": {"kind": "zero"}},
                "<b>": {"source": {"kind": "model_token", "model": ref["ft0"], "token": "w3"}},
                "w5": {"source": ref["ft1"], "force": True},
                "<new>": {"source": {"kind": "model_token", "model": ref["base"], "token_id": 7}},
            },
        },
    }


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes but README.md (it names the inputs)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "README.md"}


def test_refs_list_the_tokenizer_block() -> None:
    conf = _config({"base": "B", "ft0": "F0", "ft1": "F1"}, "F1")
    got = [where for _, _, where in _hub._refs(conf)]
    assert got == [
        "base_model",
        "models[0].model",
        "models[1].model",
        "tokenizer.source",
        "tokenizer.tokens['<b>'].source.model",
        "tokenizer.tokens['w5'].source",
        "tokenizer.tokens['<new>'].source.model",
    ]
    for keyword in ("union", "base"):  # not models
        refs = _hub._refs(_config({"base": "B", "ft0": "F0", "ft1": "F1"}, keyword))
        assert "tokenizer.source" not in [where for _, _, where in refs]


def test_one_reference_resolves_to_one_folder(cached: dict[str, str], tmp_path: Path) -> None:
    hub = {name: f"org/{name}" for name in cached}
    conf = _hub.resolve_config(_config(hub, "org/ft1"), tmp_path / "scratch")
    tok = conf["tokenizer"]
    assert tok["source"] == conf["models"][1]["model"] == tok["tokens"]["w5"]["source"]
    assert tok["tokens"]["<b>"]["source"]["model"] == conf["models"][0]["model"]
    assert tok["tokens"]["<new>"]["source"]["model"] == conf["base_model"]
    assert all(Path(c[k]).is_dir() for c, k, _ in _hub._refs(conf))


@pytest.mark.parametrize("source", ["union", "ft1"])
def test_hub_ids_in_the_tokenizer_block_give_the_local_merge(
    cached: dict[str, str], tmp_path: Path, source: str
) -> None:
    hub = {name: f"org/{name}" for name in cached}
    local = _config(cached, cached.get(source, source))
    remote = _config(hub, hub.get(source, source))
    want = npsfuse.merge_checkpoints(copy.deepcopy(local), tmp_path / "local", quiet=True)
    got = npsfuse.merge_checkpoints(copy.deepcopy(remote), tmp_path / "hub", quiet=True)
    assert _files(got) == _files(want)
    added = json.loads((got / "tokenizer.json").read_text())["added_tokens"]
    assert "<new>" in [t["content"] for t in added]  # the rules did take effect
    assert not list(tmp_path.glob(".npsfuse-*"))  # scratch removed
