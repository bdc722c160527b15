"""Issue 18: the notebook items, checked by executing a small notebook in a real
Jupyter kernel (nbclient + ipykernel from this venv).

``notebooks/quickstart.ipynb`` merges a tiny model family, displays the
:class:`~npsfuse.MergeResult` (a short repr, not the tensors), runs a
:func:`~npsfuse.search_merge` with its default progress bar and displays the
figure ``plot()`` returns. The test checks what a notebook user sees: every
cell ran, the repr is short, the bar did not warn about ipywidgets, and the
figure came out as an inline PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import npsfuse
import pytest

nbformat = pytest.importorskip("nbformat")  # requirements-dev.txt
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).parent / "notebooks" / "quickstart.ipynb"


def _text(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    return str(output.get("data", {}).get("text/plain", ""))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    src = str(Path(npsfuse.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, old) if p)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}})
        client.execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return nb


def _cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_cell_ran_without_error(executed: Any) -> None:
    for c in _cells(executed):
        assert c.execution_count is not None
        assert not [o for o in c.outputs if o["output_type"] == "error"], c.source


def test_the_kernel_imported_this_npsfuse(executed: Any) -> None:
    """The kernel is the venv's Python with this checkout's package (PYTHONPATH)."""
    merged = _cells(executed)[1]
    assert any("MergeResult" in _text(o) for o in merged.outputs), merged.outputs


def test_merge_result_repr_is_short(executed: Any) -> None:
    (out,) = [o for o in _cells(executed)[1].outputs if o["output_type"] == "execute_result"]
    text = out["data"]["text/plain"]
    assert text.startswith("<MergeResult"), text
    assert len(text) < 2000, f"{len(text)} characters"
    assert "tensor(" not in text


def test_progress_bar_does_not_warn(executed: Any) -> None:
    for c in _cells(executed):
        for o in c.outputs:
            t = _text(o)
            assert "IProgress not found" not in t and "TqdmWarning" not in t, t


def test_plot_returns_a_figure_shown_inline(executed: Any) -> None:
    cls = _cells(executed)[3].outputs[0]["data"]["text/plain"]
    assert cls == "'Figure'"  # a matplotlib Figure (npsfuse's subclass of it)
    shown = [o for o in _cells(executed)[4].outputs if o["output_type"] == "execute_result"]
    assert shown and "image/png" in shown[0]["data"], _cells(executed)[4].outputs
    assert len(shown[0]["data"]["image/png"]) > 1000
