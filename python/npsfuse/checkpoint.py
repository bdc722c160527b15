"""``npsfuse.merge_checkpoints``: streaming merges of checkpoints on disk.

The whole job runs in Go (``arrowio/stream``): the base and fine-tuned
checkpoints are memory-mapped, merged tensor by tensor with reads ahead and
writes behind, and written as sharded safetensors into a temporary folder
that is renamed to ``out_dir`` at the end. Peak memory is a few tensors, not
the model.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _core, _jobs

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
#: Size units: bytes, decimal (k, m, g, t) and binary (ki, mi, gi, ti) multiples.
_UNITS = {
    "": 1,
    "b": 1,
    **{u: 1000**i for i, u in enumerate("kmgt", 1)},
    **{f"{u}i": 1024**i for i, u in enumerate("kmgt", 1)},
}
_job_ids = itertools.count(1)


#: What a non-regular file is, by its type bits (``stat.S_IFMT``), for error
#: messages; any other type is "a special file".
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _check_config_file(path: str | os.PathLike[str]) -> None:
    """Refuse a config path that is missing or not a regular file, saying
    what it is, before anything opens it (reading a FIFO would block).

    Raises
    ------
    OSError
        ``FileNotFoundError``, ``IsADirectoryError`` or ``OSError`` naming
        the path.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path!r} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"config {path!r} is a directory: give the YAML file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
        raise OSError(f"config {path!r} is {kind}, not a regular file")


def parse_size(size: str | int) -> int:
    """Bytes in a size such as ``5GB``, ``500MB``, ``2GiB`` or ``1000000``."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    m = _SIZE.match(str(size))
    if not m:
        raise ValueError(f"cannot read size {size!r} (try 5GB, 500MB or a number of bytes)")
    unit = (m.group(2) or "").lower().rstrip("b")
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit in {size!r}")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return n


def _to_prepare(config: str | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The parsed config when Python prepares it first (Hub ids,
    ``model+lora``, tokenizer keys: :func:`npsfuse._prepare.needs_preparing`),
    else ``None``: the text goes to Go as it is, and Go reports whatever is
    wrong with it (several YAML documents included)."""
    from ._prepare import needs_preparing

    if not isinstance(config, Mapping):
        import yaml

        try:
            docs = list(yaml.safe_load_all(config))
        except yaml.YAMLError:
            return None
        if len(docs) != 1 or not isinstance(docs[0], Mapping):
            return None
        config = docs[0]
    return config if needs_preparing(config) else None


