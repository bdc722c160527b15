"""``npsfuse.merge`` with mergekit's ``slices=`` and tokenizer keywords
(issue #14 item 8): the same bits as the same YAML through ``npsfuse merge``.

The keywords are carried out by the streaming engine (``merge_checkpoints``),
so the tests compare every tensor bit for bit with the CLI's output of the
equivalent config, and the merged tokenizers' vocabularies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import npsfuse  # noqa: E402
from test_mergekit_tokenizer import _make_family  # noqa: E402


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """base, ft0/ft1 (vocabularies grown by added tokens), ft2 (the base's)."""
    return _make_family(tmp_path_factory.mktemp("kwfamily"), tied=False)


def _cli(conf: dict[str, Any], out: Path) -> tuple[dict[str, Any], Any]:
    path = out.with_suffix(".yml")
    path.write_text(yaml.safe_dump(conf))
    r = subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "merge", str(path), str(out), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    sd: dict[str, Any] = {}
    for f in sorted(out.glob("*.safetensors")):
        sd.update(safetensors_torch.load_file(f))
    tok = None
    if (out / "tokenizer.json").exists():
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(out)
    return sd, tok


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def test_tokenizer_keywords_give_the_cli_merge(family: dict[str, str], tmp_path: Path) -> None:
    rules = {"<a>": {"source": {"kind": "zero"}}, "w5": {"source": 1, "force": True}}
    got = npsfuse.merge(
        family["base"], [family["ft0"], family["ft1"]], "task_arithmetic",
        weights=[0.7, 0.4], tokenizer={"source": "union", "tokens": rules},
        chat_template="chatml",
    )  # fmt: skip
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": family["base"],
        "models": [
            {"model": family["ft0"], "parameters": {"weight": 0.7}},
            {"model": family["ft1"], "parameters": {"weight": 0.4}},
        ],
        "seed": 0,
        "tokenizer": {
            "source": "union",
            "tokens": {
                "<a>": {"source": {"kind": "zero"}},
                "w5": {"source": family["ft1"], "force": True},
            },
        },
        "chat_template": "chatml",
    }
    want, tok = _cli(conf, tmp_path / "cli")
    _same(got, want)
    assert got.tokenizer.get_vocab() == tok.get_vocab()
    assert got.tokenizer.chat_template == tok.chat_template
    assert "<a>" in got.tokenizer.get_vocab()


def test_tokenizer_source_and_dtype(family: dict[str, str], tmp_path: Path) -> None:
    got = npsfuse.merge(family["base"], [family["ft0"], family["ft1"]], "ties", density=0.5,
                        tokenizer_source=0, dtype=torch.bfloat16)  # fmt: skip
    conf = {
        "merge_method": "ties",
        "base_model": family["base"],
        "models": [{"model": family["ft0"]}, {"model": family["ft1"]}],
        "parameters": {"density": 0.5},
        "seed": 0,
        "tokenizer_source": family["ft0"],
        "out_dtype": "bfloat16",
    }
    want, tok = _cli(conf, tmp_path / "cli")
    _same(got, want)
    assert got["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert got.tokenizer.get_vocab() == tok.get_vocab()


def test_slices_give_the_cli_frankenmerge(family: dict[str, str], tmp_path: Path) -> None:
    models = [family["ft2"], family["base"]]
    slices = [
        {"sources": [{"model": 0, "layer_range": [0, 2]}]},
        {"sources": [{"model": 1, "layer_range": [1, 2]}]},
    ]
    got = npsfuse.merge(None, models, "passthrough", slices=slices)
    assert got.tokenizer is None
    conf = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": family["ft2"], "layer_range": [0, 2]}]},
            {"sources": [{"model": family["base"], "layer_range": [1, 2]}]},
        ],
    }
    want, _ = _cli(conf, tmp_path / "cli")
    _same(got, want)
    assert "model.layers.2.mlp.up_proj.weight" in got  # three layers out of two plus one
    # slerp per slice, with a t gradient and the sources naming paths
    slices = [{"sources": [{"model": family["base"], "layer_range": [0, 2]},
                           {"model": family["ft2"], "layer_range": [0, 2]}],
               "base_model": family["base"]}]  # fmt: skip
    got = npsfuse.merge(None, [], "slerp", slices=slices, t=[0.2, 0.8])
    want, _ = _cli(
        {"merge_method": "slerp", "slices": slices, "parameters": {"t": [0.2, 0.8]}},
        tmp_path / "slerp",
    )
    _same(got, want)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda f: npsfuse.merge({"w": torch.ones(2)}, [f["ft0"]], "linear",
                                 tokenizer_source="union"), "must be checkpoint folders"),
        (lambda f: npsfuse.merge(f["base"], [f["ft0"]], "linear", tokenizer_source="union",
                                 exclude=["lm_head"]), "exclude cannot be combined"),
        (lambda f: npsfuse.merge(None, [f["ft0"]], "passthrough",
                                 slices=[{"sources": [{"model": 3, "layer_range": [0, 1]}]}]),
         "model index 3"),
        (lambda f: npsfuse.merge(None, [f["ft0"], f["ft2"]], "linear", weights=[1, 2],
                                 slices=[{"sources": [{"model": 0, "layer_range": [0, 1]}]}]),
         "per-model parameters go into each source"),
        (lambda f: npsfuse.merge(None, [], "passthrough", slices=[]), "non-empty list"),
    ],
)  # fmt: skip
def test_keywords_refuse_what_a_config_cannot_say(
    family: dict[str, str], call: Any, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        call(family)
