"""One vocabulary across the API (issue 18 item 17): shared names, defaults, aliases.

The decisions, made once for every search and every door (README, "API
vocabulary"):

* ``density`` is the kept fraction wherever entries are dropped (merges,
  NPS-Pruning, compression); NPS's old ``keep`` is a deprecated alias.
* ``bounds=(lo, hi)`` is a search box; the Client's ``lo=``/``hi=`` are
  deprecated aliases.
* :data:`GENERATIONS` is the one default number of generations of every
  search (:func:`npsfuse.nps.prune`, :class:`npsfuse.nps.Search`,
  :func:`npsfuse.nps.fuse`, :func:`npsfuse.search_merge`,
  :class:`npsfuse.Evolver`, the Client's sessions).
* ``merge_params`` are the merge keywords a search holds fixed
  (:func:`npsfuse.search_merge`'s old ``fixed`` is a deprecated alias).
* ``progress`` is an argument of the call that runs a search
  (``Evolver.run(progress=)``; ``Evolver(progress=)`` is deprecated).
* Argument order: the base comes first, then what is applied onto it, then
  λ: ``transfer(base, result, lam)``, ``compress.load(base, path, task,
  lam)``; ``compress.load_task_vector(path, task, *, base=None)`` builds no
  model, its base is only a check.
* ``resume`` takes a path everywhere (``Search.resume`` also a state dict).
* ``evaluate`` must return a number: NaN or ±inf marks a failed candidate
  (scored −inf, never chosen, one ``RuntimeWarning`` per search); an
  exception raised by ``evaluate`` stops the search and reaches the caller
  (continue from ``checkpoint=``); a search where every candidate failed
  raises ``RuntimeError``.
* ``plot()`` returns a matplotlib ``Figure`` (``path=`` also writes a PNG).

Old keyword names keep working for one release with a
:class:`DeprecationWarning` naming the new one; passing an old and its new
name together is a ``TypeError``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._display import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: The default number of generations of every search.
GENERATIONS = 20

F = TypeVar("F", bound=Callable[..., Any])

_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller of this
    function point at the first frame outside the npsfuse package."""
    f = sys._getframe(1)
    level = 1
    while f.f_back is not None and os.path.abspath(f.f_code.co_filename).startswith(_PKG):
        f = f.f_back
        level += 1
    return level


def deprecated(what: str, old: str, new: str) -> None:
    """Warn that ``old`` of ``what`` is deprecated in favour of ``new``."""
    warnings.warn(
        f"{what}: {old} is deprecated, use {new} (the old spelling goes in the next release)",
        DeprecationWarning,
        stacklevel=user_stacklevel(),
    )


def take_renamed(kwargs: dict[str, Any], what: str, old: str, new: str) -> None:
    """Move ``kwargs[old]`` to ``kwargs[new]`` with a :class:`DeprecationWarning`.

    Raises
    ------
    TypeError
        Both ``old`` and ``new`` were passed.
    """
    if old not in kwargs:
        return
    if new in kwargs:
        raise TypeError(f"{what} got both {old}= (deprecated) and {new}=; pass only {new}=")
    deprecated(what, f"{old}=", f"{new}=")
    kwargs[new] = kwargs.pop(old)


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: accept the deprecated keyword names ``old`` for ``new``.

    The wrapped function's signature (``inspect.signature``) shows the new
    names only.
    """

    def wrap(fn: F) -> F:
        what = fn.__qualname__.removesuffix(".__init__") + "()"

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                take_renamed(kwargs, what, old, new)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


def check_count(name: str, value: Any, low: int = 1) -> None:
    """Refuse (``ValueError`` naming ``name``) a ``value`` that is not an
    integer >= ``low`` (1 or 0); a bool is not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive" if low == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def score_of(value: Any) -> float:
    """``evaluate``'s return value as a float (NaN and ±inf stay as they are).

    Raises
    ------
    TypeError
        ``value`` is not a number (``None``, a string, a tensor of several
        elements...): ``evaluate`` must return one; NaN marks a failed candidate.
    """
    try:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError  # float() would read a numeric string
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"evaluate returned {value!r} ({type(value).__name__}); it must return "
            "a number (higher is better; NaN marks a failed candidate)"
        ) from None


class FailedScores:
    """One ``RuntimeWarning`` per search for scores that mark a failed candidate."""

    def __init__(self) -> None:
        self.warned = False

    def check(self, v: float | None, source: str = "evaluate returned") -> float:
        """``v`` as a float; −inf (warning once) when it is None, NaN or ±inf."""
        f = math.nan if v is None else float(v)
        if math.isfinite(f):
            return f
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"{source} {v}: the candidate failed; it is scored -inf and the search goes "
                "on (further failures are counted, not reported)",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
        return -math.inf

    def evaluate(self, evaluate: Callable[[Any], Any], sd: Any) -> float:
        """``evaluate(sd)`` checked by :func:`score_of`, then by :meth:`check`.

        Raises
        ------
        TypeError
            ``evaluate`` returned something that is not a number.
        Exception
            Whatever ``evaluate`` raised (the vocabulary's one policy).
        """
        return self.check(score_of(evaluate(sd)))


class Plotted:
    """The one ``plot()`` of every search result: a subclass draws its figure
    in ``_draw``; ``_figure`` is (the name in the missing-matplotlib message,
    the size in inches, the PNG's dpi)."""

    _figure: tuple[str, tuple[float, float], int]

    def _draw(self, fig: Figure) -> None:  # pragma: no cover - every subclass draws
        raise NotImplementedError

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """The search's figure: its score per generation, and what it searched
        (the class's notes say what is drawn).

        Parameters
        ----------
        path
            Also write the figure there as a PNG.

        Returns
        -------
        matplotlib.figure.Figure
            The figure (shown inline in Jupyter); pyplot is not used, so
            nothing is left open. Needs matplotlib (``npsfuse[plot]``).
        """
        what, size, dpi = self._figure
        fig = new_figure(what, size)
        self._draw(fig)
        return finish(fig, path, dpi=dpi)
