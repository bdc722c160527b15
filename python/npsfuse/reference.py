"""A slow, independent NumPy reference of npsfuse's merge methods.

Written from the team's method definitions (METHODS.md: "Merging" and the
preamble on top-k and seeds), not from the Go code: every function here
works on flat float32 NumPy arrays, one operation at a time, so that the
tests and ``make demo`` can compare the Go engine with it entry by entry.
It is for checking, not for use: it is orders of magnitude slower.

Conventions reproduced
----------------------
* Arithmetic is float32; task vectors are τ_t = θ_t − θ₀ in float32.
* Weighted sums accumulate in model order: ((w₁x₁ + w₂x₂) + w₃x₃) …, which
  makes TIES' sign election bit-exact even where the sum is tiny.
* Top-k keeps exactly ⌊density·n⌋ entries of largest |τ|, ties broken by
  lower index; ``scope="global"`` ranks the concatenation of all tensors in
  the order of their names (sorted), as ``npsfuse.merge`` and ``npsfuse merge`` do.
* TIES elects γ = sign(Σ w_t τ̂_t), with γ = +1 where the sum is 0; the
  agreeing set is A = {t : w_t τ̂_t ≠ 0, sign(w_t τ̂_t) = γ} (for positive
  weights this is METHODS.md's sign τ̂_t = γ).
* DARE keeps entry i of tensor ``name`` of model m when
  ``uniform(key(seed, name, m), i) < float32(density)``, with the
  counter-based generator below (SplitMix64 finaliser, FNV-1a 64 of the
  UTF-8 name), computed in NumPy uint64 arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

F32 = np.float32
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)

#: mergekit's ``normalize`` default per method (what ``normalize=None`` means).
NORMALIZE_DEFAULT: dict[str, bool] = {
    "linear": True,
    "task_arithmetic": False,
    "ties": True,
    "dare_linear": False,
    "dare_ties": False,
    "magnitude_prune": False,
}

METHODS: tuple[str, ...] = tuple(sorted(NORMALIZE_DEFAULT))


# --------------------------------------------------------------------- RNG


def mix(z: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea, Flood 2014), elementwise on uint64.

    Parameters
    ----------
    z
        uint64 scalar or array.

    Returns
    -------
    numpy.ndarray
        The mixed values, same shape, dtype uint64 (wrapping arithmetic).
    """
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fnv1a64(name: str) -> np.uint64:
    """64-bit FNV-1a hash of the UTF-8 bytes of ``name``."""
    h = FNV_OFFSET
    with np.errstate(over="ignore"):
        for byte in name.encode("utf-8"):
            h = np.uint64(h ^ np.uint64(byte)) * FNV_PRIME
    return np.uint64(h)


def stream_key(seed: int, name: str, model: int) -> np.uint64:
    """Key(seed, name, m) = mix(mix(seed ^ FNV1a64(name)) + m)."""
    inner = mix(np.uint64(seed) ^ fnv1a64(name))
    with np.errstate(over="ignore"):
        return np.uint64(mix(inner + np.uint64(model)))


def uniform(key: np.uint64, n: int) -> np.ndarray:
    """Elements 0…n−1 of stream ``key`` as float32 in [0, 1).

    Uniform(k, i) = (mix(k + (i+1)·0x9E3779B97F4A7C15) >> 40) · 2⁻²⁴.
    """
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = mix(np.uint64(key) + (i + np.uint64(1)) * GOLDEN)
    return (bits >> np.uint64(40)).astype(F32) * F32(2.0**-24)


def dare_mask(seed: int, name: str, model: int, n: int, density: float) -> np.ndarray:
    """DARE's Bernoulli(density) keep mask for one tensor of one model."""
    return uniform(stream_key(seed, name, model), n) < F32(density)


# ------------------------------------------------------------------ top-k


def topk_mask(values: np.ndarray, density: float) -> np.ndarray:
    """Mask of the ⌊density·n⌋ entries of largest |value|, ties by lower index."""
    mag = np.abs(values.astype(F32, copy=False))
    n = mag.size
    k = math.floor(density * n)
    mask = np.zeros(n, dtype=bool)
    if k > 0:
        order = np.argsort(-mag, kind="stable")
        mask[order[:k]] = True
    return mask


def _sparsify_topk(
    taus: list[dict[str, np.ndarray]], names: Sequence[str], density: float, scope: str
) -> None:
    for tau in taus:
        if scope == "global":
            ranked = sorted(names)  # tensors in name order, as npsfuse.merge
            flat = np.concatenate([tau[k] for k in ranked]) if names else np.zeros(0, F32)
            mask = topk_mask(flat, density)
            off = 0
            for k in ranked:
                n = tau[k].size
                tau[k] = np.where(mask[off : off + n], tau[k], F32(0))
                off += n
        else:
            for k in names:
                tau[k] = np.where(topk_mask(tau[k], density), tau[k], F32(0))


