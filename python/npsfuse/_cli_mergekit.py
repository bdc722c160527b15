"""mergekit's other commands: ``npsfuse moe`` (mergekit-moe configs) and
``npsfuse multi`` (mergekit-multi's named multi-document configs)."""

from __future__ import annotations

import argparse
from typing import Any

from .checkpoint import parse_size


def _moe(args: argparse.Namespace) -> int:
    from ._moe import moe

    out = moe(args.config, args.out_dir, device=args.device, seed=args.seed,
              allow_all_same=args.allow_all_same, copy_tokenizer=not args.no_copy_tokenizer,
              shard_size=parse_size(args.shard_size), force=args.force,
              progress=not args.quiet)
    if not args.quiet:
        print(out)
    return 0


def _multi(args: argparse.Namespace) -> int:
    from ._multi import multi_merge
    from .cli import merge_options

    def announce(name: str, folder: Any) -> None:
        if not args.quiet:
            print(f"npsfuse multi: merging {name} → {folder}", flush=True)

    out = multi_merge(args.config, args.intermediate_dir, args.out_path, lazy=args.lazy,
                      on_merge=announce, **merge_options(args))
    if not args.quiet:
        for name, folder in out.items():
            print(f"{name}\t{folder}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``npsfuse moe`` and ``npsfuse multi`` on the CLI's subparsers."""
    from .cli import OUT_DIR, add_command, add_merge_options

    p = add_command(
        subparsers, "moe", _moe,
        "build a Mixtral-style mixture of experts from dense models (mergekit-moe config)",
        "Build a Mixtral-style mixture of experts: the base's attention and "
        "embeddings, each expert model's MLPs as experts, routers from prompts. Takes "
        "mergekit-moe's YAML config.",
        ("config", "YAML config (mergekit-moe schema)"), OUT_DIR,
    )
    p.add_argument("--device", default="cpu",
                   help="device for the hidden-state gates (default cpu)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for random gates and noise_scale (default: unseeded, as mergekit)")
    p.add_argument("--allow-all-same", "--i-understand-this-is-not-useful-without-training",
                   dest="allow_all_same", action="store_true",
                   help="accept experts that are all the same model")
    p.add_argument("--no-copy-tokenizer", action="store_true",
                   help="do not save the base's tokenizer into the output")
    p.add_argument("--shard-size", default="5GB", help="max bytes per output shard (default 5GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    m = add_command(
        subparsers, "multi", _multi,
        "run several merges that feed each other (mergekit-multi config)",
        "Run the named merge configs of a multi-document YAML file in dependency "
        "order; a model reference that names another document means its output.",
        ("config", "multi-document YAML (mergekit-multi schema)"),
    )
    m.add_argument("--intermediate-dir", "-I", required=True,
                   help="folder for the named merges' outputs")
    m.add_argument("--out-path", default=None,
                   help="output folder of the unnamed (final) merge, if the file has one")
    m.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=True,
                   help="skip named merges whose output already exists (default: on)")
    add_merge_options(m)
