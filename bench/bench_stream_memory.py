"""Peak memory of ``npsfuse merge`` does not grow with the model (issue #14).

The streaming guarantee: ``npsfuse merge`` holds a bounded window of tensors,
not the models, so its peak resident memory is the same for a model four
times larger. This benchmark generates one Llama-shaped family (a base and
three fine-tunes, bfloat16 safetensors) at two depths, ``L`` and ``4·L``
layers of the same width, and runs the same configs on both under
``/usr/bin/time -v``:

- ``ties``: base + three fine-tunes;
- ``slices``: a passthrough frankenmerge (fine-tune 0's layers [0, ¾L) on
  fine-tune 1's [¼L, L)), whose output has 1.5·L layers;
- ``tokenizer_union``: task_arithmetic of two fine-tunes whose vocabularies
  differ (each adds its own tokens) with ``tokenizer_source: union``, so the
  embedding and LM-head rows are permuted and filled as they stream.

The figure per config is peak RSS(4·L) ÷ peak RSS(L), measured in the same
run; the goal is ≤ 1.25 while the checkpoints grow ≥ 3.5×. Baseline in the
same run: the peak RSS of ``import npsfuse`` alone (the interpreter and the
extension), which both sizes include.

Run: ``.venv/bin/python bench/bench_stream_memory.py`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from _common import Report
from bench_cli import npsfuse_env, timed, write_checkpoint

#: The family's width; ``layers`` is L (the small family) and 4·L.
SHAPE = {"vocab": 4000, "hidden": 512, "inter": 1536, "heads": 8, "kv": 4}
#: Tokens the two tokenizer fine-tunes add to the base's vocabulary.
ADDED = [["<x>", "<a>"], ["<x>", "<b>", "<c>"]]
GOAL_RSS_RATIO = 1.25
GOAL_SIZE_RATIO = 3.5


def _tokenizer(folder: Path, vocab: int, added: list[str]) -> None:
    """A word-level tokenizer of ``vocab`` words plus ``added`` tokens."""
    import tokenizers
    import transformers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.add_tokens(added)
    fast.save_pretrained(folder)


def family(root: Path, layers: int) -> tuple[Path, list[Path], list[Path], int]:
    """Base and three fine-tunes of ``layers`` layers with the base's
    vocabulary, and two more whose vocabularies add ADDED[i]. Returns (base,
    fine-tunes, tokenizer fine-tunes, bytes of the base and the three
    fine-tunes)."""
    p = {**SHAPE, "layers": layers}
    base = root / "base"
    total = write_checkpoint(base, p, -1)
    _tokenizer(base, SHAPE["vocab"], [])
    fts = []
    for i in range(3):
        ft = root / f"ft{i}"
        total += write_checkpoint(ft, p, i)
        _tokenizer(ft, SHAPE["vocab"], [])
        fts.append(ft)
    toks = []
    for i, added in enumerate(ADDED):
        ft = root / f"tok{i}"
        write_checkpoint(ft, {**p, "vocab": SHAPE["vocab"] + len(added)}, 3 + i)
        _tokenizer(ft, SHAPE["vocab"], added)
        toks.append(ft)
    return base, fts, toks, total


def configs(
    base: Path, fts: list[Path], toks: list[Path], layers: int
) -> dict[str, dict[str, Any]]:
    """The three configs, mergekit's schema."""
    common = {"dtype": "float32", "out_dtype": "bfloat16"}
    q = layers // 4
    return {
        "ties": {
            "merge_method": "ties",
            "base_model": str(base),
            **common,
            "models": [
                {"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}} for m in fts
            ],
            "parameters": {"normalize": True},
        },
        "slices": {
            "merge_method": "passthrough",
            **common,
            "slices": [
                {"sources": [{"model": str(fts[0]), "layer_range": [0, layers - q]}]},
                {"sources": [{"model": str(fts[1]), "layer_range": [q, layers]}]},
            ],
        },
        "tokenizer_union": {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            **common,
            "models": [
                {"model": str(toks[0]), "parameters": {"weight": 1.0}},
                {"model": str(toks[1]), "parameters": {"weight": 0.5}},
            ],
            "tokenizer_source": "union",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8, help="L: the small family's layers")
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go")
    ap.add_argument("--name", default="stream_memory", help="results file name")
    args = ap.parse_args()
    report = Report(
        name=args.name,
        title="npsfuse merge: peak RSS at L and 4·L layers (same width), same run",
        columns=[
            "config",
            f"peak RSS MB, {args.layers} layers",
            f"peak RSS MB, {4 * args.layers} layers",
            "RSS ratio (4·L / L)",
            "checkpoint bytes ratio (4·L / L)",
            "goal",
            "met",
            "wall s (L / 4·L)",
        ],
    )
    env = npsfuse_env()
    root = Path(tempfile.mkdtemp(prefix="npsfuse-rss-", dir=args.workdir))
    try:
        imp = timed([sys.executable, "-c", "import npsfuse"], env)
        runs: dict[str, dict[str, Any]] = {}
        sizes: dict[int, int] = {}
        for layers in (args.layers, 4 * args.layers):
            d = root / f"L{layers}"
            base, fts, toks, sizes[layers] = family(d, layers)
            for name, cfg in configs(base, fts, toks, layers).items():
                cfg_path = d / f"{name}.yaml"
                cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                out = d / f"out-{name}"
                cmd = [sys.executable, "-m", "npsfuse.cli", "merge", str(cfg_path), str(out)]
                r = timed(cmd + ["--quiet"], env)
                if r["returncode"] != 0:
                    raise SystemExit(f"{name} at {layers} layers failed:\n{r.get('stderr_tail')}")
                runs[f"{name}/{layers}"] = r
                shutil.rmtree(out)
                print(f"{name} L={layers}: {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
            shutil.rmtree(d)
        size_ratio = sizes[4 * args.layers] / sizes[args.layers]
        failed = False
        for name in ("ties", "slices", "tokenizer_union"):
            small, large = runs[f"{name}/{args.layers}"], runs[f"{name}/{4 * args.layers}"]
            ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
            met = ratio <= GOAL_RSS_RATIO and size_ratio >= GOAL_SIZE_RATIO
            failed |= not met
            report.rows.append(
                [
                    name,
                    small["peak_rss_mb"],
                    large["peak_rss_mb"],
                    ratio,
                    size_ratio,
                    f"≤ {GOAL_RSS_RATIO} at ≥ {GOAL_SIZE_RATIO}× the bytes",
                    "yes" if met else "**no**",
                    f"{small['wall_s']:.1f} / {large['wall_s']:.1f}",
                ]
            )
        report.baselines = {
            "peak RSS of `import npsfuse` alone (MB)": imp["peak_rss_mb"],
            f"bytes of the four checkpoints, {args.layers} layers": sizes[args.layers],
            f"bytes of the four checkpoints, {4 * args.layers} layers": sizes[4 * args.layers],
        }
        report.notes = [
            f"Family: Llama shapes, hidden {SHAPE['hidden']}, intermediate {SHAPE['inter']}, "
            f"vocabulary {SHAPE['vocab']}, bfloat16: a base, three fine-tunes with its "
            "vocabulary, and two more that add 2 and 3 tokens; compute float32, output bfloat16.",
            "ties merges the three fine-tunes (weight 1, density 0.5, normalize); slices stacks "
            "fine-tune 0's layers [0, ¾L) on fine-tune 1's [¼L, L); tokenizer_union merges the "
            "two with added tokens (the base's vocabulary plus 2 and 3 tokens) onto the union "
            "vocabulary. "
            "The checkpoint bytes ratio counts the base and the three fine-tunes.",
            "Peak RSS is /usr/bin/time -v's maximum resident set size of `npsfuse merge`: the "
            "interpreter, the extension, the tokenizer libraries where used, and the streaming "
            "window; the input pages sit in the page cache (read with pread), not in it.",
            "Raw runs: "
            + json.dumps(
                {
                    k: {"peak_rss_mb": v["peak_rss_mb"], "wall_s": round(v["wall_s"], 2)}
                    for k, v in runs.items()
                }
            ),
        ]
        md, _ = report.write()
        print(md.read_text())
        if failed:
            sys.exit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
