"""``npsfuse.merge`` and ``npsfuse.task_vector``: the in-memory merge API.

All arithmetic runs in the Go engine (``gocore/merge``) in float32, parallel
over cores and reproducible bit for bit per seed whatever the thread count.
Tensors cross to Go without copies (see :mod:`npsfuse._bridge`); results are
written by Go straight into tensors allocated here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import _core, _jobs, _spec
from ._bridge import ArrowPack, as_dtype, check_tensor
from ._state import ModelLike, StateDict, load_state_dict, model_type

# Views of the engine's spec table (gocore/merge/table.go), read from the
# extension at import: the method table is declared once, in Go.
_TABLE = _spec.table()

#: mergekit's default for ``normalize`` per method (``normalize=None``).
DEFAULT_NORMALIZE: dict[str, bool] = {m.name: m.normalize for m in _TABLE.methods.values()}

#: Methods that read ``density`` (it must lie in (0, 1]).
USES_DENSITY = frozenset(m.name for m in _TABLE.methods.values() if "density" in m.params)

#: Keyword arguments of :func:`merge` that belong to one method, with their
#: defaults (mergekit's where mergekit has the method; NeuroMerging's
#: ``lam2=None``, the default, selects its automatic λ₂ = 1/(1 − max σ_t);
#: ``statistics=None`` means required).
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    m: _spec.method_params(m) for m in _TABLE.methods if _spec.method_params(m)
}

#: Methods that merge a base not among the models as one more model, the
#: last (mergekit's ``linear``), and merge without a base when ``base=None``:
#: the spec table's ``base_as_model``.
BASE_AS_MODEL = frozenset(m.name for m in _TABLE.methods.values() if m.base_as_model)

#: Methods that need per-model statistics (``statistics=``, see :mod:`npsfuse.stats`).
DATA_AWARE = frozenset(m.name for m in _TABLE.methods.values() if m.data_aware)

#: ``scope`` when it is not given: NeuroMerging trims over the whole model.
DEFAULT_SCOPE: dict[str, str] = {
    m.name: m.scope for m in _TABLE.methods.values() if m.scope != "tensor"
}

#: Weights that architectures store (in, out) instead of (out, in), by
#: ``config.json``'s ``model_type``: GPT-2's Conv1D layers (the engine's
#: table, ``gocore/merge/layout.go``, which every door uses).
TRANSPOSED_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    k: tuple(v) for k, v in json.loads(_core.call(_core.go.TransposedByModelType)).items()
}


class MergeResult(dict):  # type: ignore[type-arg]
    """The merged state dict (a plain ``dict`` of name → tensor), plus
    :attr:`report`: what the method chose while merging.

    ``report`` is a dict; its entries depend on the method:

    * ``neuro``: ``lam1``, ``lam2`` (the λ₂ used), ``lam2_auto`` (whether it
      was chosen as 1/(1 − max σ_t)) and ``sigma`` (σ_t per model, the L1
      share of its task vector the trim removed);
    * ``model_stock``: ``t``, tensor name → interpolation ratio;
    * ``slerp``: ``omega``, tensor name → angle Ω in radians, and ``lerp``,
      tensor name → whether |cos Ω| > 0.9995 made it a plain lerp;
    * ``fisher``, ``regmean``: ``plain_average``, tensor name → True for the
      tensors merged as the weighted mean for lack of statistics;
      ``statistics_unused``, the names of statistics that match no merged
      tensor (when there are any); ``regmean`` also ``ridge``, tensor name →
      the ridge δ added where Σ_t w_t G̃_t was not positive definite;
    * other methods: empty.

    :attr:`tokenizer` is the merged tokenizer (a ``transformers`` tokenizer)
    when the call had tokenizer keywords (``tokenizer_source``,
    ``tokenizer``, ``chat_template``), else ``None``.
    """

    report: dict[str, Any]
    tokenizer: Any

    def __init__(
        self,
        *args: Any,
        report: dict[str, Any] | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.report = {} if report is None else report
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        """A one-line summary (the tensors themselves would print megabytes)."""
        numel = sum(int(t.numel()) for t in self.values() if isinstance(t, torch.Tensor))
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in self.values()
                         if isinstance(t, torch.Tensor)})  # fmt: skip
        size = next((f"{numel / d:.1f}{u}" for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "K"))
                     if numel >= d), str(numel))  # fmt: skip
        report = f"; report: {', '.join(self.report)}" if self.report else ""
        return (f"<MergeResult: {len(self)} tensors, {size} parameters, "
                f"{'/'.join(dtypes) or 'no dtype'}{report}>")  # fmt: skip

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython and Jupyter show the summary, not the dict."""
        p.text(repr(self))