def merge_checkpoints(
    config: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    shard_size: str | int = "5GB",
    threads: int | None = None,
    dtype: str | None = None,
    allow_missing: bool = False,
    force: bool = False,
    quiet: bool = False,
    timing: bool = False,
) -> Path:
    """Merge checkpoints on disk as a mergekit-style configuration describes.

    Parameters
    ----------
    config
        Path of a YAML file, or the configuration as a dict: ``merge_method``,
        ``base_model``, ``models: [{model: PATH, parameters: {weight, density}}]``,
        ``parameters`` (``normalize``, ``lambda``, ``density``, ``weight``;
        ``int8_mask`` accepted and ignored), ``dtype``, ``out_dtype``, and
        npsfuse's ``scope`` (``tensor``/``global``), ``seed`` and ``transposed``.
        Relative paths are resolved against the working directory, as mergekit
        does. A model may also be a Hugging Face Hub id (``org/name``,
        ``org/name@revision``: the cached snapshot, downloaded when online)
        or mergekit's ``MODEL+LORA`` (the PEFT LoRA adapter LORA merged into
        MODEL, written to a temporary folder beside ``out_dir`` and removed
        afterwards; :mod:`npsfuse._prepare`, which the daemon's merge job
        runs too); a PEFT adapter folder listed as a model is
        ``base_model+ADAPTER``; PyTorch ``.bin`` checkpoints are converted
        there too (``torch.load(weights_only=True)``), see
        :mod:`npsfuse._hub`. Every problem is reported at once, before any
        work starts.
    out_dir
        Destination folder. It must not exist or be empty, unless ``force``.
    shard_size
        Maximum bytes per output shard (``"5GB"``, ``"500MB"``, or an int).
    threads
        Threads for the kernels (default: all cores).
    dtype
        Output dtype (``float32``, ``float16``, ``bfloat16``), overriding the
        config's ``out_dtype``/``dtype``; default: the base's dtype.
    allow_missing
        Keep the base's tensor (with a warning) where a model lacks one.
    force
        Replace a non-empty ``out_dir``.
    quiet
        No progress line and no notes on stderr (the progress line is also
        off when stderr is not a terminal).
    timing
        Print where the time went on stderr (even with ``quiet``), as one line
        ``npsfuse: timing: {JSON}`` with seconds: ``plan_s`` (open, check,
        plan), ``read_wait_s`` (waiting for input pages the read-ahead had not
        brought in yet), ``merge_s``, ``write_wait_s`` (waiting for the
        writer), ``finish_s`` (last writes, index, rename), and ``writer_s`` /
        ``sync_s`` (the writer's own busy time / closing shards, overlapped
        with the rest), plus ``seconds`` (the whole run).

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding ``model.safetensors`` (or shards with
        ``model.safetensors.index.json``), ``config.json`` with ``torch_dtype``
        set, the base's tokenizer and generation files, and a ``README.md``.

    Raises
    ------
    ValueError
        A bad configuration or checkpoint (all problems listed), mismatched
        tensors, NaN/Inf in an input.
    OSError
        ``out_dir`` exists and is not empty (without ``force``); the config
        path is missing (``FileNotFoundError``), a directory
        (``IsADirectoryError``) or not a regular file (a FIFO would block).
    KeyboardInterrupt
        On Ctrl-C; the partial output is removed and ``out_dir`` untouched.
        A Ctrl-C that comes after the merge has committed its output does
        not raise: the function returns the complete ``out_dir`` (and says
        so on stderr).
    """
    if isinstance(config, Mapping):
        text = json.dumps(dict(config))
    else:
        p = Path(config)
        _check_config_file(p)
        text = p.read_text()
    conf = _to_prepare(config if isinstance(config, Mapping) else text)

    def late() -> None:  # the folder is complete: not "nothing was written"
        print("npsfuse: interrupted after the merge had finished; the output is complete",
              file=sys.stderr)  # fmt: skip

    with contextlib.ExitStack() as cleanup:
        if conf is not None:  # Hub ids, model+lora, tokenizers: npsfuse._prepare, as the daemon
            import shutil
            import tempfile

            from ._prepare import prepare

            parent = Path(os.path.abspath(os.fspath(out_dir))).parent
            parent.mkdir(parents=True, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix=".npsfuse-inputs-", dir=parent)
            cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
            text = json.dumps(prepare(conf, scratch))
        options = {
            "out_dir": os.fspath(out_dir),
            "shard_size": parse_size(shard_size),
            "threads": int(threads or 0),
            "dtype": dtype or "",
            "allow_missing": bool(allow_missing),
            "force": bool(force),
            "progress": (not quiet) and sys.stderr.isatty(),
        }
        result = json.loads(_jobs.run(_core.go.MergeCheckpoints, text, "", json.dumps(options),
                                      job=next(_job_ids), late=late))  # fmt: skip
    if not quiet:
        for note in result.get("notes") or []:
            print(f"npsfuse: note: {note}", file=sys.stderr)
        report = result.get("report") or {}
        if "lam2" in report:  # NeuroMerging's chosen scales
            print(
                f"npsfuse: neuro: lam1 = {report.get('lam1')}, lam2 = {report['lam2']}"
                + (" (automatic)" if report.get("lam2_auto") else ""),
                file=sys.stderr,
            )
    if timing:
        t = dict(result.get("timing") or {}, seconds=result.get("seconds"))
        print(f"npsfuse: timing: {json.dumps(t)}", file=sys.stderr)
    return Path(result["out_dir"])
