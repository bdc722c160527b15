"""``npsfuse multi`` against mergekit-multi 0.1.5 (issue #14, item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import yaml
from test_mergekit_compat import _load, llama  # noqa: F401  (the tiny Llama family)

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")


def _docs(f: dict[str, Any]) -> list[dict[str, Any]]:
    ft = f["ft"]
    return [
        {"name": "pair", "merge_method": "ties", "base_model": f["base"],
         "parameters": {"density": 0.5},
         "models": [{"model": ft[0], "parameters": {"weight": 1.0}},
                    {"model": ft[1], "parameters": {"weight": 0.5}}],
         "dtype": "float32"},
        {"merge_method": "task_arithmetic", "base_model": f["base"],
         "models": [{"model": "pair", "parameters": {"weight": 0.7}},
                    {"model": ft[2], "parameters": {"weight": 0.3}}],
         "dtype": "float32"},
    ]


def _write(tmp: Path, docs: list[dict[str, Any]]) -> Path:
    p = tmp / "multi.yml"
    p.write_text(yaml.safe_dump_all(docs))
    return p


def test_matches_mergekit_multi(llama: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    cfg = _write(tmp_path, _docs(llama))
    r = subprocess.run([sys.executable, "-m", "mergekit.scripts.multimerge", str(cfg),
                        "-I", str(tmp_path / "mk_i"), "--out-path", str(tmp_path / "mk"),
                        "--no-copy-tokenizer"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    seen: list[str] = []
    out = npsfuse.multi_merge(cfg, tmp_path / "nf_i", tmp_path / "nf", quiet=True,
                              on_merge=lambda n, p: seen.append(n))
    assert seen == ["pair", "final"] and list(out) == ["pair", "final"]
    for inter, final in ((tmp_path / "mk_i" / "pair", tmp_path / "nf_i" / "pair"),
                         (tmp_path / "mk", tmp_path / "nf")):
        a, b = _load(inter), _load(final)
        assert sorted(a) == sorted(b)
        for k in a:  # ties and task_arithmetic agree with mergekit to rounding
            scale = float(a[k].abs().max()) or 1.0
            assert float((a[k] - b[k]).abs().max()) <= 8 * 2**-23 * scale, k
    # lazy: a second run skips the named merge (its output exists)
    seen.clear()
    npsfuse.multi_merge(cfg, tmp_path / "nf_i", tmp_path / "nf2", quiet=True,
                        on_merge=lambda n, p: seen.append(n))
    assert seen == ["final"]


@pytest.mark.parametrize(("docs", "words"), [
    ([{"name": "a", "merge_method": "linear", "models": [{"model": "b"}]},
      {"name": "b", "merge_method": "linear", "models": [{"model": "a"}]}], "circular"),
    ([{"name": "a", "merge_method": "linear", "models": [{"model": "a"}]}], "circular"),
    ([{"name": "a", "merge_method": "linear", "models": []},
      {"name": "a", "merge_method": "linear", "models": []}], "duplicate merge name 'a'"),
    ([{"merge_method": "linear", "models": []}, {"merge_method": "linear", "models": []}],
     "more than one document without a name"),
    ([{"merge_method": "linear", "models": []}], "give out_path"),
])
def test_bad_files_are_refused_before_any_merge(tmp_path: Path, docs: list[dict[str, Any]],
                                                words: str) -> None:
    cfg = _write(tmp_path, docs)
    with pytest.raises(ValueError, match=words):
        npsfuse.multi_merge(cfg, tmp_path / "i")
    assert not (tmp_path / "i").exists()


def test_cli(llama: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    cfg = _write(tmp_path, _docs(llama))
    r = subprocess.run([sys.executable, "-m", "npsfuse.cli", "multi", str(cfg), "-I",
                        str(tmp_path / "i"), "--out-path", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "config.json").is_file()
    assert (tmp_path / "i" / "pair" / "config.json").is_file()