def _sparsify_dare(
    taus: list[dict[str, np.ndarray]], names: Sequence[str], density: float, seed: int
) -> None:
    # The rescale multiplies by the float32 number 1/density (rather than
    # dividing by density): a shared factor keeps exact cancellations exact,
    # e.g. τ = (−a, −b, a+b) on a bf16 grid still sums to 0 after rescaling,
    # so the TIES election after DARE does not hinge on a last-bit rounding.
    scale = F32(1) / F32(density)
    for m, tau in enumerate(taus):
        for k in names:
            keep = dare_mask(seed, k, m, tau[k].size, density)
            tau[k] = np.where(keep, tau[k] * scale, F32(0)).astype(F32)


# ---------------------------------------------------------------- combine


def weighted_sum(w: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray:
    """Σ_t w_t x_t in float32, accumulated in model order."""
    acc = np.zeros_like(xs[0], dtype=F32)
    for wt, x in zip(w, xs, strict=True):
        acc = (acc + F32(wt) * x).astype(F32)
    return acc


def disjoint_mean(w: np.ndarray, taus: Sequence[np.ndarray], normalize: bool) -> np.ndarray:
    """TIES elect and disjoint mean over (already trimmed) task vectors.

    γ = sign(Σ w_t τ_t) (+1 where the sum is 0); A = {t : w_t τ_t ≠ 0 with
    sign γ}; result Σ_A w_t τ_t / Σ_A w_t (or just Σ_A w_t τ_t when not
    normalising, or when Σ_A w_t = 0 as in mergekit), 0 where A is empty.
    """
    gamma = np.where(weighted_sum(w, taus) >= 0, F32(1), F32(-1))
    num = np.zeros_like(taus[0], dtype=F32)
    den = np.zeros_like(taus[0], dtype=F32)
    count = np.zeros(taus[0].shape, dtype=np.int64)
    for wt, tau in zip(w, taus, strict=True):
        v = (F32(wt) * tau).astype(F32)
        agree = (v != 0) & (np.sign(v) == gamma)
        num = np.where(agree, num + v, num).astype(F32)
        den = np.where(agree, den + F32(wt), den).astype(F32)
        count += agree
    if not normalize:
        return np.where(count > 0, num, F32(0)).astype(F32)
    # mergekit divides by 1 where the agreeing weights sum to 0 (only
    # possible with weights of both signs); METHODS.md leaves it undefined.
    safe = np.where((count > 0) & (den != 0), den, F32(1))
    return np.where(count > 0, num / safe, F32(0)).astype(F32)


# ------------------------------------------------------------------ merge


def merge(
    base: Mapping[str, np.ndarray],
    models: Sequence[Mapping[str, np.ndarray]],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    lam: float = 1.0,
    normalize: bool | None = None,
    scope: str = "tensor",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Merge float32 arrays by one of METHODS.md's merge methods.

    Parameters
    ----------
    base
        θ₀: name → array (any shape). Only floating-point tensors belong here;
        the global top-k ranks them in sorted name order.
    models
        θ₁…θ_T with the same names and shapes.
    method
        ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``,
        ``dare_ties`` or ``magnitude_prune``.
    weights, density, lam, normalize, scope, seed
        As in ``npsfuse.merge`` (``normalize=None``: mergekit's default).

    Returns
    -------
    dict[str, numpy.ndarray]
        float32 arrays of the base's shapes, in the base's key order.
    """
    if method not in NORMALIZE_DEFAULT:
        raise ValueError(f"unknown method {method!r}")
    names = list(base)
    T = len(models)
    w = np.asarray([1.0] * T if weights is None else list(weights), dtype=F32)
    wsum = F32(0)
    for wt in w:
        wsum = F32(wsum + wt)
    norm = NORMALIZE_DEFAULT[method] if normalize is None else bool(normalize)
    lam32 = F32(lam)

    b = {k: np.asarray(base[k], dtype=F32).ravel() for k in names}
    th = [{k: np.asarray(sd[k], dtype=F32).ravel() for k in names} for sd in models]
    taus = [{k: (sd[k] - b[k]).astype(F32) for k in names} for sd in th]

    if method in ("ties", "magnitude_prune"):
        _sparsify_topk(taus, names, density, scope)
    elif method in ("dare_linear", "dare_ties"):
        _sparsify_dare(taus, names, density, seed)

    out: dict[str, np.ndarray] = {}
    for k in names:
        shape = np.shape(base[k])
        if method == "linear":
            r = weighted_sum(w, [sd[k] for sd in th])
            if norm:
                r = (r / wsum).astype(F32)
        elif method in ("ties", "dare_ties"):
            r = (b[k] + lam32 * disjoint_mean(w, [t[k] for t in taus], norm)).astype(F32)
        else:  # task_arithmetic, dare_linear, magnitude_prune
            s = weighted_sum(w, [t[k] for t in taus])
            if norm:
                s = (s / wsum).astype(F32)
            r = (b[k] + lam32 * s).astype(F32)
        out[k] = r.reshape(shape)
    return out
