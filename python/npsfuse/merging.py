"""``npsfuse.merge`` and ``npsfuse.task_vector``: the in-memory merge API.

All arithmetic runs in the Go engine (``gocore/merge``) in float32, parallel
over cores and reproducible bit for bit per seed whatever the thread count.
Tensors cross to Go without copies (see :mod:`npsfuse._bridge`); results are
written by Go straight into tensors allocated here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from . import _core
from ._bridge import SUPPORTED, ArrowPack, check_tensor
from ._state import ModelLike, StateDict, load_state_dict

#: mergekit's default for ``normalize`` per method (``normalize=None``).
DEFAULT_NORMALIZE: dict[str, bool] = {
    "linear": True,
    "task_arithmetic": False,
    "ties": True,
    "dare_ties": False,
    "dare_linear": False,
    "magnitude_prune": False,
}

#: Methods whose ``density`` must lie in (0, 1].
USES_DENSITY = frozenset({"ties", "dare_ties", "dare_linear", "magnitude_prune"})


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
    valid = methods()
    if method not in valid:
        raise ValueError(f"unknown merge method {method!r}; valid methods: {', '.join(valid)}")


def _check_shapes(base: StateDict, models: Sequence[StateDict]) -> None:
    for i, sd in enumerate(models):
        missing = [k for k in base if k not in sd]
        if missing:
            raise ValueError(
                f"tensor {missing[0]!r} is missing from model {i}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        extra = [k for k in sd if k not in base]
        if extra:
            raise ValueError(f"model {i} has tensor {extra[0]!r}, which the base model lacks")
        for k, b in base.items():
            if tuple(sd[k].shape) != tuple(b.shape):
                raise ValueError(
                    f"tensor {k!r} has shape {tuple(sd[k].shape)} in model {i} "
                    f"but {tuple(b.shape)} in the base model"
                )


def _is_buffer(t: torch.Tensor) -> bool:
    """Integer and boolean tensors (position ids, masks) are copied, not merged."""
    return not (t.is_floating_point() or t.is_complex())


def _split(
    base: StateDict, models: Sequence[StateDict]
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Names to merge, and integer/bool buffers taken from the base unchanged."""
    names: list[str] = []
    copied: dict[str, torch.Tensor] = {}
    for k, b in base.items():
        if _is_buffer(b):
            for i, sd in enumerate(models):
                if not torch.equal(sd[k], b):
                    raise TypeError(
                        f"tensor {k!r} has dtype {b.dtype} and differs between the base and "
                        f"model {i}; only floating-point tensors can be merged"
                    )
            copied[k] = b
        else:
            names.append(k)
    return names, copied


def _run(
    method: str,
    params: dict[str, Any],
    names: Sequence[str],
    base: StateDict,
    models: Sequence[StateDict],
    dtype: torch.dtype | None,
) -> StateDict:
    """Pack inputs and freshly allocated outputs, and run one Go merge call."""
    if dtype is not None and dtype not in SUPPORTED:
        raise TypeError(f"dtype {dtype} is not supported; use one of {list(SUPPORTED)}")
    items: list[tuple[str, torch.Tensor]] = []
    outs: StateDict = {}
    for k in names:
        b = check_tensor(k, base[k])
        items.append((k, b))
        for i, sd in enumerate(models):
            items.append((f"{k} (model {i})", check_tensor(k, sd[k])))
        out = torch.empty(b.shape, dtype=dtype or b.dtype)
        outs[k] = out
        items.append((f"{k} (output)", out))
    pack = ArrowPack(items)
    _core.call(
        _core.go.Merge,
        method,
        json.dumps(params),
        len(names),
        len(models),
        pack.arrays,
        pack.schemas,
    )
    return outs


