"""The ``npsfuse`` command line."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__


def _merge(args: argparse.Namespace) -> int:
    from .checkpoint import merge_checkpoints

    out = merge_checkpoints(args.config, args.out_dir, timing=args.timing, **merge_options(args))
    if not args.quiet:
        print(out)
    return 0


_DESCRIPTION = ("Slim, transfer and fuse fine-tuned models: merge checkpoints, prune task "
                "vectors (NPS), evolve and search merges. `npsfuse COMMAND --help` describes "
                "each command.")


#: The output folder argument of ``npsfuse merge`` and ``npsfuse moe``.
OUT_DIR = ("out_dir", "output folder (must not exist or be empty)")


def add_command(
    subparsers: Any, name: str, func: Callable[[argparse.Namespace], int], summary: str,
    description: str, *positionals: tuple[str, str], **kw: Any,
) -> argparse.ArgumentParser:
    """Register the command ``name`` running ``func`` (``summary``: its line in
    ``npsfuse --help``) with its positional arguments, ``(name, help)`` pairs;
    ``kw`` goes to ``add_parser`` (e.g. ``epilog``). Returns its parser, for the
    options."""
    p = subparsers.add_parser(name, help=summary, description=description, **kw)
    for arg, text in positionals:
        p.add_argument(arg, help=text)
    p.set_defaults(func=func)
    return p


def add_merge_options(m: argparse.ArgumentParser) -> None:
    """The options of ``merge_checkpoints`` that ``npsfuse merge`` and ``npsfuse multi`` share."""
    m.add_argument("--shard-size", default="5GB", help="max bytes per output shard (default 5GB)")
    m.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    m.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="output dtype (default: the config's out_dtype/dtype, else the base's)")
    m.add_argument("--allow-missing", action="store_true",
                   help="keep the base's tensor where a model lacks one (with a warning)")
    m.add_argument("--force", action="store_true", help="replace non-empty output folders")
    m.add_argument("--quiet", action="store_true", help="no progress line, no notes")


def merge_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``merge_checkpoints`` that :func:`add_merge_options` registered."""
    return {k: getattr(args, k) for k in ("shard_size", "threads", "dtype", "allow_missing",
                                          "force", "quiet")}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``npsfuse`` command."""
    p = argparse.ArgumentParser(prog="npsfuse", description=_DESCRIPTION)
    p.add_argument("--version", action="version", version=f"npsfuse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    m = add_command(sub, "merge", _merge,
                    "merge checkpoints as a mergekit-style YAML config describes",
                    "Merge Hugging Face safetensors checkpoints, streaming tensor by tensor.",
                    ("config", "YAML config (mergekit schema)"), OUT_DIR)
    add_merge_options(m)
    m.add_argument("--timing", action="store_true",
                   help="print where the time went (reading, merging, writing) on stderr")
    for module in ("._cli_nps", "._cli_run", "._cli_mergekit"):  # their commands, in this order
        importlib.import_module(module, __package__).add_commands(sub)
    sub.add_parser(
        "daemon",
        help="run npsfused, the daemon serving merges, pruning and searches "
        "(arguments go to it, e.g. --config FILE)",
    )
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the merge removes its partial output."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["daemon"]:  # every flag after `daemon` belongs to npsfused
        from ._daemon_entry import main as run_daemon

        return int(run_daemon(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except _Terminated:
        print("npsfuse: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("npsfuse: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        # RuntimeError: e.g. a write that failed (disk full); no traceback, status 1
        print(f"npsfuse: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError, OSError)) else 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
