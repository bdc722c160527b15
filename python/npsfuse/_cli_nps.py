"""``npsfuse compress`` and ``npsfuse decompress``: the compression commands.

``compress BASE RESULT [RESULT ...] -o FILE`` packs NPS results (files
written by :meth:`npsfuse.nps.NPSResult.save`) into one compressed file and
prints bits per parameter per task; ``decompress BASE FILE TASK OUT_DIR``
rebuilds one task's model as ``OUT_DIR/model.safetensors`` (plus the base's
``config.json`` when BASE is a folder that has one). Both take the base
first, as :func:`npsfuse.compress.load`; the old ``decompress FILE BASE ...``
order still works, with a deprecation message, when FILE is a compressed file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

_SUFFIXES = (".safetensors", ".nps")


def task_name(path: str | Path) -> str:
    """The task name of a result file: its file name without ``.safetensors``/``.nps``.

    ``results/math.nps.safetensors`` → ``math``.
    """
    name = Path(path).name
    for s in _SUFFIXES:
        if name.endswith(s) and len(name) > len(s):
            return task_name(name[: -len(s)])
    return name


def _compress(args: argparse.Namespace) -> int:
    from . import compress

    if args.name and len(args.name) != len(args.results):
        raise ValueError(f"{len(args.name)} --name given for {len(args.results)} results")
    names = args.name or [task_name(r) for r in args.results]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"task name(s) {', '.join(dupes)} occur more than once; use --name")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{str(out)!r} exists (use --force to replace it)")
    compress.save(out, args.base, dict(zip(names, args.results, strict=True)))
    if not args.quiet:
        _print_report(out, compress.report(out))
    return 0


def _print_report(path: Path, rep: dict[str, Any]) -> None:
    print(f"{path}: {rep['file_bytes']:,} bytes, {rep['tensors']} tensors")
    width = max(len(n) for n in rep["tasks"])
    for name, t in rep["tasks"].items():
        print(f"  {name:<{width}}  kept {t['kept']:,} of {t['parameters']:,} "
              f"({100 * t['density']:.2f} %)  {t['bits_per_parameter']:.3f} bits/parameter")


def _decompress(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from . import compress
    from .nps._result import _atomic_write

    if compress._is_compressed(args.base) and not compress._is_compressed(args.file):
        print("npsfuse decompress: the order FILE BASE is deprecated, use "
              "npsfuse decompress BASE FILE TASK OUT_DIR", file=sys.stderr)
        args.base, args.file = args.file, args.base
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"output folder {str(out)!r} is not empty (use --force)")
    try:
        sd = compress.load(args.base, args.file, args.task, lam=args.lam)
    except KeyError as exc:  # unknown task: the CLI reports ValueError/OSError
        raise ValueError(exc.args[0]) from None
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.contiguous() for k, t in sd.items()}
    target = out / "model.safetensors"
    _atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = Path(args.base) / "config.json"  # a file only when BASE is a folder that has one
    if config.is_file():
        shutil.copyfile(config, out / "config.json")
    if not args.quiet:
        print(f"{target} (+ config.json)" if config.is_file() else target)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``compress`` and ``decompress`` on an argparse subparsers object.

    Each sets ``func`` to a callable taking the parsed namespace and returning
    the exit status; errors surface as ``ValueError``, ``TypeError`` or
    ``OSError`` for the caller to report.
    """
    from .cli import OUT_DIR, add_command

    c = add_command(
        subparsers, "compress", _compress,
        "pack NPS results into one compressed file (bit masks + kept values)",
        "Store several NPS-pruned task vectors compactly against one base model. "
        "Task names come from the result file names (math.nps.safetensors → math) "
        "unless --name is given.",
        ("base", "the base model: a safetensors file or Hugging Face folder"),
    )
    c.add_argument("results", nargs="+", help="NPS result files (NPSResult.save)")
    c.add_argument("-o", "--output", required=True, help="the compressed file to write")
    c.add_argument("--name", action="append", default=None,
                   help="task name, once per result in order (default: from file names)")
    c.add_argument("--force", action="store_true", help="replace an existing output file")
    c.add_argument("--quiet", action="store_true", help="do not print the report")

    d = add_command(
        subparsers, "decompress", _decompress,
        "rebuild one task's model from a compressed file",
        "Write θ₀ + λ·τ_task as OUT_DIR/model.safetensors, bit-identical to the "
        "pruned result; copies config.json from BASE when it is a folder.",
        ("base", "the base model the file was made for"), ("file", "the compressed file"),
        ("task", "the task to rebuild"), OUT_DIR,
    )
    d.add_argument("--lam", type=float, default=1.0, help="scale λ of the task vector (1)")
    d.add_argument("--force", action="store_true", help="write into a non-empty folder")
    d.add_argument("--quiet", action="store_true", help="print nothing")