def merge(
    base: ModelLike,
    models: Sequence[ModelLike],
    method: str = "ties",
    *,
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    lam: float = 1.0,
    normalize: bool | None = None,
    scope: str = "tensor",
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **params: Any,
) -> StateDict:
    """Merge fine-tuned models that share one pre-trained base.

    Parameters
    ----------
    base
        The pre-trained model θ₀: a state dict, an ``nn.Module``, or the path of
        a safetensors checkpoint (Hugging Face folder or single file).
    models
        The fine-tuned models θ₁…θ_T, in the same forms.
    method
        One of :func:`methods` (``linear``, ``task_arithmetic``, ``ties``,
        ``dare_linear``, ``dare_ties``, ``magnitude_prune``, ...).
    weights
        Per-model weights w_t (default all 1).
    density
        Fraction of task-vector entries kept by top-k (TIES, magnitude_prune)
        or by DARE's random drop; in (0, 1].
    lam
        λ, the scale of the merged task vector.
    normalize
        Divide by the sum of weights (of the agreeing models for TIES). ``None``
        takes mergekit's default for the method (True for ``linear`` and
        ``ties``, False otherwise), so a mergekit user's numbers carry over.
    scope
        ``"tensor"`` ranks top-k per tensor; ``"global"`` over the whole model.
    seed
        Seed of DARE's random drop; the draw for an entry depends only on
        (seed, tensor name, model index, entry index).
    dtype
        Output dtype (default: each tensor's base dtype). Arithmetic is float32.

    Returns
    -------
    dict[str, torch.Tensor]
        The merged state dict, in the base's key order. Integer and boolean
        buffers are copied from the base (they must agree across models).

    Raises
    ------
    ValueError
        Unknown method, density outside (0, 1], wrong number of weights, a
        tensor missing from a model or of another shape, NaN/Inf in an input.
    TypeError
        A tensor on a non-CPU device or of an unsupported dtype.

    Notes
    -----
    Non-contiguous tensors are made contiguous once before the call; all
    others are read in place. The Go engine releases the GIL while it works.
    """
    _check_method(method)
    if params:
        raise ValueError(f"unknown parameter(s) for {method!r}: {', '.join(sorted(params))}")
    if method in USES_DENSITY and not (0.0 < density <= 1.0):
        raise ValueError(f"density must lie in (0, 1], got {density}")
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
        raise ValueError("models must be a non-empty list of fine-tuned models")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"{len(weights)} weights given for {len(models)} models")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite, got {weights}")
    if scope not in ("tensor", "global"):
        raise ValueError(f"scope must be 'tensor' or 'global', got {scope!r}")
    base_sd = load_state_dict(base, "base")
    model_sds = [load_state_dict(m, f"model {i}") for i, m in enumerate(models)]
    _check_shapes(base_sd, model_sds)
    names, copied = _split(base_sd, model_sds)
    go_params = {
        "weights": weights,
        "density": float(density),
        "lambda": float(lam),
        "normalize": DEFAULT_NORMALIZE.get(method, True) if normalize is None else bool(normalize),
        "scope": scope,
        "seed": int(seed),
    }
    merged = _run(method, go_params, names, base_sd, model_sds, dtype) if names else {}
    return {k: merged[k] if k in merged else copied[k] for k in base_sd}


def task_vector(
    base: ModelLike, finetuned: ModelLike, *, dtype: torch.dtype | None = None
) -> StateDict:
    """τ = θ_ft − θ_pre for every floating-point tensor.

    Parameters
    ----------
    base, finetuned
        State dicts, modules or safetensors checkpoints (see :func:`merge`).
    dtype
        Output dtype (default: the base tensor's dtype); the difference is
        computed in float32.

    Returns
    -------
    dict[str, torch.Tensor]
        One entry per floating-point tensor; integer/bool buffers are left out.
    """
    base_sd = load_state_dict(base, "base")
    ft_sd = load_state_dict(finetuned, "finetuned")
    _check_shapes(base_sd, [ft_sd])
    names = [k for k, t in base_sd.items() if not _is_buffer(t)]
    params = {"weights": [1.0, -1.0], "density": 1.0, "lambda": 1.0, "normalize": False,
              "scope": "tensor", "seed": 0}
    # linear with weights (1, −1) over (θ_ft, θ_pre) is exactly θ_ft − θ_pre.
    return _run("linear", params, names, base_sd, [ft_sd, base_sd], dtype) if names else {}
