"""One checkpoint merge through a wheel's extension alone (tools/wheel_aarch64_check.sh).

``data WORK``: three tiny fine-tunes of a base as safetensors folders and a mergekit
YAML (TIES with unequal weights, density 0.4, λ 0.9) in WORK (numpy, safetensors).

``merge WORK NAME EXT_DIR``: ``MergeCheckpoints`` of that YAML into WORK/NAME with the
extension package ``gonps`` (a wheel's ``npsfuse/_native``, copied) found in EXT_DIR;
the standard library only, so that an emulated CPython without numpy runs it.

``compare WORK``: WORK/x86_64 and WORK/aarch64 must hold the same tensor names, and
values at most ``MAX_ULPS`` ulps of each tensor's scale (its largest magnitude) apart:
Go's compiler fuses x*y+z into one rounding (FMA) on arm64, not on amd64, so the two
are not bit-identical; prints how many entries differ.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

SHAPES = {"embed.weight": (130, 300), "layer.0.weight": (64, 48), "layer.0.bias": (48,)}
#: Entries further apart than this many ulps of their tensor's scale fail the comparison.
MAX_ULPS = 4


def data(work: Path) -> None:
    """Write the checkpoints and config.yaml."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    for i, name in enumerate(["base", "a", "b", "c"]):
        sd = base
        if i:
            sd = {k: v + np.float32(0.05) * rng.standard_normal(v.shape, dtype=np.float32)
                  for k, v in base.items()}  # fmt: skip
        (work / name).mkdir(parents=True)
        save_file(sd, str(work / name / "model.safetensors"))
    models = "".join(
        f"  - model: {work / m}\n    parameters: {{weight: {w}}}\n"
        for m, w in [("a", 0.3), ("b", 0.7), ("c", 0.55)]
    )
    (work / "config.yaml").write_text(
        f"merge_method: ties\nbase_model: {work / 'base'}\nmodels:\n{models}"
        "parameters:\n  density: 0.4\n  lambda: 0.9\n"
    )


def merge(work: Path, name: str, ext_dir: Path) -> None:
    """Merge config.yaml into work/name with the extension in ext_dir."""
    sys.path.insert(0, str(ext_dir))
    from gonps import pybind  # type: ignore[import-not-found]

    opts = {"out_dir": str(work / name), "shard_size": 0, "threads": 0, "dtype": "",
            "allow_missing": False, "force": False, "progress": False}  # fmt: skip
    print(f"{name}: {platform.machine()} CPython {platform.python_version()}, "
          f"gonps {pybind.Version()}")  # fmt: skip
    pybind.MergeCheckpoints(1, (work / "config.yaml").read_text(), "", json.dumps(opts))


def compare(work: Path) -> int:
    """0 when both merges agree within MAX_ULPS, 1 otherwise."""
    import numpy as np
    from safetensors.numpy import load_file

    x = load_file(str(work / "x86_64" / "model.safetensors"))
    a = load_file(str(work / "aarch64" / "model.safetensors"))
    if x.keys() != a.keys():
        print(f"aarch64 vs x86_64: tensor names differ: {sorted(x)} vs {sorted(a)}")
        return 1
    differ = sum(int((x[k] != a[k]).sum()) for k in x)
    # ulps of each tensor's scale (its largest magnitude), as the README counts them
    ulps = max(float(np.abs(x[k] - a[k]).max() / np.spacing(np.abs(x[k]).max())) for k in x)
    total = sum(v.size for v in x.values())
    print(f"aarch64 vs x86_64 merge: {differ} of {total} entries differ, "
          f"at most {ulps:.2f} ulps of the tensor's scale")  # fmt: skip
    return 0 if ulps <= MAX_ULPS else 1


if __name__ == "__main__":
    cmd, work = sys.argv[1], Path(sys.argv[2])
    if cmd == "data":
        data(work)
    elif cmd == "merge":
        merge(work, sys.argv[3], Path(sys.argv[4]))
    elif cmd == "compare":
        sys.exit(compare(work))
    else:
        sys.exit(f"unknown command {cmd!r}: data, merge or compare")
