"""``import npsfuse`` and ``npsfuse merge`` do not load PyTorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip()


def test_import_does_not_load_torch() -> None:
    assert _run("import sys, npsfuse; print('torch' in sys.modules)") == "False"


def test_public_names_resolve_on_first_use() -> None:
    code = ("import sys, npsfuse; names = sorted(npsfuse.__all__); "
            "missing = [n for n in names if getattr(npsfuse, n, None) is None]; "
            "print(missing, 'torch' in sys.modules)")
    assert _run(code) == "[] True"


def test_unknown_attribute_is_an_attribute_error() -> None:
    code = ("import npsfuse\ntry:\n    npsfuse.no_such_name\nexcept AttributeError as e:\n"
            "    print(e)")
    assert "no_such_name" in _run(code)


def test_cli_merge_does_not_load_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("base", "ft1", "ft2"):
        d = tmp_path / name
        d.mkdir()
        save_file({"w": rng.standard_normal((8, 4)).astype(np.float32)},
                  str(d / "model.safetensors"))
        paths.append(d)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"merge_method: task_arithmetic\nbase_model: {paths[0]}\nmodels:\n"
                   f"  - model: {paths[1]}\n  - model: {paths[2]}\n")
    out = tmp_path / "out"
    code = ("import sys\nfrom npsfuse.cli import main\n"
            f"rc = main(['merge', {str(cfg)!r}, {str(out)!r}, '--quiet'])\n"
            "print(rc, 'torch' in sys.modules)")
    assert _run(code) == "0 False"
    assert (out / "model.safetensors").exists()


def test_missing_extra_names_the_install_command(monkeypatch) -> None:
    """Issue 18 item 2: a missing optional dependency names its extra."""
    import sys

    from npsfuse._extras import EXTRAS, need

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match=r"Evolver.plot needs matplotlib.*npsfuse\[plot\]"):
        need("matplotlib", "plot", "Evolver.plot")
    assert EXTRAS["plot"] == ("matplotlib",)


def test_package_is_typed() -> None:
    from pathlib import Path

    import npsfuse

    assert (Path(npsfuse.__file__).parent / "py.typed").is_file()
