"""Derivative-free optimisers (CMA-ES, differential evolution) with ask/tell.

A thin wrapper over the Go optimisers of ``gocore/search``: the state lives
in Go behind an integer handle, which :class:`Optimizer` frees in
:meth:`Optimizer.close` (also on ``with`` exit and on garbage collection).
Both optimisers **maximise** by default; a failed evaluation (``None``, NaN
or ±inf) always ranks worst. Every random draw comes from the optimiser's
own seeded stream, and :meth:`Optimizer.state` / :meth:`Optimizer.restore`
continue a run bit for bit.

Example
-------
>>> opt = Optimizer("cma", x0=[1.0, 1.0], bounds=([0.0, 0.0], [2.0, 2.0]), seed=0)
>>> for _ in range(20):
...     xs = opt.ask()
...     opt.tell([-float(((x - 0.5) ** 2).sum()) for x in xs])
>>> x, f = opt.best()
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import _core

#: Optimiser names accepted by :class:`Optimizer`.
OPTIMIZERS = ("cma", "de")

#: DE mutation strategies (all with binomial crossover).
STRATEGIES = ("rand/1/bin", "best/1/bin", "current-to-best/1/bin")

_H = TypeVar("_H", bound="_Handle")


@dataclass(frozen=True, eq=False)
class Best:
    """The best point told so far.

    Attributes
    ----------
    x
        The point (``None`` while no evaluation has succeeded).
    f
        Its fitness (``-inf`` while no evaluation has succeeded when
        maximising).
    generation
        Completed generations (Tell calls; for DE the first Tell, of the
        initial population, does not count).
    """

    x: np.ndarray | None
    f: float
    generation: int


def _as_vector(v: Sequence[float] | np.ndarray | float, n: int, what: str) -> list[float]:
    """``v`` as a list of ``n`` finite floats (a scalar is broadcast)."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{what} must be a scalar or {n} value(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got {arr.tolist()}")
    return [float(x) for x in arr]


def _parse_float(v: Any) -> float:
    """A fitness from Go's JSON (a number, null, or a string such as "-Inf")."""
    if v is None:
        return -math.inf
    if isinstance(v, str):
        return float(v.replace("Inf", "inf"))
    return float(v)


def _scores_json(scores: Iterable[float | None]) -> str:
    """Scores as the engine reads them: JSON, a failed one (None, NaN, ±inf) null."""
    return json.dumps([None if v is None or not math.isfinite(float(v)) else float(v)
                       for v in scores])


def cosine_schedule(
    t: int, f: tuple[float, float] = (0.1, 0.9), cr: tuple[float, float] = (0.1, 0.9),
    *, jitter: bool = False,
) -> dict[str, Any]:
    """A CADE cosine schedule for :class:`Optimizer` (``optimizer="de"``).

    F(g) = F_min + ½(F_max − F_min)(1 + cos(π g / t)), likewise CR; the
    defaults (F and CR 0.9 → 0.1 over ``t`` generations) are METHODS.md's for
    low-dimensional searches.

    Parameters
    ----------
    t
        Half period in generations (≥ 1), usually the number of generations.
    f, cr
        ``(min, max)`` of F and of CR.
    jitter
        Add a uniform draw from ``[min, max)`` to each value every generation.

    Returns
    -------
    dict
        The schedule in the form ``Optimizer(schedule=...)`` takes.
    """
    return {"kind": "cosine", "f_min": float(f[0]), "f_max": float(f[1]),
            "cr_min": float(cr[0]), "cr_max": float(cr[1]), "t": int(t), "jitter": bool(jitter)}


