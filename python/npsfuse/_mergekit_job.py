"""mergekit-moe and mergekit-multi configs in the daemon's merge job.

The daemon (``daemon/jobs/mergekit.go``) runs ``python -m npsfuse._mergekit_job
SCRATCH`` with its ``python`` setting, after checking that every path the
config names lies inside its data roots. The request comes as JSON on stdin:

* ``{"mode": "moe", "config": MOE_CONFIG, "out_dir": PATH, "seed": N,
  "allow_all_same": B, "copy_tokenizer": B, "shard_size": N}``: the one
  implementation of ``npsfuse moe`` (:func:`npsfuse.moe`) writes the mixture
  of experts into ``out_dir``;
* ``{"mode": "multi", "configs": [DOC, ...], "out_dir": PATH | null,
  "intermediate_dir": PATH, "lazy": B, "options": {...}}``: the documents
  (each a merge config, with ``name`` except the final one) are run by the
  one implementation of ``npsfuse multi`` (:func:`npsfuse.multi_merge`, which
  takes them as parsed documents), named merges without ``intermediate_dir``
  going to SCRATCH/intermediate; ``options`` are the keyword arguments of
  :func:`npsfuse.merge_checkpoints`.

``out_dir`` is a folder that does not exist yet, inside the daemon's own
temporary folder beside the job's ``out_dir``: the daemon renames it into
place once Python is done. stdout carries JSON lines only: any number of
``{"progress": {"message": TEXT}}``, then the answer ``{"result": {...}}`` or,
on failure (exit status 1), ``{"error": {"kind": KIND, "message": TEXT}}``
(:func:`npsfuse._prepare.answer`'s protocol).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any


def run(
    request: Mapping[str, Any], scratch: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Run one request (see the module docstring); returns the result."""
    if not isinstance(request, Mapping):
        raise ValueError("the request must be a mapping with mode")
    mode = request.get("mode")
    if mode == "moe":
        from ._moe import moe

        progress("building the mixture of experts (npsfuse moe)")
        out = moe(
            dict(request["config"]),
            request["out_dir"],
            seed=request.get("seed"),
            allow_all_same=bool(request.get("allow_all_same")),
            copy_tokenizer=bool(request.get("copy_tokenizer", True)),
            shard_size=int(request.get("shard_size") or 5_000_000_000),
            progress=False,
        )
        return {"out_dir": str(out)}
    if mode == "multi":
        from ._multi import multi_merge

        docs = request.get("configs")
        if not isinstance(docs, list) or not docs:
            raise ValueError("configs must be a non-empty list of merge configs")
        inter = request.get("intermediate_dir") or os.path.join(scratch, "intermediate")
        count = {"n": 0}

        def announce(name: str, folder: Any) -> None:
            count["n"] += 1
            progress(f"merging {name} ({count['n']} of at most {len(docs)})")

        outputs = multi_merge(
            docs,
            inter,
            request.get("out_dir"),
            lazy=bool(request.get("lazy", True)),
            on_merge=announce,
            quiet=True,
            **dict(request.get("options") or {}),
        )
        return {"outputs": {n: str(p) for n, p in outputs.items()}}
    raise ValueError(f"mode {mode!r} is not moe or multi")


def main(argv: list[str] | None = None) -> int:
    """``python -m npsfuse._mergekit_job SCRATCH`` (see the module's docstring)."""
    from ._prepare import answer

    return answer(
        sys.argv[1:] if argv is None else argv,
        "usage: python -m npsfuse._mergekit_job SCRATCH_DIR < request.json",
        lambda request, scratch, progress: {"result": run(request, scratch, progress)},
    )


if __name__ == "__main__":
    sys.exit(main())