def matches(name: str, pattern: str) -> bool:
    """Whether tensor ``name`` matches a ``transposed`` pattern.

    A pattern is a shell-style glob (Go's ``path.Match`` syntax: ``*``,
    ``?``, ``[a-z]``, ``[^a]``) matched against the whole name or against
    any dot-separated suffix of it: ``mlp.c_fc.weight`` matches
    ``transformer.h.3.mlp.c_fc.weight``, as does ``h.*.mlp.c_fc.weight``.
    The engine decides (the same rule as ``npsfuse merge`` and the daemon).
    """
    t = torch.empty(1, 1)
    return bool(_plan({name: t}, [{name: t}], [pattern])[0].get("transposed"))


def methods() -> list[str]:
    """Names of the merge methods the engine provides, sorted."""
    return _core.go.Methods().split(",")


def set_num_threads(n: int) -> None:
    """Set how many threads the Go kernels use (``n <= 0``: all cores)."""
    _core.go.SetThreads(int(n))


def get_num_threads() -> int:
    """How many threads the Go kernels use."""
    return int(_core.go.Threads())


def _check_method(method: str) -> None:
    """Refuse an unknown method, in the engine's words (``merge.Resolve``)."""
    if method not in _TABLE.methods:
        _spec.check(method, 1, {"global": {}})


#: safetensors' names of torch dtypes: the planner's vocabulary.
_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.complex64: "C64", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
    torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
    **{getattr(torch, f"uint{b}"): f"U{b}" for b in (16, 32, 64) if hasattr(torch, f"uint{b}")},
}


def _plan(
    base: StateDict, models: Sequence[StateDict], patterns: Sequence[str] | None = None,
    mtype: str = "", verify: bool = True, no_base: bool = False,
) -> list[dict[str, Any]]:
    """Match ``models`` with ``base`` by the engine's planner (``gocore/plan``,
    the rule and the words of ``npsfuse merge`` and the daemon): one entry per
    tensor of the base, in name order, ``"action"`` ``"merge"`` or ``"copy"``
    (integer and boolean tensors, whose values every model must share: compared
    here unless ``verify`` is false), ``"transposed"`` under ``patterns``
    (``None``: those of ``mtype``). Inputs that do not fit raise ``TypeError``
    (dtypes, integer values) or ``ValueError``, listing every problem.
    ``no_base``: there is no base (``base`` is ``models[0]``), and messages
    name the first model "model 0", as for a YAML config without
    ``base_model``."""
    options = {"transposed": None if patterns is None else list(patterns), "model_type": mtype,
               "no_base": no_base}  # fmt: skip
    request: dict[str, Any] = {
        "base": _listing(base), "models": [_listing(sd) for sd in models], "options": options,
    }
    plan = json.loads(_core.call(_core.go.PlanMerge, json.dumps(request)))
    if not plan["error"] and verify:
        request["differ"] = [{"tensor": e["name"], "model": i} for e in plan["entries"]
                             if e.get("verify") for i, sd in enumerate(models)
                             if not torch.equal(sd[e["name"]], base[e["name"]])]
        if request["differ"]:
            plan = json.loads(_core.call(_core.go.PlanMerge, json.dumps(request)))
    if plan["error"]:
        dtypes = all(p["kind"] in ("dtype", "values") for p in plan["problems"])
        raise (TypeError if dtypes else ValueError)(plan["error"])
    return plan["entries"]


def _listing(sd: StateDict) -> dict[str, Any]:
    return {"tensors": [{"name": k, "dtype": _DTYPE_NAMES.get(t.dtype, str(t.dtype)),
                         "shape": list(t.shape)} for k, t in sd.items()]}


def _check_shapes(base: StateDict, models: Sequence[StateDict]) -> None:
    """Raise unless ``models`` fit ``base`` (:func:`_plan`)."""
    _plan(base, models)


