"""Figures and progress bars shared by the searches' results.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot,
so no global state leaks between calls (no open-figure registry, no backend
switch) and a returned figure displays inline in Jupyter. Progress bars are
plain tqdm bars except in a Jupyter kernel that has ipywidgets, where
``tqdm.auto`` draws a widget (elsewhere it only warns).
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._extras import need

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


_figure_class: type | None = None


def new_figure(what: str, figsize: tuple[float, float]) -> Figure:
    """A pyplot-free matplotlib figure; ``what`` names the caller in the
    ``pip install 'npsfuse[plot]'`` message when matplotlib is missing.

    Its class adds ``_repr_png_``, so Jupyter shows it inline even when
    pyplot (which registers the inline backend's display hook) was never
    imported."""
    global _figure_class
    need("matplotlib", "plot", what)
    if _figure_class is None:
        from matplotlib.figure import Figure

        class ShownFigure(Figure):
            """A Figure that displays as its PNG in IPython."""

            def _repr_png_(self) -> bytes:
                buf = io.BytesIO()
                self.savefig(buf, format="png", dpi=90)
                return buf.getvalue()

        _figure_class = ShownFigure
    return _figure_class(figsize=figsize, layout="constrained")


def finish(fig: Figure, path: str | os.PathLike[str] | None, dpi: int = 110) -> Figure:
    """Write ``fig`` as a PNG to ``path`` (when given) and return it."""
    if path is not None:
        fig.savefig(Path(path), format="png", dpi=dpi)
    return fig


def _in_notebook_with_widgets() -> bool:
    """True in a Jupyter kernel (not a Qt console or Spyder) where ipywidgets
    is installed: the only place tqdm's widget can be drawn."""
    if any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
        return False
    kernel = "ipykernel.zmqshell" in sys.modules
    if not kernel:
        ipython = sys.modules.get("IPython")
        shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
        kernel = shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    return kernel and importlib.util.find_spec("ipywidgets") is not None


def progress_bar(**kw: Any) -> Any:
    """A tqdm bar: the notebook widget where it can be drawn, the text bar otherwise."""
    if _in_notebook_with_widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(**kw)
