"""Statistics for the data-aware merges, computed from a model and unlabelled batches.

``npsfuse.merge(base, models, "fisher", statistics=[F_1, …, F_T])`` and
``npsfuse.merge(base, models, "regmean", statistics=[G_1, …, G_T])`` take one
set of statistics per fine-tuned model, computed here from that model and a
few batches of its task's inputs (no labels needed), and saved as
safetensors files that a ``npsfuse merge`` YAML config can name
(``models[i].parameters.statistics``)::

    F = npsfuse.stats.fisher(model_a, loader_a, max_batches=8)
    npsfuse.stats.save(F, "a.fisher.safetensors")
    G = npsfuse.stats.regmean_grams(model_a, loader_a, max_batches=8)

Both helpers run ``forward(module, batch) -> logits`` (default: ``module(batch)``,
or ``module(**batch)`` for a mapping, taking ``.logits`` from a Hugging Face
output) on each batch, with the module in eval mode (restored afterwards),
and can evaluate another set of weights than the module's own through
``params`` (``torch.func.functional_call``). Batches are tensors or nests of
dicts, tuples and lists of tensors whose first dimension is the batch.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

#: ``forward(module, batch) -> logits`` of shape (N, C).
Forward = Callable[[nn.Module, Any], torch.Tensor]

#: Per-example gradient entries held at once when the chunk size is not given
#: (float32: 256 MB).
_GRAD_BUDGET = 1 << 26

__all__ = ["default_forward", "fisher", "load", "regmean_grams", "save"]


def default_forward(module: nn.Module, batch: Any) -> torch.Tensor:
    """``module(**batch)`` for a mapping, else ``module(batch)``; ``.logits`` if present."""
    out = module(**batch) if isinstance(batch, Mapping) else module(batch)
    return getattr(out, "logits", out)


class _Bound(nn.Module):
    """``module`` and ``forward`` as one module, so that ``functional_call``
    can swap the module's tensors (as ``module.<name>``) around any forward."""

    def __init__(self, module: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.module = module
        self._forward = forward

    def forward(self, batch: Any) -> torch.Tensor:
        return self._forward(self.module, batch)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _tensors(
    module: nn.Module, params: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The tensors to evaluate the module with: ``params`` (checked against
    the module's state dict) or the module's own."""
    own = module.state_dict()
    if params is None:
        return {k: v.detach() for k, v in own.items()}
    unknown = [k for k in params if k not in own]
    if unknown:
        raise ValueError(
            f"params names {unknown[0]!r}, which the module's state dict lacks"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    for k, v in params.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"params[{k!r}] is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(
                f"params[{k!r}] has shape {tuple(v.shape)}, the module's {tuple(own[k].shape)}"
            )
    return {k: v.detach() for k, v in params.items()}


def _prefixed(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in tensors.items()}


def _batch_dims(batch: Any, n: int) -> Any:
    """``batch``'s structure with 0 for tensors batched along their first
    dimension (length ``n``) and None for everything else."""
    if isinstance(batch, torch.Tensor):
        return 0 if batch.dim() >= 1 and batch.shape[0] == n else None
    if isinstance(batch, Mapping):
        return {k: _batch_dims(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_batch_dims(v, n) for v in batch)
    return None


def _map_batched(batch: Any, dims: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to the batched tensors of ``batch`` (mappings become dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch) if dims == 0 else batch
    if isinstance(batch, Mapping):
        return {k: _map_batched(v, dims[k], fn) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_batched(v, d, fn) for v, d in zip(batch, dims, strict=True))
    return batch


def _logits(bound: _Bound, tensors: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
    out = functional_call(bound, _prefixed(tensors), (batch,))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"forward must return logits of shape (N, C), got {got}")
    return out


def fisher(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    forward: Forward | None = None,
    max_batches: int | None = None,
    exact: bool = False,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of a model's parameters on unlabelled batches.

    F_j = (1/N) Σ_i (∂ log p(y_i | x_i) / ∂θ_j)² over the N examples of the
    batches, with y_i drawn from the model's own predictive distribution
    softmax(logits_i) (the "true" Fisher of Matena & Raffel, "Merging Models
    with Fisher-Weighted Averaging", NeurIPS 2022, §2.2; not the empirical
    Fisher, which would use the labels). Per-example gradients come from
    ``torch.func.vmap`` over ``torch.func.grad`` (one example at a time when
    the forward cannot be vectorised).

    Parameters
    ----------
    module
        The model (put in eval mode while it runs, then restored).
    batches
        Unlabelled inputs: an iterable of batches (tensors, or dicts, tuples
        and lists of tensors with the batch as first dimension).
    params
        Tensors to evaluate instead of the module's own (names of its state
        dict, e.g. a fine-tune's state dict); the Fisher is taken with
        respect to their floating-point entries. Default: the module's state
        dict.
    forward
        ``forward(module, batch) -> logits`` of shape (N, C) (default
        :func:`default_forward`).
    max_batches
        Stop after this many batches (default: all).
    exact
        Take the expectation over every class, Σ_c p(c | x)·(∂ log p(c | x))²,
        instead of one sampled label per example (what the authors' code
        computes; C times the work).
    seed
        Seed of the sampled labels.
    chunk_size
        Examples whose gradients are held at once (default: as many as fit
        in 2**26 floats).

    Returns
    -------
    dict[str, torch.Tensor]
        One float32 CPU tensor per floating-point tensor of ``params`` (or
        of the module's state dict), of its shape, in the same order; zeros
        for the module's buffers (BatchNorm's running statistics), which are
        no parameters: a Fisher merge averages them with the models' weights.

    Raises
    ------
    ValueError
        No batches, no floating-point tensors, logits not of shape (N, C),
        ``params`` that do not fit the module.
    """
    bound = _Bound(module, forward or default_forward)
    tensors = _tensors(module, params)
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        raise ValueError("no floating-point tensors to take the Fisher of")
    # Buffers (BatchNorm's running statistics) are no parameters of the
    # likelihood, and torch cannot differentiate batch_norm by them: they stay
    # constants and get a zero Fisher, so that the merge's floor weighs them by
    # the models' weights alone.
    buffers = {k for k, _ in module.named_buffers()}
    # Tied weights (one tensor under several names, e.g. embeddings and an LM
    # head): differentiate the first name; functional_call ties the others
    # to it, and they get its Fisher.
    first: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for k in (k for k in names if k not in buffers):
        v = tensors[k]
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in first:
            tied[k] = first[key]
        first.setdefault(key, k)
    order = names
    names = [k for k in names if k not in tied and k not in buffers]
    tensors = {k: v for k, v in tensors.items() if k not in tied}
    fixed = {k: v for k, v in tensors.items() if k not in names}
    n_params = sum(tensors[k].numel() for k in names)
    acc = {k: torch.zeros(tensors[k].shape, dtype=torch.float64, device=tensors[k].device)
           for k in names}
    gen = torch.Generator().manual_seed(int(seed))

    def log_prob(p: dict[str, torch.Tensor], batch: Any, y: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(_logits(bound, {**fixed, **p}, batch).float(), dim=-1)
        return logp[0].gather(0, y.reshape(1)).squeeze(0)

    grad = torch.func.grad(log_prob)
    vectorize = True

    def add(p: dict[str, torch.Tensor], sub: Any, dims: Any, y: torch.Tensor,
            weight: torch.Tensor | None) -> None:
        """Add the squared per-example gradients (times ``weight``) of ``sub``."""
        nonlocal vectorize
        if vectorize:
            def one(q: dict[str, torch.Tensor], ex: Any, yi: torch.Tensor) -> Any:
                return grad(q, _map_batched(ex, dims, lambda t: t.unsqueeze(0)), yi)
            try:
                g = torch.func.vmap(one, in_dims=(None, dims, 0))(p, sub, y)
            except Exception as exc:  # noqa: BLE001 - any failure of vmap: fall back
                warnings.warn(
                    f"npsfuse.stats.fisher: the forward cannot be vectorised ({exc}); "
                    "computing per-example gradients one example at a time",
                    RuntimeWarning, stacklevel=3,
                )
                vectorize = False
            else:
                for k in names:  # squares summed over the chunk, then into float64
                    sq = g[k].float().square()
                    if weight is not None:
                        sq = sq * weight.to(sq).view(-1, *([1] * (sq.dim() - 1)))
                    acc[k] += sq.sum(0).double()
                return
        for i in range(y.shape[0]):
            ex = _map_batched(sub, dims, lambda t, i=i: t[i : i + 1])
            g = grad(p, ex, y[i])
            for k in names:
                sq = g[k].double().square()
                acc[k] += sq if weight is None else weight[i].item() * sq

    diff = {k: tensors[k] for k in names}
    count = 0
    with _eval_mode(module):
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            with torch.no_grad():
                logits = _logits(bound, tensors, batch).float()
            n, classes = logits.shape
            probs = torch.softmax(logits, dim=-1)
            dims = _batch_dims(batch, n)
            m = chunk_size or max(1, min(n, _GRAD_BUDGET // max(n_params, 1)))
            y = None
            if not exact:
                y = torch.multinomial(probs.detach().cpu().double(), 1, generator=gen)
                y = y.squeeze(1).to(logits.device)
            for lo in range(0, n, m):
                hi = min(n, lo + m)
                sub = _map_batched(batch, dims, lambda t, lo=lo, hi=hi: t[lo:hi])
                if y is not None:
                    add(diff, sub, dims, y[lo:hi], None)
                    continue
                for c in range(classes):
                    yc = torch.full((hi - lo,), c, dtype=torch.long, device=logits.device)
                    add(diff, sub, dims, yc, probs[lo:hi, c])
            count += n
    if count == 0:
        raise ValueError("no batches: the Fisher is a mean over examples")
    out = {k: (acc[k] / count).to("cpu", torch.float32) for k in names}
    out |= {k: torch.zeros(tensors[k].shape) for k in order if k in buffers}
    return {k: out[tied[k]].clone() if k in tied else out[k] for k in order}


def _linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    """nn.Linear and transformers' Conv1D layers, by the state-dict name of
    their weight."""
    import sys

    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    kinds: tuple[type, ...] = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
    return {
        (f"{name}.weight" if name else "weight"): m
        for name, m in module.named_modules()
        if isinstance(m, kinds)
    }


def regmean_grams(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    forward: Forward | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Gram matrices of the inputs of every linear layer, for RegMean.

    For each ``nn.Linear`` (and transformers' ``Conv1D``) inside ``module``,
    G = XᵀX / N over every input row X the layer saw on the batches (all
    leading dimensions flattened: tokens count as rows, as in Jin et al.,
    "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR
    2023), accumulated in float64 and symmetrised.

    Parameters
    ----------
    module, batches, params, forward, max_batches
        As in :func:`fisher`; ``params`` swaps in other weights (a
        fine-tune's), whose layers' inputs are then recorded.

    Returns
    -------
    dict[str, torch.Tensor]
        in × in float32 CPU tensors keyed by the state-dict name of each
        layer's weight (``"encoder.fc.weight"``), for the layers that ran.

    Raises
    ------
    ValueError
        No linear layer in the module, or none ran on the batches.
    """
    layers = _linear_layers(module)
    if not layers:
        raise ValueError("the module has no nn.Linear (or Conv1D) layer")
    bound = _Bound(module, forward or default_forward)
    tensors = {} if params is None else _tensors(module, params)  # {}: the module's own
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(key: str) -> Callable[..., None]:
        def record(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            g = x.T @ x
            sums[key] = sums[key] + g if key in sums else g
            rows[key] = rows.get(key, 0) + x.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(k), with_kwargs=True) for k, m in layers.items()]
    try:
        with torch.no_grad(), _eval_mode(module):
            for b, batch in enumerate(batches):
                if max_batches is not None and b >= max_batches:
                    break
                functional_call(bound, _prefixed(tensors), (batch,))
    finally:
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    for key in layers:
        if key in sums and rows[key] > 0:
            g = sums[key] / rows[key]
            out[key] = ((g + g.T) / 2).to("cpu", torch.float32)
    if not out:
        raise ValueError("no linear layer ran on the batches (are there any batches?)")
    return out


def save(
    stats: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write statistics to a safetensors file, atomically.

    The tensors are stored as float32; the file is written beside ``path``
    under a temporary name, flushed to disk, then renamed over ``path``, so
    a reader never sees a partial file.

    Parameters
    ----------
    stats
        Name → tensor (from :func:`fisher` or :func:`regmean_grams`).
    path
        Destination file (conventionally ``*.safetensors``).
    metadata
        Extra string metadata for the header (``"npsfuse": "statistics"`` is
        always added).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in stats.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"statistics[{k!r}] is a {type(v).__name__}, not a tensor")
        t = v.detach().to("cpu", torch.float32).contiguous()
        storage = t.untyped_storage().data_ptr()
        if storage in seen or t.numel() * 4 != t.untyped_storage().nbytes():
            t = t.clone()  # safetensors refuses tensors that share memory
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    meta = {"npsfuse": "statistics", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read statistics written by :func:`save` (any safetensors file)."""
    from safetensors.torch import load_file

    return load_file(str(path))