def _split(
    base: StateDict, models: Sequence[StateDict], verify: bool = True
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Names to merge (in the base's order), and the integer/bool tensors
    taken from the base unchanged (:func:`_plan`, which compares their values
    unless ``verify`` is false)."""
    merged = {e["name"] for e in _plan(base, models, verify=verify) if e["action"] == "merge"}
    return [k for k in base if k in merged], {k: t for k, t in base.items() if k not in merged}


def _run(
    method: str,
    params: dict[str, Any],
    names: Sequence[str],
    base: StateDict,
    models: Sequence[StateDict],
    dtype: torch.dtype | str | None,
    wide: frozenset[str] = frozenset(),
    transposed: frozenset[str] = frozenset(),
    statistics: Sequence[StateDict] | None = None,
) -> tuple[StateDict, dict[str, Any]]:
    """Pack inputs and freshly allocated outputs, run one Go merge call, and
    return the outputs and the method's report. Without ``dtype``, the
    outputs named in ``wide`` (float64 inputs, merged in float32: see
    :func:`_narrow_float64`) are float64.

    ``statistics`` (fisher, regmean): one dict per model; a tensor named in
    them gets its models' statistics packed after the models (flagged in
    ``params["statistics"]``). No tensor to merge: no call, nothing returned."""
    if not names:
        return {}, {}
    if dtype is not None:
        dtype = as_dtype(dtype)
    items: list[tuple[str, torch.Tensor]] = []
    outs: StateDict = {}
    flags: list[bool] = []
    for k in names:
        b = check_tensor(k, base[k])
        items.append((k, b))
        items.extend((f"{k} (model {i})", check_tensor(k, sd[k])) for i, sd in enumerate(models))
        if statistics is not None:
            flags.append(k in statistics[0])
            if flags[-1]:
                items.extend((f"{k} (statistics {i})", check_tensor(k, st[k]))
                             for i, st in enumerate(statistics))
        outs[k] = torch.empty(b.shape, dtype=dtype or b.dtype)
        items.append((f"{k} (output)", outs[k]))
    if statistics is not None:
        params = {**params, "statistics": flags}
    pack = ArrowPack(items, transposed)
    report = _jobs.run(  # in a worker thread: Ctrl-C cancels the Go call
        _core.go.MergeJob,
        method,
        json.dumps(params),
        len(names),
        len(models),
        pack.arrays,
        pack.schemas,
        nbytes=sum(t.nbytes for _, t in items),
    )
    if dtype is None:
        outs = {k: t.to(torch.float64) if k in wide else t for k, t in outs.items()}
    return outs, (json.loads(report) if report else {})


def merge(
    base: ModelLike | None,
    models: Sequence[ModelLike],
    method: str = "ties",
    *,
    weights: Sequence[float] | float | None = None,
    density: float | Sequence[float] = 0.2,
    lam: float = 1.0,
    normalize: bool | None = None,
    scope: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    transposed: Sequence[str] | None = None,
    threads: int | None = None,
    include: Sequence[str | re.Pattern[str]] | None = None,
    exclude: Sequence[str | re.Pattern[str]] | None = None,
    slices: Sequence[Mapping[str, Any]] | None = None,
    tokenizer_source: Any = None,
    tokenizer: Mapping[str, Any] | None = None,
    chat_template: str | None = None,
    **params: Any,
) -> MergeResult:
    """Merge fine-tuned models that share one pre-trained base.

    Parameters
    ----------
    base
        The pre-trained model θ₀: a state dict, an ``nn.Module``, or the path of
        a checkpoint (Hugging Face folder or single file; safetensors, else
        PyTorch ``.bin`` files loaded with ``torch.load(weights_only=True)``),
        a Hugging Face Hub id ``org/name[@revision]`` (its snapshot in the
        Hugging Face cache, downloaded when online) or mergekit's
        ``MODEL+LORA``. float64 tensors are merged in float32 (as everything)
        and returned as float64.
        ``slerp`` does not use it (it interpolates the two models) but it is
        still required: it fixes the tensor names, shapes and order.
        ``linear`` (every method of :data:`BASE_AS_MODEL`, the spec table's
        ``base_as_model``) averages a base that is not among ``models`` (not
        the same object, nor the same path) in as one more model, the last,
        as mergekit and ``npsfuse merge`` do with a ``base_model`` (see
        ``weights`` for its weight); ``base=None`` merges the models alone
        (the plain weight average, a model soup), the first model fixing
        the tensor names, shapes and order, as a YAML config without
        ``base_model``. The other methods need a base and refuse ``None``.
    models
        The fine-tuned models θ₁…θ_T, in the same forms (``slerp``: exactly 2),
        or PEFT LoRA adapters: an adapter folder (``adapter_config.json`` and
        ``adapter_model.safetensors``) is merged into ``base`` first, a
        ``peft.PeftModel`` (or a model with adapters loaded) gives its base
        weights with its active adapters merged in — PEFT's
        ``merge_and_unload()`` weights, bit for bit (scaling ``lora_alpha/r``
        or rsLoRA's ``lora_alpha/√r``, ``rank_pattern``/``alpha_pattern``,
        ``fan_in_fan_out``, ``modules_to_save``). A module with LoRA layers
        given as ``base`` counts without its adapters.
    method
        One of :func:`methods`: ``linear``, ``task_arithmetic``, ``ties``,
        ``dare_linear``, ``dare_ties``, ``magnitude_prune``, ``breadcrumbs``,
        ``breadcrumbs_ties``, ``della``, ``della_linear``, ``consensus_ta``,
        ``consensus_ties``, ``pcb``, ``model_stock``, ``slerp``, ``nearswap``
        (one fine-tuned model, ``t=`` required), ``neuro`` (definitions:
        METHODS.md; every parameter: docs/methods.md), and the data-aware
        ``fisher`` and ``regmean``, which need ``statistics=`` (below).
        The subspace merges ``tsv`` (TSV-Merge), ``iso_c`` and ``iso_cts``
        (isotropic merging) decompose every 2-D weight whole (exact SVDs)
        and average the other tensors' task vectors; they refuse
        ``density`` and ignore ``normalize``, ``scope`` and ``seed``, and scale each
        τ_t by its weight before the decomposition.
    weights
        Per-model weights w_t (default all 1; PCB's per-task λ_t; refused by
        methods that do not use them, e.g. ``model_stock`` and ``slerp``).
        One number is every model's weight (a YAML config's global
        ``parameters.weight``). When ``linear`` averages the base in, the
        base is the last model: ``len(models) + 1`` values give its weight
        last; with ``len(models)`` values it takes the default 1, which is
        what ``npsfuse merge`` gives a ``base_model`` without a global
        ``parameters.weight`` (mergekit requires one there); one number is
        the base's weight too.
        Numeric parameters also take
        mergekit's per-tensor forms (docs/methods.md): a dict
        ``{"filter": "mlp", "value": …}`` or a list of them applies to every
        model; inside a per-model list each entry may be a number, a
        gradient list or such a filter list; for a parameter taking one
        value (``lam``, ``t``, …) a list is a gradient over the layers.
    density
        Fraction of task-vector entries kept (top-k, DARE's and DELLA's random
        drop, the breadcrumbs band, PCB's kept scores); in (0, 1]. One value
        for all models, or one per model (mergekit's per-model ``density``).
    lam
        λ, the scale of the merged task vector (for ``neuro`` it multiplies
        λ₁ and λ₂). A method that does not use ``lam`` or ``density``
        (``model_stock``, ``slerp``, ``task_arithmetic``'s density, ...)
        refuses a value other than the default, naming it, rather than
        ignoring it; the defaults themselves are not passed to it.
    normalize
        Divide by the sum of weights (of the agreeing models for TIES; for
        ``linear`` with its base averaged in, the base's weight included). ``None``
        takes mergekit's default for the method (True for ``linear``, ``ties``,
        ``della`` and ``consensus_ties``, False otherwise), so a mergekit
        user's numbers carry over.
    scope
        ``"tensor"`` ranks top-k (and PCB's quantiles) per tensor; ``"global"``
        over the whole model. ``None``: ``"global"`` for ``neuro``,
        ``"tensor"`` otherwise. Equal magnitudes at the cut are kept in the
        order of tensor names (sorted), then of entries, as by
        ``npsfuse merge``: the result does not depend on the state dict's
        order.
    seed
        Seed of DARE's and DELLA's random drop; the draw for an entry depends
        only on (seed, tensor name, model index, entry index).
    dtype
        Output dtype, a ``torch.dtype`` or its name (``"bfloat16"``; default:
        each tensor's base dtype). Arithmetic is float32.
    transposed
        Name patterns (see :func:`matches`) of 2-D weights stored (in, out),
        which the per-neuron methods (``neuro``, ``della``, ``della_linear``)
        and the subspace merges (``iso_cts`` depends on it) transpose back.
        ``None`` detects them: GPT-2's Conv1D weights when the base is a
        Hugging Face folder (or module) of ``model_type`` ``"gpt2"``.
    threads
        Goroutines this call's kernels use (default ``None``: the process
        default, :func:`set_num_threads`, else all cores). It applies to
        this call only; the result is bit-identical for any value.
    include, exclude
        Regular expressions (``re.search``, the Evolver's syntax) of tensor
        names: only tensors matching one of ``include`` (default: all) and
        none of ``exclude`` are merged; the others are the base's, and the
        models need not have them (e.g. ``exclude=[r"^classifier\\."]`` for
        task-specific heads).
    slices, tokenizer_source, tokenizer, chat_template
        mergekit's keys of the same names, with its semantics (README,
        "mergekit configs"): ``slices`` a frankenmerge (a list of
        ``{"sources": [{"model": …, "layer_range": [lo, hi],
        "parameters": {…}}], …}``; ``method`` is the merge method of every
        slice, ``passthrough`` to stack layers), the others a merged
        vocabulary (``.tokenizer`` of the result). These merge checkpoints on
        disk: ``base`` and the models must be checkpoint folders, files or Hub
        ids (``MODEL+LORA`` too), and a source's (or a tokenizer rule's)
        ``model`` may be an index into ``models``, which with ``slices`` is
        only that table (``models=[]`` when the sources name paths). The
        call is run as the mergekit config these arguments mean, by
        :func:`npsfuse.merge_checkpoints` into a temporary folder (the
        result the same bits as the same YAML through ``npsfuse merge``);
        per-model values go into each source's ``parameters`` with
        ``slices``; ``include``, ``exclude`` and ``statistics`` are refused.
    **params
        Method-specific parameters (:data:`METHOD_PARAMS`):
        ``gamma`` (breadcrumbs: fraction of the largest |τ| dropped, 0.01,
        a number or one per model);
        ``epsilon`` (DELLA: keep probabilities span density ± ε, 0.15, a
        number or one per model);
        ``rescale`` (DARE, DELLA, TIES, breadcrumbs: scale each sparsified
        task vector by one factor per tensor restoring its L1 norm, as
        mergekit; ``None``: mergekit's default, True for DARE and DELLA);
        ``k``, ``tall_lambda`` (consensus: masks needed, 2, and the TALL
        λ_t, 0.4, a number or one per model);
        ``t`` (slerp: 0 gives the first model, 1 the second; 0.5; nearswap:
        the distance below which an entry takes the fine-tuned value, > 0,
        required);
        ``mask_rate``, ``lam1``, ``lam2`` (NeuroMerging: fraction trimmed,
        0.9; scale of the parallel part, 0; scale of the orthogonal part,
        1.0 — ``None`` selects the automatic 1/(1 − max σ_t), which
        overshoots: 3–5 on small models, see the README);
        ``statistics`` (``fisher``, ``regmean``: required, one per model, in
        the models' order: a dict name → tensor or the path of a file written
        by :func:`npsfuse.stats.save`; Fisher diagonals from
        :func:`npsfuse.stats.fisher`, Gram matrices from
        :func:`npsfuse.stats.regmean_grams`);
        ``fisher_floor`` (Fisher merging: lower bound of every Fisher value,
        1e-6); ``alpha`` (RegMean: multiplier of the Grams' off-diagonal
        entries, 0.9).
        ``common_space_fraction`` (Iso-CTS: share of each matrix's rank given
        to the common subspace, in [0, 1]; 0.8, the authors' default).

    Returns
    -------
    MergeResult
        The merged state dict (a ``dict``), in the base's key order, with the
        method's report in ``.report`` (e.g. NeuroMerging's chosen λ₂).
        Integer and boolean buffers are copied from the base (they must
        agree across models).

    Raises
    ------
    ValueError
        ``base=None`` for a method that needs a base.
        Unknown method or parameter, a parameter out of range (the engine's
        spec table checks every value, with the words ``npsfuse merge`` and
        the daemon use), wrong number of weights (or of models for slerp and
        nearswap), a tensor missing from a model or
        of another shape, NaN/Inf in an input; for ``fisher`` and
        ``regmean``: missing statistics, statistics of the wrong shape, NaN,
        Inf or negative Fisher values.
    TypeError
        A tensor on a non-CPU device or of an unsupported dtype, or an
        integer/bool tensor whose dtype or values differ from the base's.

    Notes
    -----
    Non-contiguous tensors are made contiguous once before the call; all
    others are read in place. The Go engine releases the GIL while it works.

    ``fisher`` (Matena & Raffel, 2022) merges each entry as
    θ₀ + λ·Σ_t w_t F̃_t τ_t / Σ_t w_t F̃_t with F̃_t = max(F_t, fisher_floor)
    (for λ = 1 this is the paper's Σ_t w_t F̃_t θ_t / Σ_t w_t F̃_t; the
    weights are the paper's merging coefficients λ_t). ``regmean`` (Jin et
    al., 2023) merges every linear weight with a Gram matrix as
    W₀ + λ·Δ, Δᵀ = (Σ_t w_t G̃_t)⁻¹ Σ_t w_t G̃_t τ_tᵀ, G̃ = α·G + (1 − α)·diag G,
    solved in float64 by Cholesky (a small ridge towards the weighted mean
    where the system is singular, reported). Tensors without statistics
    (for RegMean: everything but linear weights) are merged as the weighted
    mean of the task vectors, θ₀ + λ·Σ_t w_t τ_t / Σ_t w_t, and listed in the
    report's ``plain_average``. Weights must be non-negative; ``normalize``,
    ``density`` and ``scope`` are not used. Statistics naming tensors that
    are not merged are ignored (listed in ``statistics_unused``); if none
    matches, or a model lacks statistics another model has, ``ValueError``.
    """
    # The engine's parameters, keyed by this function's keywords (_params).
    kw = dict(weights=weights, density=density, lam=lam, normalize=normalize, scope=scope,
              seed=seed, **params)  # fmt: skip
    routed = {"slices": slices, "tokenizer_source": tokenizer_source, "tokenizer": tokenizer,
              "chat_template": chat_template}  # fmt: skip
    if any(v is not None for v in routed.values()):
        selection = {"include": include, "exclude": exclude}
        return _merge_via_config(base, models, method, routed, kw, dtype=dtype,
                                 transposed=transposed, threads=threads, selection=selection)
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
        raise ValueError("models must be a non-empty list of fine-tuned models")
    _check_method(method)
    if base is None and method not in BASE_AS_MODEL:
        raise ValueError(
            f"{method} needs a base model (the pre-trained θ₀); base=None is only for "
            f"{', '.join(sorted(BASE_AS_MODEL))}, which merge the models without one"
        )
    # linear with a base that is not among the models: mergekit averages it
    # in as the last model (as stream.ParseConfig does for npsfuse merge).
    base_last = (method in BASE_AS_MODEL and base is not None
                 and not any(_same_input(base, m) for m in models))
    go_params = _params(method, len(models) + int(base_last), base_last, **kw)
    if threads is not None:
        go_params["threads"] = int(threads)
    base_sd = None if base is None else load_state_dict(base, "base")
    model_sds = [load_state_dict(m, f"model {i}", base=base_sd) for i, m in enumerate(models)]
    if base_sd is None:  # the first model lays the output out, as without base_model
        base_sd = model_sds[0]
    elif base_last:
        model_sds.append(base_sd)
    full_sd = base_sd
    base_sd, model_sds = _select(base_sd, model_sds, include, exclude)
    base_sd, model_sds, wide = _narrow_float64(base_sd, model_sds)
    if isinstance(transposed, str):
        transposed = [transposed]
    layout = models[0] if base is None else base
    plan = _plan_or_hint(base_sd, model_sds, transposed,
                         (model_type(layout) or "") if transposed is None else "",
                         no_base=base is None)
    # In name order: a global top-k breaks ties in tensor order, as the CLI does.
    names = [e["name"] for e in plan if e["action"] == "merge"]
    flagged = frozenset(e["name"] for e in plan if e.get("transposed"))
    stats, unused = _statistics(method, params.get("statistics"), len(models), base_sd, names)
    merged, report = _run(method, go_params, names, base_sd, model_sds, dtype, wide, flagged, stats)
    if unused:
        report["statistics_unused"] = unused
    return MergeResult({k: merged.get(k, t) for k, t in full_sd.items()}, report=report)


def _merge_via_config(
    base: ModelLike | None,
    models: Sequence[ModelLike],
    method: str,
    routed: Mapping[str, Any],
    kw: dict[str, Any],
    *,
    dtype: torch.dtype | str | None,
    transposed: Sequence[str] | None,
    threads: int | None,
    selection: Mapping[str, Any],
) -> MergeResult:
    """:func:`merge` with ``slices``/tokenizer keywords: the mergekit config
    the arguments mean, merged by :func:`npsfuse.merge_checkpoints`
    (:mod:`npsfuse._merge_config`); ``kw``: the engine's parameters by
    :func:`merge`'s keywords; ``selection``: ``include`` and ``exclude``,
    which a config cannot carry (refused when given)."""
    from . import _merge_config

    _check_method(method)
    _merge_config.check_keywords({**selection, "statistics": kw.get("statistics")})
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        raise ValueError("models must be a list (with slices=, the table sources may index)")
    if routed["slices"] is None and not models:
        raise ValueError("models must be a non-empty list of fine-tuned models")
    # With slices, no model count to check against: the engine checks each slice.
    payload = _params(method, max(1, len(models)), _check=routed["slices"] is None, **kw)
    out_dtype = None if dtype is None else str(as_dtype(dtype)).removeprefix("torch.")
    conf = _merge_config.config(base, models, method, payload, dtype=out_dtype,
                                transposed=transposed, keywords=routed)  # fmt: skip
    sd, tok = _merge_config.run(conf, threads)
    return MergeResult(sd, tokenizer=tok)


def _select(
    base: StateDict, models: Sequence[StateDict],
    include: Sequence[str | re.Pattern[str]] | None,
    exclude: Sequence[str | re.Pattern[str]] | None,
) -> tuple[StateDict, list[StateDict]]:
    """The tensors :func:`merge` merges: names matching (``re.search``) one of
    ``include`` (all when ``None``) and none of ``exclude``, as the Evolver
    selects them. Models need not have the others."""
    if include is None and not exclude:
        return base, list(models)
    def compiled(ps: Any, what: str) -> list[re.Pattern[str]]:
        if isinstance(ps, (str, re.Pattern)):
            ps = [ps]
        try:
            return [re.compile(p) if isinstance(p, str) else p for p in ps]
        except re.error as exc:
            raise ValueError(f"{what}: invalid regular expression: {exc}") from None
    inc = None if include is None else compiled(include, "include")
    exc = compiled(exclude or (), "exclude")
    names = [k for k in base if not any(p.search(k) for p in exc)
             and (inc is None or any(p.search(k) for p in inc))]
    if not names:
        raise ValueError(f"include/exclude select none of the base's {len(base)} tensors "
                         f"(e.g. {next(iter(base), '')!r})")
    return ({k: base[k] for k in names},
            [{k: sd[k] for k in names if k in sd} for sd in models])


def _narrow_float64(
    base: StateDict, models: Sequence[StateDict]
) -> tuple[StateDict, list[StateDict], frozenset[str]]:
    """float64 tensors as float32 copies (the engine computes in float32),
    and the names whose base tensor is float64 (their result is cast back)."""
    wide = frozenset(k for k, t in base.items() if t.dtype == torch.float64)
    if not wide and not any(t.dtype == torch.float64 for sd in models for t in sd.values()):
        return base, list(models), wide

    def narrow(sd: StateDict) -> StateDict:
        return {k: t.to(torch.float32) if t.dtype == torch.float64 else t for k, t in sd.items()}
    return narrow(base), [narrow(sd) for sd in models], wide


def _same_input(a: ModelLike, b: ModelLike) -> bool:
    """Whether ``a`` and ``b`` name the same model: the same object, or the
    same path (as a YAML config compares ``base_model`` with the models)."""
    if a is b:
        return True
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        def where(p: str | os.PathLike[str]) -> str:
            s = os.fspath(p)
            return os.path.realpath(s) if os.path.exists(s) else s
        return where(a) == where(b)
    return False


def _plan_or_hint(
    base: StateDict, models: Sequence[StateDict], patterns: Sequence[str] | None, mtype: str,
    no_base: bool = False,
) -> list[dict[str, Any]]:
    """:func:`_plan`, with a hint when a model that does not fit is a LoRA
    adapter's state dict (factors, not weights)."""
    try:
        return _plan(base, models, patterns, mtype, no_base=no_base)
    except ValueError as exc:
        from ._peft import CONFIG_FILE, looks_like_adapter

        which = [i for i, sd in enumerate(models) if looks_like_adapter(sd)]
        if which:
            raise ValueError(
                f"{exc}\nmodel {which[0]} looks like a PEFT LoRA adapter (its tensors are "
                "lora_A/lora_B factors): pass the adapter folder (with its "
                f"{CONFIG_FILE}) or the PeftModel instead, and it is merged into the base's "
                "weights"
            ) from None
        raise


def _is_default(value: Any, default: Any) -> bool:
    """Whether a keyword still holds :func:`merge`'s default (a number)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and value == default)


def _params(
    method: str, n_models: int, base_last: bool = False, *, _check: bool = True, **kw: Any
) -> dict[str, Any]:
    """The engine's parameters of a call, checked by the engine against the
    method's row of the spec table (the checks and messages of a YAML config
    and a daemon job; ``_check=False`` leaves them to the merge itself);
    ``None`` values of the common keywords mean "the method's default".
    ``base_last``: the last of the ``n_models`` is the base merged as a
    model (see :func:`npsfuse._spec.payload`). Callers check ``method``
    first (:func:`_check_method`)."""
    for key in ("weights", "normalize", "scope"):
        if kw.get(key) is None:
            kw.pop(key, None)
    # density and lam always have a value here: the engine refuses them for a
    # method that does not use them, so their defaults are not sent to such
    # methods (an explicit value other than the default is, and is refused).
    reads = _TABLE.methods[method].params
    for key, name in (("density", "density"), ("lam", "lambda")):
        if name not in reads and key in kw and _is_default(kw[key], _TABLE.params[name].default):
            del kw[key]
    p = _spec.payload(method, n_models, kw, base_last=base_last)
    if _check:
        _spec.check(method, n_models, p)
    return p


def _statistics(
    method: str, given: Any, n_models: int, base: StateDict, names: Sequence[str]
) -> tuple[list[StateDict] | None, list[str]]:
    """The data-aware methods' statistics, checked: one float32 dict per
    model restricted to the merged tensors, and the names that match none
    (``None`` and none for the other methods, which take no statistics)."""
    if method not in DATA_AWARE:
        return None, []
    if given is None:
        raise ValueError(
            f"{method} needs statistics=[…], one per model (see npsfuse.stats."
            f"{'fisher' if method == 'fisher' else 'regmean_grams'})"
        )
    if isinstance(given, (str, bytes, os.PathLike)) or not isinstance(given, Sequence):
        raise ValueError("statistics must be a list with one entry per model")
    if len(given) != n_models:
        raise ValueError(f"{len(given)} statistics given for {n_models} models")
    from . import stats as _stats

    loaded: list[Mapping[str, torch.Tensor]] = []
    for i, st in enumerate(given):
        st = _stats.load(st) if isinstance(st, (str, os.PathLike)) else st
        if not isinstance(st, Mapping):
            raise ValueError(f"statistics of model {i} are missing" if st is None else
                             f"statistics of model {i} must be a dict of tensors or a file "
                             f"path, got {type(st).__name__}")  # fmt: skip
        loaded.append(st)
    merged = set(names)
    keys = sorted(set().union(*loaded))
    unused = [k for k in keys if k not in merged]
    used = [k for k in keys if k in merged]
    if not used:
        raise ValueError(
            f"none of the {method} statistics names a merged tensor "
            f"(statistics name e.g. {keys[:3]}, the models {sorted(merged)[:3]})"
            if keys else f"the {method} statistics are empty"
        )
    out: list[StateDict] = [{} for _ in loaded]
    for k in used:
        shape = tuple(base[k].shape)
        for i, st in enumerate(loaded):
            if k not in st:
                have = next(j for j, s in enumerate(loaded) if k in s)
                raise ValueError(
                    f"statistics of model {i} lack tensor {k!r}, which model {have}'s have"
                )
            t = st[k]
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"statistics of model {i} for tensor {k!r} are not a tensor")
            if method == "fisher" and tuple(t.shape) != shape:
                raise ValueError(
                    f"the Fisher of tensor {k!r} for model {i} has shape {tuple(t.shape)}, "
                    f"the tensor {shape}"
                )
            if method == "regmean" and (t.dim() != 2 or t.shape[0] != t.shape[1]):
                raise ValueError(
                    f"the Gram matrix of tensor {k!r} for model {i} has shape "
                    f"{tuple(t.shape)}; it must be square (in × in)"
                )
            out[i][k] = t.detach().to("cpu", torch.float32)
    return out, unused


def task_vector(
    base: ModelLike, finetuned: ModelLike, *, dtype: torch.dtype | str | None = None
) -> StateDict:
    """τ = θ_ft − θ_pre for every floating-point tensor.

    Parameters
    ----------
    base, finetuned
        State dicts, modules or checkpoints (see :func:`merge`); ``finetuned``
        may be a PEFT LoRA adapter (folder or ``PeftModel``), merged into
        ``base`` first.
    dtype
        Output dtype (default: the base tensor's dtype); the difference is
        computed in float32.

    Returns
    -------
    dict[str, torch.Tensor]
        One entry per floating-point tensor; integer/bool buffers are left out.
    """
    base_sd = load_state_dict(base, "base")
    ft_sd = load_state_dict(finetuned, "finetuned", base=base_sd)
    base_sd, (ft_sd,), wide = _narrow_float64(base_sd, [ft_sd])
    names, _ = _split(base_sd, [ft_sd], verify=False)
    params = _params("linear", 2, weights=[1.0, -1.0], normalize=False)
    # linear with weights (1, −1) over (θ_ft, θ_pre) is exactly θ_ft − θ_pre.
    return _run("linear", params, names, base_sd, [ft_sd, base_sd], dtype, wide)[0]
