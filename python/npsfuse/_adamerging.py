"""``npsfuse.adamerging``: merging coefficients learned by entropy minimisation.

AdaMerging (Yang, Wang, Shen et al., "AdaMerging: Adaptive Model Merging for
Multi-Task Learning", ICLR 2024, §3.2–3.3) merges θ = θ₀ + Σ_t λ_t τ_t
(task-wise) or θ_l = θ₀,l + Σ_t λ_{t,l} τ_{t,l} per layer (layer-wise, the
stronger variant; a layer is one parameter tensor, as in the authors' code)
and learns λ by minimising the Shannon entropy of the merged model's
predictions on unlabelled inputs, a surrogate of the multi-task loss.

The optimisation runs in PyTorch (it needs autograd through the forward);
the final weights come from the Go engine: ``task_arithmetic`` with the
learned coefficients as weights (λ = 1, no normalisation), one call per group
of tensors sharing coefficients, so the result is bit for bit what
:func:`npsfuse.merge` gives with those coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ._state import ModelLike, StateDict, load_state_dict
from ._vocab import check_count
from .merging import MergeResult, _check_shapes, _split, merge
from .stats import Forward, _Bound, _eval_mode, _logits, default_forward

__all__ = ["adamerging"]


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the Shannon entropy of softmax(logits) (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def adamerging(
    base: ModelLike,
    models: Sequence[ModelLike],
    module: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Forward | None = None,
    granularity: str = "layer",
    steps: int = 100,
    lr: float = 1e-3,
    init: float = 0.3,
    seed: int = 0,
    progress: bool = True,
    batches_per_step: int | None = None,
    dtype: torch.dtype | None = None,
) -> MergeResult:
    """Learn task-wise or layer-wise merging coefficients on unlabelled data.

    Parameters
    ----------
    base
        The pre-trained model θ₀ (state dict, ``nn.Module`` or checkpoint path).
    models
        The fine-tuned models θ₁…θ_T, in the same forms.
    module
        The network the merged weights are evaluated in: every floating-point
        tensor of ``base`` must be in its state dict (same name and shape);
        its other tensors (for example per-task heads) are used as they are.
        It runs in eval mode (restored afterwards) and is not modified.
    batches
        Unlabelled inputs (held in memory for the whole run).
    forward
        ``forward(module, batch) -> logits`` of shape (N, C) (default:
        ``module(batch)``, see :func:`npsfuse.stats.default_forward`). To
        merge tasks with their own heads, let the batch carry the task and
        the forward pick the head.
    granularity
        ``"layer"`` (one coefficient per model and tensor) or ``"task"`` (one
        per model).
    steps
        Adam steps (the authors run 500 on eight vision tasks).
    lr
        Adam's learning rate (betas 0.9, 0.999; the authors' 1e-3).
    init
        Initial coefficient, the authors' prior 0.3.
    seed
        Seed of the batch order when ``batches_per_step`` is set.
    progress
        Show a progress bar (tqdm).
    batches_per_step
        Batches per step (default: all of them, every step); the batches are
        visited in a seeded random order, reshuffled after each pass.
    dtype
        Output dtype of the merged tensors (default: the base's).

    Returns
    -------
    MergeResult
        The merged state dict (integer buffers copied from the base) with
        ``report``: ``coefficients`` (a list of T floats, or tensor name →
        list of T floats for ``"layer"``), ``granularity``, ``entropy`` (the
        loss before each step), ``entropy_final`` (the loss at the learned
        coefficients, on every batch), ``steps``.

    Notes
    -----
    The loss of a step is the mean, over its batches, of the mean entropy
    of the merged model's predictions (the authors sum one batch per task;
    Adam is insensitive to the scale). As in the authors' code, the
    coefficients used are the raw parameters clamped to [0, 1] (gradients
    vanish outside), and the reported coefficients are the clamped values.
    The per-step merge runs in float32 on the module's device; the returned
    weights come from the Go engine.

    Raises
    ------
    ValueError
        Bad ``granularity``, ``steps``, ``lr`` or ``init``; no batches;
        tensors of the base that the module lacks or shapes that differ.
    """
    if granularity not in ("layer", "task"):
        raise ValueError(f"granularity must be 'layer' or 'task', got {granularity!r}")
    check_count("steps", steps, low=0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(init, (int, float)) and math.isfinite(init)):
        raise ValueError(f"init must be a finite number, got {init!r}")
    if batches_per_step is not None:
        check_count("batches_per_step", batches_per_step)
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
        raise ValueError("models must be a non-empty list of fine-tuned models")
    base_sd = load_state_dict(base, "base")
    model_sds = [load_state_dict(m, f"model {i}") for i, m in enumerate(models)]
    _check_shapes(base_sd, model_sds)
    names, _ = _split(base_sd, model_sds)
    if not names:
        raise ValueError("the models have no floating-point tensors to merge")
    own = module.state_dict()
    for k in names:
        if k not in own:
            raise ValueError(f"tensor {k!r} of the base is not in the module's state dict")
        if tuple(own[k].shape) != tuple(base_sd[k].shape):
            raise ValueError(
                f"tensor {k!r} has shape {tuple(base_sd[k].shape)} in the base but "
                f"{tuple(own[k].shape)} in the module"
            )
    data = list(batches)
    if not data:
        raise ValueError("no batches: AdaMerging minimises the entropy on unlabelled batches")

    T = len(model_sds)
    # θ₀ and the stacked task vectors (T, *shape), float32 on the module's device.
    theta0 = {k: base_sd[k].to(own[k].device, torch.float32) for k in names}
    taus = {
        k: torch.stack([sd[k].to(own[k].device, torch.float32) for sd in model_sds]) - theta0[k]
        for k in names
    }
    shape = (T,) if granularity == "task" else (len(names), T)
    raw = torch.full(shape, float(init), dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr, betas=(0.9, 0.999))
    bound = _Bound(module, forward or default_forward)

    def merged(coef: torch.Tensor) -> StateDict:
        out: StateDict = {}
        for i, k in enumerate(names):
            c = coef if granularity == "task" else coef[i]
            tv = torch.tensordot(c.to(taus[k].device), taus[k], dims=1)
            out[k] = (theta0[k] + tv).to(own[k].dtype)
        return out

    def loss(coef: torch.Tensor, chosen: Sequence[Any]) -> torch.Tensor:
        params = merged(coef)
        return torch.stack([_entropy(_logits(bound, params, b)) for b in chosen]).mean()

    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []

    def next_batches() -> list[Any]:
        if batches_per_step is None:
            return data
        chosen = []
        for _ in range(batches_per_step):
            if not order:
                order.extend(torch.randperm(len(data), generator=gen).tolist())
            chosen.append(data[order.pop(0)])
        return chosen

    from tqdm.auto import tqdm

    history: list[float] = []
    with _eval_mode(module), tqdm(total=steps, disable=not progress, desc="AdaMerging",
                                   unit="step", leave=True) as bar:
        for _ in range(steps):
            value = loss(raw.clamp(0.0, 1.0), next_batches())
            history.append(float(value.detach()))
            opt.zero_grad()
            value.backward()
            opt.step()
            bar.set_postfix(entropy=f"{history[-1]:.4g}")
            bar.update()
        coef = raw.detach().clamp(0.0, 1.0)
        with torch.no_grad():
            final = float(loss(coef, data))

    # The merged weights, from the engine: task arithmetic with the learned
    # coefficients (float32, passed exactly), one call per coefficient vector.
    groups: dict[tuple[float, ...], list[str]] = {}
    for i, k in enumerate(names):
        c = coef if granularity == "task" else coef[i]
        groups.setdefault(tuple(c.tolist()), []).append(k)
    out: StateDict = {}
    for weights, group in groups.items():
        res = merge({k: base_sd[k] for k in group}, [{k: sd[k] for k in group} for sd in model_sds],
                    "task_arithmetic", weights=list(weights), lam=1.0, normalize=False,
                    dtype=dtype)
        out.update(res)
    coefficients: Any = (
        coef.tolist() if granularity == "task"
        else {k: coef[i].tolist() for i, k in enumerate(names)}
    )
    report = {"coefficients": coefficients, "granularity": granularity, "entropy": history,
              "entropy_final": final, "steps": steps}
    return MergeResult({k: out[k] if k in out else base_sd[k] for k in base_sd}, report=report)
