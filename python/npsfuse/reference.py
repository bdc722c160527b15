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
from collections.abc import Collection, Mapping, Sequence

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

#: Methods that average a base not among the models in as one more model,
#: the last (mergekit's ``linear``), and merge without one (``base=None``).
BASE_AS_MODEL: frozenset[str] = frozenset({"linear"})


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
    # The rescale is mergekit's: one float32 factor per tensor and model,
    # Σ|τ| / Σ|τ̂| over the tensor (sums in float64), restoring the L1 norm.
    for m, tau in enumerate(taus):
        for k in names:
            if density >= 1:
                continue
            keep = dare_mask(seed, k, m, tau[k].size, density)
            tau[k] = l1_rescaled(tau[k], np.where(keep, tau[k], F32(0)).astype(F32))


def l1_rescaled(tau: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``kept`` times float32(Σ|tau|) / float32(Σ|kept|) (sums in float64),
    mergekit's L1 rescale; unchanged when either sum is below 1e-7."""
    before = F32(np.abs(tau.astype(np.float64)).sum())
    after = F32(np.abs(kept.astype(np.float64)).sum())
    if before < F32(1e-7) or after < F32(1e-7):
        return kept
    return (kept * F32(before / after)).astype(F32)


# ---------------------------------------------------------------- combine


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """The models' weights as float32 (default all 1)."""
    return np.asarray([1.0] * n if weights is None else list(weights), dtype=F32)


def _sum32(w: np.ndarray) -> np.float32:
    """Σ_t w_t in float32, accumulated in model order."""
    total = F32(0)
    for wt in w:
        total = F32(total + wt)
    return total


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
    base: Mapping[str, np.ndarray] | None,
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
        the global top-k ranks them in sorted name order. ``linear``
        (:data:`BASE_AS_MODEL`) averages a base that is not among ``models``
        (not the same object) in as model T+1; ``None`` for ``linear``
        only: the models alone, named and ordered as the first.
    models
        θ₁…θ_T with the same names and shapes.
    method
        ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``,
        ``dare_ties`` or ``magnitude_prune``.
    weights, density, lam, normalize, scope, seed
        As in ``npsfuse.merge`` (``normalize=None``: mergekit's default);
        with the base averaged in, T weights give it weight 1, T+1 give its
        weight last.

    Returns
    -------
    dict[str, numpy.ndarray]
        float32 arrays of the base's shapes, in the base's key order.
    """
    if method not in NORMALIZE_DEFAULT:
        raise ValueError(f"unknown method {method!r}")
    if base is None:
        if method not in BASE_AS_MODEL:
            raise ValueError(f"{method} needs a base")
        base = models[0]
    elif method in BASE_AS_MODEL and not any(m is base for m in models):
        models = [*models, base]
        if weights is not None and len(weights) == len(models) - 1:
            weights = [*weights, 1.0]
    names = list(base)
    w = _weights(weights, len(models))
    wsum = _sum32(w)
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


# --------------------------------------------------------- subspace merges
#
# TSV-Merge (Gargiulo et al., CVPR 2025) and Iso-C / Iso-CTS (Marczak et
# al., ICML 2025), written from the authors' algorithms with full float64
# SVDs (numpy.linalg.svd): the independent check of the Go engine's Gram
# matrix route. Each 2-D tensor is decomposed whole; the others get the mean
# of the weighted task vectors, in float32 exactly as for task arithmetic.

#: The methods :func:`merge_subspace` implements.
SUBSPACE_METHODS: tuple[str, ...] = ("iso_c", "iso_cts", "tsv")

#: Relative rank tolerance: σ ≤ RANK_TOL·max(m, n)·σ₁ counts as zero
#: (float32 machine epsilon, NumPy's ``matrix_rank`` rule for float32 data).
RANK_TOL = 2.0**-23


def _rank(s: np.ndarray, m: int, n: int) -> int:
    """Number of singular values above the rank tolerance."""
    if s.size == 0 or s[0] == 0:
        return 0
    return int(np.count_nonzero(s > RANK_TOL * max(m, n) * s[0]))


def polar(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polar factor Σ_{σ_i > tol} u_i v_iᵀ of ``a`` and all its singular values.

    Parameters
    ----------
    a
        An m×n float64 matrix.

    Returns
    -------
    tuple
        ``(P, s)``: the m×n partial isometry over the numerically nonzero
        singular triplets (U·Vᵀ for a full-rank ``a``; zero for ``a = 0``) and
        the min(m, n) singular values, descending.
    """
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    k = _rank(s, *a.shape)
    return u[:, :k] @ vt[:k], s


def truncated_svd(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` singular triplets of ``a``; pairs below the rank
    tolerance are returned as zero vectors with σ = 0.

    Returns
    -------
    tuple
        ``(U, s, Vt)`` of shapes (m, k), (k,), (k, n).
    """
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    k = min(k, s.size)
    keep = min(k, _rank(s, *a.shape))
    u, s, vt = u[:, :k].copy(), s[:k].copy(), vt[:k].copy()
    u[:, keep:], s[keep:], vt[keep:] = 0, 0, 0
    return u, s, vt


def _joined(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Several SVDs' ``(U, s, Vt)`` side by side: U by columns, s and Vt by rows."""
    return tuple(np.concatenate([p[i] for p in parts], axis=a) for i, a in enumerate((1, 0, 0)))


def iso_c_delta(total: np.ndarray) -> np.ndarray:
    """Iso-C: σ̄·U·Vᵀ for Δ_TA = U·Σ·Vᵀ, σ̄ the mean of all its singular values."""
    p, s = polar(total)
    return s.mean() * p


def iso_cts_sizes(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """Iso-CTS's (common size, per-task size), rounded as the authors' code does:
    k₀ = int(r·f), s = round((r − k₀)/T) (half to even), capped at r // T;
    common = r − T·s."""
    k0 = int(r * fraction)
    per = min(round((r - k0) / n_tasks), r // n_tasks)
    return r - n_tasks * per, per


def iso_cts_delta(total: np.ndarray, tasks: Sequence[np.ndarray], fraction: float) -> np.ndarray:
    """Iso-CTS: common subspace of Δ_TA plus each task's top directions
    outside it, both sides orthogonalised, spectrum flattened to its mean."""
    r = min(total.shape)
    common, per = iso_cts_sizes(r, len(tasks), fraction)
    if per == 0:
        return iso_c_delta(total)
    uc, sc, vc = truncated_svd(total, common)
    parts = [truncated_svd(tau - uc @ (uc.T @ tau), per) for tau in tasks]
    u_all, s_all, v_all = _joined([*parts, (uc, sc, vc)])
    return s_all.mean() * (polar(u_all)[0] @ polar(v_all)[0])


def tsv_delta(tasks: Sequence[np.ndarray]) -> np.ndarray:
    """TSV-M: each task's top ⌊r/T⌋ singular triplets, U and V concatenated
    and replaced by their polar factors, Δ = U⊥·S·V⊥ᵀ."""
    m, n = tasks[0].shape
    k = min(m, n) // len(tasks)
    if k == 0:
        return np.zeros((m, n))
    u, s, v = _joined([truncated_svd(t, k) for t in tasks])
    return polar(u)[0] @ np.diag(s) @ polar(v)[0]


def merge_subspace(
    base: Mapping[str, np.ndarray],
    models: Sequence[Mapping[str, np.ndarray]],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    common_space_fraction: float = 0.8,
    transposed: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """``tsv``, ``iso_c`` or ``iso_cts`` on float32 arrays.

    Task vectors are τ_t = θ_t − θ₀ in float32, scaled by their weights w_t
    (in float64 for the 2-D tensors). 2-D tensors get θ₀ + λ·Δ with Δ from
    :func:`tsv_delta`, :func:`iso_c_delta` or :func:`iso_cts_delta` in
    float64, computed in the (out, in) layout: the tensors named in
    ``transposed`` (stored (in, out)) are transposed first and back after —
    TSV and Iso-C do not depend on it, Iso-CTS does (it removes the common
    subspace on the output side). The other tensors get
    θ₀ + λ·(Σ_t w_t τ_t)/T in float32, summed in model order.

    Returns
    -------
    dict[str, numpy.ndarray]
        float32 arrays of the base's shapes, in the base's key order.
    """
    if method not in SUBSPACE_METHODS:
        raise ValueError(f"unknown method {method!r}")
    n_tasks = len(models)
    w = _weights(weights, n_tasks)
    lam32 = F32(lam)
    out: dict[str, np.ndarray] = {}
    for k in base:
        b = np.asarray(base[k], dtype=F32)
        taus = [(np.asarray(sd[k], dtype=F32) - b).astype(F32) for sd in models]
        if b.ndim == 2 and b.size > 0:
            flip = k in transposed
            tasks = [float(wt) * (t.T if flip else t).astype(np.float64)
                     for wt, t in zip(w, taus, strict=True)]
            total = np.sum(tasks, axis=0)
            if method == "iso_c":
                d = iso_c_delta(total)
            elif method == "iso_cts":
                d = iso_cts_delta(total, tasks, common_space_fraction)
            else:
                d = tsv_delta(tasks)
            out[k] = (b + lam32 * (d.T if flip else d).astype(F32)).astype(F32)
        else:
            s = weighted_sum(w, [t.ravel() for t in taus])
            r = (b.ravel() + lam32 * (s / F32(n_tasks)).astype(F32)).astype(F32)
            out[k] = r.reshape(b.shape)
    return out


# ------------------------------------------------------- data-aware merges


def _weighted_mean_tv(
    w: np.ndarray, b: np.ndarray, taus: Sequence[np.ndarray], lam: float
) -> np.ndarray:
    """θ₀ + λ·Σ_t w_t τ_t / Σ_t w_t, rounded like task_arithmetic with normalize."""
    scale = F32(F32(lam) / _sum32(w))
    return (b + scale * weighted_sum(w, taus)).astype(F32)


def fisher_merge(
    base: Mapping[str, np.ndarray],
    models: Sequence[Mapping[str, np.ndarray]],
    fishers: Sequence[Mapping[str, np.ndarray]],
    *,
    weights: Sequence[float] | None = None,
    fisher_floor: float = 1e-6,
    lam: float = 1.0,
) -> dict[str, np.ndarray]:
    """Fisher merging (Matena & Raffel 2022, eq. 3) in task-vector form.

    Per entry, in float32 and model order: F̃_t = max(F_t, fisher_floor),
    θ₀ + λ·(Σ_t w_t F̃_t τ_t) / (Σ_t w_t F̃_t); a tensor without Fisher
    values is θ₀ + λ·Σ_t w_t τ_t / Σ_t w_t.
    """
    w = _weights(weights, len(models))
    floor = F32(fisher_floor)
    out: dict[str, np.ndarray] = {}
    for k in base:
        b = np.asarray(base[k], dtype=F32)
        taus = [(np.asarray(sd[k], dtype=F32) - b).astype(F32) for sd in models]
        if k not in fishers[0]:
            out[k] = _weighted_mean_tv(w, b, taus, lam)
            continue
        num = np.zeros_like(b)
        den = np.zeros_like(b)
        for wt, tau, fs in zip(w, taus, fishers, strict=True):
            wf = (wt * np.maximum(np.asarray(fs[k], dtype=F32), floor)).astype(F32)
            num = (num + (wf * tau).astype(F32)).astype(F32)
            den = (den + wf).astype(F32)
        out[k] = (b + (F32(lam) * (num / den).astype(F32)).astype(F32)).astype(F32)
    return out


def regmean_merge(
    base: Mapping[str, np.ndarray],
    models: Sequence[Mapping[str, np.ndarray]],
    grams: Sequence[Mapping[str, np.ndarray]],
    *,
    weights: Sequence[float] | None = None,
    alpha: float = 0.9,
    lam: float = 1.0,
    transposed: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """RegMean (Jin et al. 2023, eq. 2) in task-vector form, solved in float64.

    For a weight W (out×in; stored (in, out) when named in ``transposed``)
    with Gram matrices G_t: G̃_t = α·sym(G_t) + (1−α)·diag(G_t),
    Δᵀ = (Σ_t w_t G̃_t)⁻¹ Σ_t w_t G̃_t τ_tᵀ, result W₀ + λ·Δ rounded to
    float32. Every other tensor: θ₀ + λ·Σ_t w_t τ_t / Σ_t w_t (float32).
    """
    w = _weights(weights, len(models))
    out: dict[str, np.ndarray] = {}
    for k in base:
        b = np.asarray(base[k], dtype=F32)
        if k not in grams[0]:
            taus = [(np.asarray(sd[k], dtype=F32) - b).astype(F32) for sd in models]
            out[k] = _weighted_mean_tv(w, b, taus, lam)
            continue
        tr = k in transposed
        w0 = (b.T if tr else b).astype(np.float64)
        n_in = w0.shape[1]
        a = np.zeros((n_in, n_in))
        rhs = np.zeros((n_in, w0.shape[0]))
        for wt, sd, gs in zip(w, models, grams, strict=True):
            g = np.asarray(gs[k], dtype=np.float64)
            g = (g + g.T) / 2
            gt = alpha * g + (1.0 - alpha) * np.diag(np.diag(g))
            tau = np.asarray(sd[k], dtype=np.float64)
            tau = (tau.T if tr else tau) - w0
            a += float(wt) * gt
            rhs += float(wt) * gt @ tau.T
        delta = np.linalg.solve(a, rhs).T
        r = (w0 + lam * delta).astype(F32)
        out[k] = r.T.copy() if tr else r
    return out