class _Handle:
    """A Go object behind an integer handle, freed by :meth:`close` (or GC).

    Shared by :class:`Optimizer` and the NPS engine's objects
    (``npsfuse.nps._engine``); ``_what`` names the object in the error a
    closed one raises.
    """

    _h = 0
    _what = "the object"

    def _handle(self) -> int:
        if not self._h:
            raise ValueError(f"{self._what} is closed")
        return self._h

    def close(self) -> None:
        """Free the Go state; further calls raise ``ValueError``. Idempotent."""
        h, self._h = self._h, 0
        if h:
            try:
                _core.go.Free(h)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Optimizer(_Handle):
    """CMA-ES or differential evolution over a box, driven by ask/tell.

    Parameters
    ----------
    optimizer
        ``"cma"`` (Hansen's (μ/μ_w, λ)-CMA-ES, box bounds by repair) or ``"de"``
        (differential evolution with one-to-one greedy selection).
    x0
        Start point, length n ≥ 1; the CMA-ES mean and the DE's individual 0.
        For DE without ``x0`` the population is drawn uniformly in ``bounds``.
    bounds
        ``(lo, hi)``, each a scalar or n values with lo ≤ hi. Required for DE;
        optional for CMA-ES (then ``sigma0`` is required).
    sigma0
        CMA-ES initial step size (default ``0.3 · mean(hi − lo)``).
    popsize
        Population size (default: CMA-ES 4 + ⌊3 ln n⌋, DE max(10 n, 4)).
    seed
        Seed of the optimiser's random stream.
    strategy
        DE mutation strategy, one of :data:`STRATEGIES`.
    schedule
        DE control parameters: ``{"kind": "constant", "f": F, "cr": CR}`` or a
        :func:`cosine_schedule`; default constant F = CR = 0.5.
    minimize
        Minimise instead of maximising.
    n
        The dimension, needed only for DE without ``x0``.

    Notes
    -----
    Cost per generation is O(λ n²) for CMA-ES and O(NP n) for DE, in Go. The
    object is not thread-safe. The Go state is freed by :meth:`close` (or
    ``with``, or garbage collection); using a closed optimiser raises
    ``ValueError``.
    """

    _what = "the optimizer"

    def __init__(
        self,
        optimizer: str = "cma",
        x0: Sequence[float] | np.ndarray | None = None,
        *,
        bounds: tuple[Any, Any] | None = None,
        sigma0: float | None = None,
        popsize: int | None = None,
        seed: int = 0,
        strategy: str = "rand/1/bin",
        schedule: Mapping[str, Any] | None = None,
        minimize: bool = False,
        n: int | None = None,
    ) -> None:
        # The engine (search.New) checks the optimizer's name, lo <= hi and
        # x0 inside the box. Checked here: what JSON cannot carry (non-finite
        # numbers), what the engine reads differently (0 is its default
        # sigma0 and popsize), and what Python says more helpfully.
        if x0 is None and n is None:
            raise ValueError("give x0 or the dimension n")
        dim = int(np.asarray(x0).size) if x0 is not None else int(n)  # type: ignore[arg-type]
        if dim < 1:
            raise ValueError("the search space needs at least one dimension")
        config: dict[str, Any] = {"optimizer": optimizer, "seed": int(seed),
                                  "minimize": bool(minimize)}
        if x0 is not None:
            config["x0"] = _as_vector(x0, dim, "x0")
        if bounds is not None:
            config["lo"] = _as_vector(bounds[0], dim, "lower bounds")
            config["hi"] = _as_vector(bounds[1], dim, "upper bounds")
        elif optimizer == "de":
            raise ValueError("differential evolution needs bounds")
        if sigma0 is not None:
            if not (math.isfinite(sigma0) and sigma0 > 0):
                raise ValueError(f"sigma0 must be finite and > 0, got {sigma0}")
            config["sigma0"] = float(sigma0)
        if popsize is not None:
            if int(popsize) < 2:
                raise ValueError(f"popsize must be at least 2, got {popsize}")
            config["popsize"] = int(popsize)
        if optimizer == "de":
            if strategy not in STRATEGIES:
                raise ValueError(
                    f"unknown DE strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
                )
            config["strategy"] = strategy
            if schedule is not None:
                config["schedule"] = dict(schedule)
        self._h = _core.call(_core.go.OptNew, json.dumps(config))
        self.optimizer = optimizer
        self.dim = dim

    @classmethod
    def restore(cls, state: str | Mapping[str, Any]) -> Optimizer:
        """An optimiser that continues exactly from :meth:`state`'s output.

        Raises
        ------
        ValueError
            When ``state`` is not a valid optimiser state.
        """
        text = state if isinstance(state, str) else json.dumps(state)
        self = cls.__new__(cls)
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"optimizer state is not JSON: {exc}") from None
        self._h = _core.call(_core.go.OptRestore, text)
        self.optimizer = parsed["optimizer"]  # "cma" or "de": the engine restored it
        self.dim = int(parsed[self.optimizer]["n"])
        return self

    def ask(self) -> np.ndarray:
        """The next candidates, an array of shape (popsize, n).

        Calling ``ask`` again before :meth:`tell` returns the same candidates.
        For DE the first call returns the initial population.
        """
        raw = _core.call(_core.go.OptAsk, self._handle())
        return np.asarray(json.loads(raw), dtype=np.float64).reshape(-1, self.dim)

    def tell(self, fitness: Sequence[float | None] | np.ndarray) -> None:
        """Report the fitness of the candidates of the last :meth:`ask`, in order.

        ``None``, NaN and ±inf mark failed evaluations (ranked worst).

        Raises
        ------
        ValueError
            Without a pending ask, or with the wrong number of values.
        """
        _core.call(_core.go.OptTell, self._handle(), _scores_json(fitness))

    def best(self) -> Best:
        """The best evaluated point so far (see :class:`Best`)."""
        raw = json.loads(_core.call(_core.go.OptBest, self._handle()))
        x = raw.get("x")
        return Best(
            x=None if x is None else np.asarray(x, dtype=np.float64),
            f=_parse_float(raw.get("f")),
            generation=int(raw.get("generation", 0)),
        )

    @property
    def generation(self) -> int:
        """Completed generations."""
        return self.best().generation

    def state(self) -> str:
        """The complete state (including the RNG and any pending ask) as JSON text."""
        return str(_core.call(_core.go.OptState, self._handle()))

    def __repr__(self) -> str:
        state = "closed" if not self._h else f"handle {self._h}"
        return f"Optimizer({self.optimizer!r}, n={self.dim}, {state})"
