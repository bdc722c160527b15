"""``npsfuse.Evolver``: differential evolution over whole weight sets.

Individuals are full sets of model weights (Evolver, Du, Li, Liu et al.,
2024; CADE, Jiang, Du et al., 2024). Each individual's evolved tensors live in
one contiguous flat buffer; offspring are written by the Go kernels
(``gocore/evolve``) into one reused offspring buffer, in place and parallel
over cores, and the caller's ``evaluate`` scores them on its dev set.

Design
------
* **Engine.** Every decision of the run (visiting order, trials, F and CR,
  selection, replacement, history) is made by the Go session
  ``gocore/evolve.Session``, the one the daemon's evolve sessions drive too:
  this class holds its JSON state, builds the trials it hands out and applies
  its verdicts, so a seed evolves alike in a notebook and through the daemon.
* **Buffers.** Python owns ``popsize + 1`` flat buffers (torch tensors in
  memory, or ``torch.from_file`` memory maps under ``storage=DIR``), plus,
  for the DE strategies, one per accepted trial waiting for the end of its
  generation; Go reads and writes them through
  :class:`npsfuse._bridge.ArrowPack` without copies. An accepted offspring is
  not copied: its buffer becomes the parent's.
* **Evaluation.** The state dict handed to ``evaluate`` is made of views into
  the flat offspring buffer (no copies) plus the individual's non-evolved
  tensors. It is valid until the next :meth:`Evolver.ask`; copy what you keep.
* **Non-evolved tensors** (names matching ``exclude``, integer buffers) stay
  with their individual: each fine-tuned model keeps its own head, and an
  offspring inherits the head of its parent ``x_i``.
* **Randomness** (visiting order, reference individuals, forced index,
  crossover masks) lives in Go only and is keyed by (seed, generation,
  individual, block): results are identical for any thread count, and a
  saved run resumes bit for bit.
* **Selection** is one-to-one: the offspring replaces its parent only when
  its score is strictly higher. ``"evolver"`` and the merger mode replace at
  once (the next trial sees it, as the Evolver authors do); the DE strategies
  build a generation's trials from the population at its start and replace
  when it ends (classic DE and CADE).

See :class:`Evolver` for the parameters and METHODS.md ("Search and
evolution") for the definitions.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import _core
from ._bridge import SUPPORTED, ArrowPack, as_dtype
from ._display import progress_bar
from ._search_merge import SearchMergeResult, search_merge
from ._state import ModelLike, StateDict, load_state_dict
from ._vocab import GENERATIONS, FailedScores, Plotted, check_count, deprecated, score_of
from .merging import _check_method, _check_shapes, methods
from .merging import merge as _merge

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "CADE_WEIGHT_SPACE", "STRATEGIES", "Evolver", "EvolverResult", "SearchMergeResult",
    "search_merge",
]

#: Offspring operators: the Evolver authors' operator and classic DE.
STRATEGIES: tuple[str, ...] = ("evolver", "rand/1/bin", "best/1/bin", "current-to-best/1/bin")

#: Crossover units.
GRANULARITIES: tuple[str, ...] = ("element", "tensor", "block")

#: CADE's settings for DE over whole weight sets (Jiang, Du et al., 2024; the
#: authors' code): F and CR anneal from 1e-5 to 1e-6 on a cosine with half
#: period T = 40 generations. ``schedule="cosine"`` uses these bounds by
#: default; pass ``period=40`` for the authors' T (the default is the run).
CADE_WEIGHT_SPACE: dict[str, Any] = {"F": (1e-6, 1e-5), "CR": (1e-6, 1e-5), "T": 40}

_STATE_VERSION = 2

Evaluate = Callable[[StateDict], float]


def _resolve_dtype(compute_dtype: torch.dtype | str,
                   tensors: Sequence[torch.Tensor]) -> torch.dtype:
    if compute_dtype == "model":  # the models' one dtype, float32 when they have several
        dts = {t.dtype for t in tensors}
        return dts.pop() if len(dts) == 1 and next(iter(dts)) in SUPPORTED else torch.float32
    return as_dtype(compute_dtype, "compute_dtype (or 'model')")


def _unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, cloning only those whose memory another already uses
    (safetensors refuses shared storage, e.g. tied weights)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for k, t in sd.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        out[k] = t
    return out


class Evolver:
    """Differential evolution over whole weight sets (Evolver and CADE).

    Parameters
    ----------
    base
        The pre-trained model θ₀ (state dict, ``nn.Module`` or safetensors
        path). It fixes the tensor names, and is the merge base when ``merge``
        is set.
    population
        The initial individuals: the fine-tuned models (optionally merged
        models too, or use ``add_merges``), in the same forms as ``base``; a
        PEFT LoRA adapter folder or a ``PeftModel`` is merged into the base's
        weights on the fly, as :func:`npsfuse.merge` does.
        Each needs the base's tensors; without ``merge`` only the evolved
        ones must match the base's shapes, and the others (heads, BatchNorm
        statistics and counters) are the individual's own.
    evaluate
        ``evaluate(state_dict) -> float``: the dev-set score, higher is
        better; NaN or ±Inf marks a failed evaluation (never accepted, one
        ``RuntimeWarning`` per run); an exception it raises stops
        :meth:`run` and reaches the caller (``run(checkpoint=)`` and
        :meth:`resume` continue), as in every search of npsfuse. The state
        dict aliases a reused buffer: it is valid until the next trial.
    strategy
        ``"evolver"`` (default): v = (1 − F)·x_i + F·x_ref, computed as
        x_i + F·(x_ref − x_i), with x_ref a random other individual with
        probability p = 0.5/(G − g) + 0.5 and the best other one otherwise
        (always random with ``merge``). ``"rand/1/bin"``: v = x_r1 + F·(x_r2 −
        x_r3); ``"best/1/bin"``: v = x_best + F·(x_r1 − x_r2);
        ``"current-to-best/1/bin"``: v = x_i + F·(x_best − x_i) + F·(x_r1 −
        x_r2). Then binomial crossover with rate CR against x_i.
    F, CR
        Mutation factor and crossover rate for ``schedule="constant"``
        (defaults 0.5 and 0.5, the Evolver authors'); ignored by ``"cosine"``.
    schedule
        ``"constant"`` or ``"cosine"`` (CADE): F(g) = F_min + ½(F_max −
        F_min)(1 + cos(π g / T)), likewise CR, cycling with period 2T.
    F_bounds, CR_bounds
        ``(min, max)`` of the cosine; default CADE's weight-space values
        (1e-6, 1e-5) for both (:data:`CADE_WEIGHT_SPACE`).
    period
        T, the cosine's half period in generations (default ``generations``:
        one anneal from max to min over the run; CADE's code used 40). F and CR
        then rise again smoothly (no restart jump), as in CADE.
    generations
        G, the number of generations :meth:`run` performs (default 20, the
        default of every search).
    merge
        ``None``: every individual is scored on its own and the best is
        returned. A method of :func:`npsfuse.methods` (``"ties"``,
        ``"task_arithmetic"``, ``"dare_ties"``, ...): "Evolver with merger" —
        an offspring's score is the dev score of the merge of the population
        with the offspring in place of its parent, accepted when higher than
        the current merge's score; the result is that merge.

        Which mode: without a merger the result is one individual, so use
        it when one model should serve the dev set (fine-tunes of the same
        task from different seeds or augmentations, CADE's setting). With a
        merger the result is the population's merge, so use it to fuse
        different tasks, where no single fine-tune covers the dev set. It
        starts from the plain merge (the first score) and keeps a trial only
        when the merge's dev score rises strictly, so it never returns less
        than the plain merge on the dev set, and returns exactly the plain
        merge when no trial improves it. That is common with few trials
        (3 generations of 3 models are 9 trials) and a coarse metric:
        accuracy on a few hundred examples scores most trials equal to the
        current merge, and an equal score is rejected. Use a finer dev
        metric (mean log-likelihood or minus the loss) and more generations.
        Read ``result().history``: a trial ``mean`` far below ``best`` means
        steps that are too large (lower ``F`` or ``CR``).
    merge_params
        Keyword arguments of :func:`npsfuse.merge` (``density``, ``lam``,
        ``weights``, ``seed``, ...), for ``merge`` and ``add_merges``.
    add_merges
        Merge methods whose merges of ``population`` join it as extra
        individuals (e.g. ``("ties", "task_arithmetic")``).
    exclude
        Regular expressions (``re.search``) of tensor names kept out of the
        evolution, e.g. ``(r"classifier\\.",)``. Integer/bool tensors are never
        evolved.
    include
        Regular expressions (``re.search``): when given, only tensors whose
        name matches one of them (and none of ``exclude``) are evolved; the
        others stay with their individual like excluded ones. Default: every
        floating-point tensor. :mod:`npsfuse.spiking` has the rule set for
        SpikingJelly models.
    granularity
        Crossover unit: ``"element"`` (per scalar, default), ``"tensor"``
        (whole tensors from one parent) or ``"block"`` (``block_size``
        elements).
    block_size
        Block length for ``granularity="block"``.
    force_index
        Force one element (or tensor/block) from the donor. Default: True for
        the classic DE strategies, False for ``"evolver"`` (CADE's authors
        force none: pass False).
    compute_dtype
        dtype of the population buffers: ``torch.float32`` (default),
        ``torch.bfloat16``/``torch.float16``, or ``"model"`` (the models'
        dtype). Arithmetic is float32 either way.
    storage
        ``"memory"`` or a directory: the buffers are then memory-mapped files
        there, so a population larger than RAM works.
    seed
        Seed of every random choice.
    progress
        Deprecated: pass ``progress`` to :meth:`run` (the call that runs the
        search, as for every search); here it sets :meth:`run`'s default.

    Notes
    -----
    Memory: ``(popsize + 1)`` flat buffers (for the DE strategies up to
    ``popsize`` more, for accepted trials waiting for their generation's
    end) plus what the caller holds (the models passed in are loaded and
    copied one at a time); with ``merge``, also the base and one merged model
    per trial.

    Selection is strict (an equal score keeps the parent). ``"evolver"`` and
    ``merge`` replace at once; the DE strategies per generation. The
    CADE defaults (Jiang, Du et al., 2024, authors' code): F and CR between
    1e-6 and 1e-5 on a cosine of half period T = 40, DE/rand/1 with no forced
    index — ``Evolver(..., strategy="rand/1/bin", schedule="cosine",
    period=40, force_index=False)``. The Evolver defaults (Du, Li, Liu et al.,
    2024): F = CR = 0.5, 15 generations in their runs.
    Dense element crossover (CR ≥ 1/16) draws one 16-bit uniform per element
    (CR is rounded to a multiple of 2⁻¹⁶); smaller CR draws geometric gaps
    between the taken elements (see ``gocore/evolve``).
    """

    def __init__(
        self,
        base: ModelLike,
        population: Sequence[ModelLike],
        evaluate: Evaluate,
        *,
        strategy: str = "evolver",
        F: float = 0.5,
        CR: float = 0.5,
        schedule: str = "constant",
        F_bounds: tuple[float, float] | None = None,
        CR_bounds: tuple[float, float] | None = None,
        period: int | None = None,
        generations: int = GENERATIONS,
        merge: str | None = None,
        merge_params: Mapping[str, Any] | None = None,
        add_merges: Sequence[str] = (),
        exclude: Sequence[str | re.Pattern[str]] = (),
        include: Sequence[str | re.Pattern[str]] | None = None,
        granularity: str = "element",
        block_size: int = 4096,
        force_index: bool | None = None,
        compute_dtype: torch.dtype | str = torch.float32,
        storage: str | os.PathLike[str] = "memory",
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        if progress is not None:
            deprecated("Evolver()", "progress=", "Evolver.run(progress=...)")
        if not callable(evaluate):
            raise TypeError("evaluate must be a callable state_dict -> float")
        if not isinstance(population, Sequence) or isinstance(population, (str, bytes)):
            raise ValueError("population must be a list of models")
        cfg = _make_config(
            strategy=strategy, F=F, CR=CR, schedule=schedule, F_bounds=F_bounds,
            CR_bounds=CR_bounds, period=period, generations=generations, merge=merge,
            merge_params=merge_params, granularity=granularity, block_size=block_size,
            force_index=force_index, seed=seed,
        )
        for m in add_merges:
            if m not in methods():
                raise ValueError(f"unknown merge method {m!r} in add_merges")
        patterns = [re.compile(p) for p in exclude]  # a compiled pattern stays as it is
        wanted = None if include is None else [re.compile(p) for p in include]
        base_sd = load_state_dict(base, "base")
        if not population:
            raise ValueError("population is empty")
        # Name order: the daemon flattens a model alike.
        names = sorted(
            k for k, t in base_sd.items()
            if t.is_floating_point() and not any(p.search(k) for p in patterns)
            and (wanted is None or any(p.search(k) for p in wanted))
        )
        if not names:
            raise ValueError(
                "no floating-point tensor is left to evolve (check include and exclude)")
        dtype = _resolve_dtype(compute_dtype, [base_sd[k] for k in names])
        self._init_layout(list(base_sd), names, [tuple(base_sd[k].shape) for k in names], dtype)
        self._cfg = cfg
        self._np = len(population) + len(add_merges)
        self._state: dict[str, Any] = json.loads(
            _core.call(_core.go.EvolveStart, self._session_config()))
        self.evaluate = evaluate
        #: :meth:`run`'s default for ``progress``.
        self.progress = True if progress is None else bool(progress)
        self._base = base_sd if merge is not None else None
        self._alloc(storage)
        self._extras: list[dict[str, torch.Tensor]] = []
        # One model at a time: load, check, copy into its buffer, drop.
        for i, m in enumerate(population):
            # A PEFT LoRA adapter (folder or PeftModel) is merged into the base.
            sd = load_state_dict(m, f"population[{i}]", base=base_sd)
            # Without a merger only the evolved tensors must fit the base; the
            # others (heads, BatchNorm statistics and counters) stay with their
            # individual and may differ from the base's.
            ref, mine = base_sd, sd
            if merge is None:
                lacking = [k for k in base_sd if k not in sd]
                if lacking:
                    raise ValueError(f"population[{i}] lacks tensor {lacking[0]!r} of the base")
                ref = {k: base_sd[k] for k in names}
                mine = {k: sd[k] for k in names}
            try:
                _check_shapes(ref, [mine])
            except (TypeError, ValueError) as exc:
                raise type(exc)(str(exc).replace("model 0", f"population[{i}]")) from None
            self._fill(i, sd)
            del sd
        n_pop = len(population)
        for j, method in enumerate(add_merges):
            merged = _merge(base_sd, [self.individual(i) for i in range(n_pop)], method,
                            **cfg["merge_params"])
            self._fill(n_pop + j, merged)
            del merged

    # ------------------------------------------------------------ layout --

    def _init_layout(
        self, keys: list[str], names: list[str], shapes: list[tuple[int, ...]], dtype: torch.dtype
    ) -> None:
        self._keys = keys
        self._names = names
        self._shape = dict(zip(names, shapes, strict=True))
        self._numel = {k: math.prod(s) for k, s in zip(names, shapes, strict=True)}
        *starts, self._n = itertools.accumulate(self._numel.values(), initial=0)
        self._offset = dict(zip(names, starts, strict=True))
        self._dtype = dtype

    def _layout(self) -> dict[str, Any]:
        """The configuration and tensor layout, as :meth:`save` writes them."""
        return {
            "config": {k: v for k, v in self._cfg.items() if k != "merge_params"},
            "merge_params": self._cfg["merge_params"],
            "keys": self._keys,
            "names": self._names,
            "shapes": [list(self._shape[k]) for k in self._names],
            "dtype": str(self._dtype).removeprefix("torch."),
        }

    @classmethod
    def _restore(
        cls, st: Mapping[str, Any], evaluate: Evaluate, storage: str | os.PathLike[str]
    ) -> Evolver:
        """An Evolver of the layout ``st`` (:meth:`_layout` and ``popsize``) with
        its buffers allocated in ``storage``, not filled (nor its extras and base)."""
        self = cls.__new__(cls)
        self._cfg = {**st["config"], "merge_params": st["merge_params"]}
        self.evaluate, self._np = evaluate, st["popsize"]
        self._init_layout(st["keys"], st["names"], [tuple(s) for s in st["shapes"]],
                          getattr(torch, st["dtype"]))
        self._alloc(storage)
        return self

    def _alloc(self, storage: str | os.PathLike[str]) -> None:
        """Buffers: one per individual (``_slot_of``), the spare that receives
        the next trial, accepted trials waiting for their generation's end
        (``_held``) and free ones; and no trial pending (``_cand``)."""
        self._cand: dict[str, Any] | None = None
        self._pending_sd: StateDict | None = None
        self._version = 0
        self._failed = FailedScores()
        self._storage = "memory" if storage == "memory" else str(Path(storage).resolve())
        if self._storage != "memory":
            Path(self._storage).mkdir(parents=True, exist_ok=True)
        self._slots: list[torch.Tensor] = []
        self._slot_of = [self._new_slot() for _ in range(self._np)]
        self._spare = self._new_slot()
        self._held: dict[int, int] = {}
        self._free: list[int] = []

    def _new_slot(self) -> int:
        if self._storage == "memory":
            self._slots.append(torch.empty(self._n, dtype=self._dtype))
        else:
            p = Path(self._storage) / f"slot-{len(self._slots)}.bin"
            with open(p, "wb") as f:
                f.truncate(self._n * torch.tensor([], dtype=self._dtype).element_size())
            self._slots.append(torch.from_file(str(p), shared=True, size=self._n,
                                               dtype=self._dtype))
        return len(self._slots) - 1

    def _take_slot(self) -> int:
        """A free buffer, or a new one."""
        return self._free.pop() if self._free else self._new_slot()

    def _fill(self, i: int, sd: Mapping[str, torch.Tensor]) -> None:
        """Copy model ``sd``'s evolved tensors into buffer i; keep the rest."""
        views = self._state_dict(self._slots[i], sd)
        for k in self._names:
            views[k].copy_(sd[k].detach())
        self._extras.append({k: sd[k] for k in self._keys if k not in self._offset})

    def _state_dict(self, flat: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> StateDict:
        """Views of ``flat`` for the evolved tensors, ``extras`` for the others."""
        o, n = self._offset, self._numel
        return {k: flat[o[k] : o[k] + n[k]].view(self._shape[k]) if k in o else extras[k]
                for k in self._keys}

    def individual(self, i: int) -> StateDict:
        """Individual ``i`` as a state dict of views (valid until the next trial)."""
        return self._state_dict(self._slots[self._slot_of[i]], self._extras[i])

    def _population_sds(self, replace: tuple[int, StateDict] | None = None) -> list[StateDict]:
        sds = [self.individual(i) for i in range(self._np)]
        if replace is not None:
            sds[replace[0]] = replace[1]
        return sds

    def _session_config(self) -> str:
        """The JSON of gocore/evolve.SessionConfig for this run."""
        keys = ("strategy", "schedule", "granularity", "block_size", "force_index", "seed",
                "generations")
        go = {k: self._cfg[k] for k in keys}
        tensor = self._cfg["granularity"] == "tensor"
        go["segments"] = [self._offset[k] for k in self._names] + [self._n] if tensor else None
        go |= {"population": self._np, "n": self._n, "merger": self._cfg["merge"] is not None}
        return json.dumps(go)

    def _merged(self, sds: Sequence[StateDict]) -> StateDict:
        assert self._base is not None
        return _merge(self._base, sds, self._cfg["merge"], **self._cfg["merge_params"])

    # -------------------------------------------------------- properties --

    @property
    def popsize(self) -> int:
        """Number of individuals."""
        return self._np

    @property
    def num_params(self) -> int:
        """Number of evolved parameters per individual."""
        return self._n

    @property
    def generation(self) -> int:
        """Completed generations."""
        return int(self._state["generation"])

    @property
    def done(self) -> bool:
        """True once all ``generations`` are completed."""
        return self._state["phase"] == "done"

    @property
    def fitness(self) -> list[float]:
        """Per-individual scores (``merge=None``; −inf: failed or not yet evaluated)."""
        return [float(v) for v in self._state["fitness"]]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per completed generation (0: the initial population)."""
        return [h | {"best": float(h["best"]), "mean": float(h["mean"])}
                for h in self._state["history"]]

    @property
    def _merge_score(self) -> float:
        return float(self._state["merge_score"])

    def _best(self) -> tuple[int, float]:
        b = int(self._state["best"])
        return b, float(self._state["fitness"][b])

    # ---------------------------------------------------------- ask/tell --

    def ask(self) -> StateDict:
        """The next state dict to evaluate; report its score with :meth:`tell`.

        First the initial population (each individual, or with ``merge`` the
        merge of the population), then one trial per individual per
        generation. Asking again before :meth:`tell` returns the same trial.

        Raises
        ------
        RuntimeError
            When all generations are done.
        """
        if self._cand is not None:
            assert self._pending_sd is not None
            return self._pending_sd
        if self.done:
            raise RuntimeError("the evolution is finished; read result()")
        c = self._session(_core.go.EvolveAsk)[0]
        i = c["individual"]
        if c.get("trial") is None:
            sd = self._merged(self._population_sds()) if c.get("merge") else self.individual(i)
        else:
            self._build(i, self._spare)
            sd = self._state_dict(self._slots[self._spare], self._extras[i])
            if c.get("merge"):
                sd = self._merged(self._population_sds(replace=(i, sd)))
        self._cand, self._pending_sd = c, sd
        return sd

    def _session(self, fn: Callable[..., str], *args: Any) -> Any:
        """Call a session function of ``pybind`` on the current state."""
        return json.loads(_core.call(fn, json.dumps(self._state), *args))

    def _build(self, i: int, slot: int) -> None:
        """Run the Go kernel: the session's trial of parent i into buffer ``slot``."""
        items = [(f"individual {j}", self._slots[self._slot_of[j]]) for j in range(self._np)]
        items.append(("offspring", self._slots[slot]))
        pack = ArrowPack(items)
        _core.call(_core.go.EvolveOffspring, json.dumps(self._state), i, self._np, pack.arrays,
            pack.schemas)

    def tell(self, score: float | None) -> bool:
        """Report the score of the last :meth:`ask`; returns True when a trial
        was accepted (it replaces its parent, at once or when its generation
        ends, or it improved the merge).

        ``None``, NaN and ±inf mark a failed evaluation (never accepted; one
        ``RuntimeWarning`` per run).

        Raises
        ------
        RuntimeError
            Without a pending :meth:`ask`.
        TypeError
            ``score`` is not a number (nor None).
        """
        if self._cand is None:
            raise RuntimeError("tell() without a pending ask()")
        f = math.nan if score is None else score_of(score)
        self._failed.check(None if score is None else f, "a score was")
        i = self._cand["individual"]
        r = self._session(_core.go.EvolveTell, f)
        self._state, out = r["state"], r["outcome"]
        self._cand, self._pending_sd = None, None
        if out.get("keep"):  # replaces its parent when the generation ends
            self._held[i] = self._spare
            self._spare = self._take_slot()
        for rep in out.get("replace") or []:
            j, old = rep["individual"], self._slot_of[rep["individual"]]
            if j in self._held:
                self._slot_of[j] = self._held.pop(j)
                self._free.append(old)
            else:  # the trial just told, in the spare buffer
                self._slot_of[j], self._spare = self._spare, old
        self._version += 1
        return bool(out["accepted"])

    # --------------------------------------------------------------- run --

    def _remaining(self) -> int:
        st = self._state
        left = (self._cfg["generations"] - st["generation"]) * self._np - len(st["told"])
        if st["phase"] == "init":
            left += 1 if self._cfg["merge"] is not None else self._np
        return 0 if self.done else left

    def run(
        self,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        executor: Any = None,
        progress: bool | None = None,
    ) -> EvolverResult:
        """Evaluate until all generations are done and return the result.

        Parameters
        ----------
        checkpoint
            Directory to :meth:`save` into after the initial population and
            after every generation (each save writes the whole population);
            ``Evolver.resume(checkpoint, evaluate)`` continues from it exactly,
            also after the process was killed mid-generation.
        executor
            ``None`` (evaluate here), ``"ray"``, an
            :class:`npsfuse.executors.RayExecutor` or a list of its worker
            actors: Ray workers hold the population and build and score the
            trials themselves. The DE strategies score a generation's trials
            concurrently (they replace parents when the generation ends);
            ``"evolver"`` and ``merge`` replace at once, so trials run
            speculatively and are scored again after an acceptance. The
            result equals the in-process run's (see :mod:`npsfuse.executors`).
        progress
            Show a tqdm progress bar (default True, or the deprecated
            constructor setting).

        Raises
        ------
        RuntimeError
            Every evaluation failed (NaN or ±inf).
        TypeError
            ``evaluate`` returned something that is not a number.
        """
        show = self.progress if progress is None else bool(progress)
        with progress_bar(total=self._remaining(), desc="evolve", unit="eval",
                          disable=not show) as bar:

            def told(score: Any) -> None:
                """tell(score), then the bar, and a save when a generation ended."""
                before = (self.generation, self._state["phase"])
                self.tell(score)
                bar.update(1)
                bar.set_postfix(gen=self.generation, best=f"{self._current_best():.4g}")
                if checkpoint is not None and (self.generation, self._state["phase"]) != before:
                    self.save(checkpoint)

            if executor is not None:
                from ._executor import run_evolver

                run_evolver(self, executor, told)
            while not self.done:
                told(score_of(self.evaluate(self.ask())))
        if not math.isfinite(self._current_best()):
            raise RuntimeError("every evaluation of the run failed (NaN or ±inf scores): "
                               "check evaluate")
        return self.result()

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """The current result's figure: :meth:`EvolverResult.plot`."""
        return self.result().plot(path)

    def _current_best(self) -> float:
        return self._best()[1] if self._cfg["merge"] is None else self._merge_score

    def result(self) -> EvolverResult:
        """The current result (the best individual, or the population's merge)."""
        return EvolverResult(self)

    # ------------------------------------------------------- persistence --

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole run state to the directory ``path`` (replaced
        atomically): configuration, population, scores, history. A pending
        trial is not saved; it is regenerated identically after resume.
        """
        dst = Path(path).resolve()
        if self._storage != "memory" and dst == Path(self._storage):
            raise ValueError("save into a directory other than storage")
        tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        from safetensors.torch import save_file

        for i in range(self._np):
            flat = self._slots[self._slot_of[i]]
            with open(tmp / f"individual-{i}.bin", "wb") as f:
                f.write(memoryview(flat.view(torch.uint8).numpy()))
        extras = {f"{i}/{k}": t for i, ex in enumerate(self._extras) for k, t in ex.items()}
        save_file(_unshared(extras), str(tmp / "extras.safetensors"))
        if self._base is not None:
            save_file(_unshared(self._base), str(tmp / "base.safetensors"))
        state = {
            "version": _STATE_VERSION,
            **self._layout(),
            "storage": self._storage,
            "progress": self.progress,
            "popsize": self._np,
            "session": self._state,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        old = dst.with_name(dst.name + f".old-{os.getpid()}")
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        if old.exists():
            shutil.rmtree(old)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        evaluate: Evaluate,
        *,
        storage: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
    ) -> Evolver:
        """Continue a run saved by :meth:`save` (or ``run(checkpoint=...)``).

        Parameters
        ----------
        path
            The saved directory (or its ``state.json``).
        evaluate
            The same evaluation function (it cannot be saved).
        storage
            Override where the buffers live (default: as saved).
        progress
            Deprecated: pass ``progress`` to :meth:`run`.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            ``path`` is not a directory written by :meth:`save`, or was
            written by an unsupported version.
        """
        from safetensors.torch import load_file

        if progress is not None:
            deprecated("Evolver.resume()", "progress=", "Evolver.run(progress=...)")
        src = Path(path)
        if src.is_file() and src.name == "state.json":
            src = src.parent
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: no saved Evolver run (not a directory)")
        try:
            state = json.loads((src / "state.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{src} is not a saved Evolver run (its state.json cannot be "
                             f"read: {exc})") from None
        if not isinstance(state, dict) or "session" not in state:
            raise ValueError(f"{src} is not a saved Evolver run (state.json lacks the session)")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"{src}: unsupported state version {state.get('version')!r}")
        self = cls._restore(state, evaluate, state["storage"] if storage is None else storage)
        self.progress = state["progress"] if progress is None else bool(progress)
        extras = load_file(str(src / "extras.safetensors"))
        self._extras = [{} for _ in range(self._np)]
        for key, t in extras.items():
            i, k = key.split("/", 1)
            self._extras[int(i)][k] = t
        merger = self._cfg["merge"] is not None
        self._base = load_file(str(src / "base.safetensors")) if merger else None
        for i in range(self._np):
            with open(src / f"individual-{i}.bin", "rb") as f:
                f.readinto(memoryview(self._slots[i].view(torch.uint8).numpy()))
        self._state = state["session"]
        # Accepted trials of the open generation were not saved: rebuild them
        # (the population has not changed since they were built).
        for i in self._state["held"]:
            self._held[i] = self._new_slot()
            self._build(i, self._held[i])
        return self


class EvolverResult(Plotted):
    """What an :class:`Evolver` run produced; :meth:`plot` draws the best and
    mean score, the accepted offspring, F and CR per generation.

    Attributes
    ----------
    history
        Per generation (0 = initial population): ``best`` (the best individual's
        score, or with ``merge`` the current merge's score), ``mean`` (mean
        individual score, or with ``merge`` the mean trial score of the
        generation), ``accepted`` (offspring accepted), ``F``, ``CR``,
        ``evaluations`` (cumulative).
    best_score
        Dev score of :meth:`state_dict`'s model.
    best_index
        The best individual (``merge=None``), else None.
    """

    def __init__(self, ev: Evolver) -> None:
        self._ev = ev
        self._version = ev._version
        self.history = ev.history
        self.merge = ev._cfg["merge"]
        self.best_index = ev._best()[0] if self.merge is None else None
        self.best_score = ev._current_best()
        self.fitness = ev.fitness

    def state_dict(self) -> StateDict:
        """The result as a fresh state dict (the best individual, or the merge
        of the final population), in the base's key order."""
        ev = self._ev
        if ev._version != self._version:
            raise RuntimeError("the Evolver has changed since this result; call result() again")
        if self.merge is not None:
            return ev._merged(ev._population_sds())
        assert self.best_index is not None
        return {k: t.clone() for k, t in ev.individual(self.best_index).items()}

    _figure = ("Evolver.plot", (7, 6), 100)

    def _draw(self, fig: Figure) -> None:
        h = self.history
        g = [r["generation"] for r in h]
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        ax1.plot(g, [r["best"] for r in h], "o-", label="best" if self.merge is None else "merge")
        ax1.plot(g, [r["mean"] for r in h], "s--", label="mean")
        ax1.set_ylabel("dev score")
        ax1.legend(loc="lower right")
        axb = ax1.twinx()
        axb.bar(g, [r["accepted"] for r in h], alpha=0.2, color="gray")
        axb.set_ylabel("accepted")
        gs = [r["generation"] for r in h if r["F"] is not None]
        ax2.plot(gs, [r["F"] for r in h if r["F"] is not None], "o-", label="F")
        ax2.plot(gs, [r["CR"] for r in h if r["CR"] is not None], "s--", label="CR")
        if gs and min(r["F"] for r in h if r["F"] is not None) > 0:
            ax2.set_yscale("log")
        ax2.set_xlabel("generation")
        ax2.legend()


def _make_config(
    *, strategy: str, F: float, CR: float, schedule: str,
    F_bounds: tuple[float, float] | None, CR_bounds: tuple[float, float] | None,
    period: int | None, generations: int, merge: str | None,
    merge_params: Mapping[str, Any] | None, granularity: str, block_size: int,
    force_index: bool | None, seed: int,
) -> dict[str, Any]:
    """Validate the Evolver's options (the engine checks the rest)."""
    check_count("generations", generations)
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if merge is not None:
        _check_method(merge)
    if schedule == "constant":
        if F_bounds is not None or CR_bounds is not None or period is not None:
            raise ValueError("F_bounds, CR_bounds and period apply to schedule='cosine'")
        spec: dict[str, Any] = {"kind": "constant", "f": float(F), "cr": float(CR)}
    elif schedule == "cosine":
        fb = tuple(CADE_WEIGHT_SPACE["F"] if F_bounds is None else F_bounds)
        cb = tuple(CADE_WEIGHT_SPACE["CR"] if CR_bounds is None else CR_bounds)
        t = generations if period is None else period
        if len(fb) != 2 or not (math.isfinite(fb[0]) and math.isfinite(fb[1])) or fb[0] > fb[1]:
            raise ValueError(f"F_bounds must be finite (min, max) with min <= max, got {F_bounds}")
        if len(cb) != 2 or not 0.0 <= cb[0] <= cb[1] <= 1.0:
            raise ValueError(f"CR_bounds must satisfy 0 <= min <= max <= 1, got {CR_bounds}")
        if not isinstance(t, int) or t < 1:
            raise ValueError(f"period must be a positive integer, got {period!r}")
        spec = {"kind": "cosine", "f_min": float(fb[0]), "f_max": float(fb[1]),
                "cr_min": float(cb[0]), "cr_max": float(cb[1]), "t": t}
    else:
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    fi = (strategy != "evolver") if force_index is None else bool(force_index)
    return {
        "strategy": strategy, "schedule": spec, "granularity": granularity,
        "block_size": int(block_size), "force_index": fi, "seed": int(seed),
        "generations": generations, "merge": merge, "merge_params": dict(merge_params or {}),
    }
