"""Independent NumPy reference of npsfuse's second group of merge methods.

Written from ``/work/shared/METHODS.md`` ("Merging", "NeuroMerging") and the
papers' reference code, not from the Go engine: ``breadcrumbs``,
``breadcrumbs_ties``, ``della``, ``della_linear``, ``consensus_ta``,
``consensus_ties``, ``model_stock``, ``slerp``, ``pcb`` and ``neuro``. The
shared building blocks (top-k mask, DARE's random stream, weighted sum, TIES'
disjoint mean) come from :mod:`reference`.

Conventions beyond :mod:`reference`'s
-------------------------------------
* A *row* (neuron) is a row of the tensor in PyTorch (out, in) layout: 2-D
  tensors flagged ``transposed`` are transposed first, conv kernels are
  reshaped to (out, in·kh·kw), 1-D tensors are one row. DELLA's random draw
  for an entry uses its flat index in that layout.
* DELLA: in a row of n entries, ascending rank r (ties by lower index) keeps
  the entry with probability p = f32(density − ε) + f32(r/(n−1))·f32(2ε)
  (n = 1: r/(n−1) := 0.5); the kept entries are rescaled by one factor per
  tensor and model restoring the L1 norm (mergekit's rescale, its default).
* Breadcrumbs: keep the ranks [g, g+k) from the top, k = ⌊density·n⌋,
  g = min(⌊γ·n⌋, n − k) (mergekit's magnitude_outliers counts).
* PCB: the authors' ``PCB_merge`` with quantile positions ⌊d·q⌋,
  ⌊d·(1−q) − 1⌋ (q = 1e-4) and ⌊d·(1 − density)⌋ of the ascending sort.
* NeuroMerging, per neuron: the explicit SVD of the T × n block of
  orthogonal parts (float64); TIES over scalars elects sign(Σ w_t x_t), takes
  the w-weighted mean of the agreeing nonzero x_t, and gives 0 when
  |Σ w_t x_t| ≤ 1e-9·Σ|w_t x_t|; a coordinate of at most 1e-10 times its
  singular value counts as zero (a task whose orthogonal part vanishes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from reference import disjoint_mean, l1_rescaled, stream_key, topk_mask, uniform, weighted_sum

F32 = np.float32

#: mergekit's ``normalize`` default per method (``normalize=None``).
NORMALIZE_DEFAULT: dict[str, bool] = {
    "breadcrumbs": False,
    "breadcrumbs_ties": False,
    "della": True,
    "della_linear": False,
    "consensus_ta": False,
    "consensus_ties": True,
    "model_stock": False,
    "slerp": False,
    "pcb": False,
    "neuro": False,
}

METHODS: tuple[str, ...] = tuple(sorted(NORMALIZE_DEFAULT))

PCB_Q = 1e-4
TIE_TOL = 1e-9
COORD_FLOOR = 1e-10


# ------------------------------------------------------------------ layout


def to_rows(x: np.ndarray, transposed: bool) -> np.ndarray:
    """``x`` as (rows, cols) in neuron layout (a copy for transposed tensors)."""
    if x.ndim < 2:
        return x.reshape(1, -1)
    if transposed and x.ndim == 2:
        return np.ascontiguousarray(x.T)
    return x.reshape(x.shape[0], -1)


def from_rows(r: np.ndarray, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    """Inverse of :func:`to_rows`."""
    if len(shape) == 2 and transposed:
        return np.ascontiguousarray(r.T)
    return r.reshape(shape)


# ----------------------------------------------------------- sparsifiers


def band_mask(values: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Breadcrumbs' mask: ranks [g, g+k) from the top by |value|."""
    n = values.size
    if density >= 1:
        return np.ones(n, dtype=bool)
    k = math.floor(density * n)
    g = min(math.floor(gamma * n), n - k)
    order = np.argsort(-np.abs(values), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[g : g + k]] = True
    return mask


def della_rows(
    rows: np.ndarray, density: float, eps: float, seed: int, name: str, model: int
) -> np.ndarray:
    """DELLA's magprune of a (rows, cols) task vector in neuron layout."""
    if density >= 1:
        return rows
    n_rows, cols = rows.shape
    u = uniform(stream_key(seed, name, model), rows.size).reshape(n_rows, cols)
    ranks = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable")
    if cols > 1:
        rn = ranks.astype(F32) / F32(cols - 1)
    else:
        rn = np.full(rows.shape, F32(0.5))
    p = (F32(density - eps) + (rn * (F32(2) * F32(eps))).astype(F32)).astype(F32)
    return l1_rescaled(rows, np.where(u < p, rows, F32(0)).astype(F32))


# ---------------------------------------------------------- neuro / TIES


def ties_scalars(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """TIES over axis 0 of float64 ``x`` (T, m) with weights ``w`` (T,)."""
    y = w[:, None].astype(np.float64) * x
    s = y.sum(axis=0)
    a = np.abs(y).sum(axis=0)
    pos = s > 0
    agree = np.where(pos, y > 0, y < 0)
    num = (y * agree).sum(axis=0)
    den = (w[:, None] * agree).sum(axis=0)
    ok = (np.abs(s) > TIE_TOL * a) & (den != 0)
    return np.where(ok, num / np.where(den == 0, 1, den), 0.0)


def neuro_rows(
    w0: np.ndarray, taus: Sequence[np.ndarray], wts: np.ndarray, lam1: float, lam2: float
) -> np.ndarray:
    """NeuroMerging of the neurons (rows) of one tensor, by an explicit SVD
    of each neuron's T × n block of orthogonal parts. float64 in and out."""
    T = len(taus)
    out = np.empty_like(w0)
    for i in range(w0.shape[0]):
        w = w0[i]
        X = np.stack([t[i] for t in taus])  # (T, n)
        ww = float(w @ w)
        if math.sqrt(ww) < 1e-12:
            s = np.zeros(T)
            orth = X
        else:
            s = X @ w / ww
            orth = X - s[:, None] * w[None, :]
        sbar = float(ties_scalars(s[:, None], wts)[0])
        _, sv, vh = np.linalg.svd(orth, full_matrices=False)
        C = orth @ vh.T  # (T, r) coordinates
        C[np.abs(C) <= COORD_FLOOR * sv[None, :]] = 0
        cbar = ties_scalars(C, wts)
        d_perp = vh.T @ cbar
        out[i] = w + lam1 * sbar * w + lam2 * d_perp
    return out


# ------------------------------------------------------------------- PCB


def pcb_unit(
    taus: Sequence[np.ndarray], density: Sequence[float], wts: np.ndarray
) -> np.ndarray:
    """PCB over one selection unit: ``taus`` are flat float32 task vectors;
    returns τ_m (float32, flat)."""
    T = len(taus)
    d = taus[0].size
    X = np.stack(taus).astype(F32)  # (T, d)
    srt = np.sort(np.abs(X), axis=1)
    lo = srt[:, int(d * PCB_Q)][:, None]
    hi = srt[:, int(d * (1 - PCB_Q) - 1)][:, None]
    ca = np.clip(np.abs(X), lo, hi).astype(F32)
    rng_ = (hi - lo).astype(F32)
    x = np.where(rng_ > 0, (ca - lo) / np.where(rng_ > 0, rng_, F32(1)), F32(0)).astype(F32)
    S = weighted_sum(np.ones(T, dtype=F32), list(X))
    intra = np.exp(F32(T) * (x * x).astype(F32)).astype(F32)
    inter = np.tanh((X * S[None, :]).astype(F32)).astype(F32)
    beta = (intra * inter).astype(F32)
    scale = np.zeros_like(beta)
    for t in range(T):
        b = beta[t]
        cut = np.sort(b)[int(d * (1 - density[t]))]
        bmax = b.max()
        if bmax > cut:
            scale[t] = ((np.maximum(b, cut) - cut) / (bmax - cut)).astype(F32)
    clipped = (np.sign(X) * ca).astype(F32)
    num = np.zeros(d, dtype=F32)
    den = np.zeros(d, dtype=F32)
    for t in range(T):
        num = (num + F32(wts[t]) * (scale[t] * clipped[t]).astype(F32)).astype(F32)
        den = (den + scale[t]).astype(F32)
    return (num / np.maximum(den, F32(1e-12))).astype(F32)


# ------------------------------------------------------------------ merge


def merge(
    base: Mapping[str, np.ndarray],
    models: Sequence[Mapping[str, np.ndarray]],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    density: float | Sequence[float] = 0.2,
    lam: float = 1.0,
    normalize: bool | None = None,
    scope: str | None = None,
    seed: int = 0,
    transposed: Sequence[str] = (),
    gamma: float = 0.01,
    epsilon: float = 0.15,
    k: int = 2,
    tall_lambda: float | Sequence[float] = 0.4,
    t: float = 0.5,
    mask_rate: float = 0.5,
    lam1: float = 0.0,
    lam2: float | None = None,
    report: dict | None = None,
) -> dict[str, np.ndarray]:
    """Merge float32 arrays by one of this module's :data:`METHODS`.

    Parameters are those of ``npsfuse.merge`` (``density`` may be one value
    per model; ``transposed`` lists exact tensor names). ``report``, when
    given, receives NeuroMerging's ``lam2`` and ``sigma``.

    Returns
    -------
    dict[str, numpy.ndarray]
        float32 arrays of the base's shapes, in the base's key order.
    """
    if method not in NORMALIZE_DEFAULT:
        raise ValueError(f"unknown method {method!r}")
    names = list(base)
    ranked = sorted(names)  # a global scope ranks the tensors in name order
    T = len(models)
    w = np.asarray([1.0] * T if weights is None else list(weights), dtype=F32)
    wsum = F32(0)
    for wt in w:
        wsum = F32(wsum + wt)
    dens = [float(density)] * T if np.isscalar(density) else [float(x) for x in density]
    norm = NORMALIZE_DEFAULT[method] if normalize is None else bool(normalize)
    if scope is None:
        scope = "global" if method == "neuro" else "tensor"
    lam32 = F32(lam)
    shapes = {n: np.shape(base[n]) for n in names}
    rowwise = method in ("della", "della_linear", "neuro")
    tr = set(transposed)

    def flat(a: np.ndarray, n: str) -> np.ndarray:
        a = np.asarray(a, dtype=F32)
        if rowwise:
            return to_rows(a.reshape(shapes[n]), n in tr).ravel()
        return a.ravel()

    def unflat(a: np.ndarray, n: str) -> np.ndarray:
        if rowwise:
            r = a.reshape(to_rows(np.zeros(shapes[n], F32), n in tr).shape)
            return from_rows(r, shapes[n], n in tr)
        return a.reshape(shapes[n])

    b = {n: flat(base[n], n) for n in names}
    th = [{n: flat(sd[n], n) for n in names} for sd in models]
    raw = [{n: (sd[n] - b[n]).astype(F32) for n in names} for sd in th]

    def over_scope(fn, per_model_arg):  # apply a flat mask function per scope
        out = [{} for _ in range(T)]
        for m in range(T):
            if scope == "global":
                cat = np.concatenate([raw[m][n] for n in ranked])
                mask = fn(cat, per_model_arg[m])
                off = 0
                for n in ranked:
                    size = raw[m][n].size
                    out[m][n] = np.where(mask[off : off + size], raw[m][n], F32(0))
                    off += size
            else:
                for n in names:
                    out[m][n] = np.where(fn(raw[m][n], per_model_arg[m]), raw[m][n], F32(0))
        return out

    res: dict[str, np.ndarray] = {}
    if method in ("breadcrumbs", "breadcrumbs_ties"):
        sp = over_scope(lambda v, d: band_mask(v, d, gamma), dens)
        for n in names:
            taus = [sp[m][n] for m in range(T)]
            if method == "breadcrumbs":
                s = weighted_sum(w, taus)
                lam_ = F32(lam32 / wsum) if norm else lam32
                r = (b[n] + lam_ * s).astype(F32)
            else:
                r = (b[n] + lam32 * disjoint_mean(w, taus, norm)).astype(F32)
            res[n] = r
    elif method in ("della", "della_linear"):
        for n in names:
            rshape = to_rows(np.zeros(shapes[n], F32), n in tr).shape
            taus = [
                della_rows(raw[m][n].reshape(rshape), dens[m], epsilon, seed, n, m).ravel()
                for m in range(T)
            ]
            if method == "della":
                r = (b[n] + lam32 * disjoint_mean(w, taus, norm)).astype(F32)
            else:
                s = weighted_sum(w, taus)
                lam_ = F32(lam32 / wsum) if norm else lam32
                r = (b[n] + lam_ * s).astype(F32)
            res[n] = r
    elif method in ("consensus_ta", "consensus_ties"):
        if method == "consensus_ties":
            sp = over_scope(lambda v, d: topk_mask(v, d), dens)
        else:
            sp = raw
        tl = [float(tall_lambda)] * T if np.isscalar(tall_lambda) else list(tall_lambda)
        for n in names:
            taus = [sp[m][n] for m in range(T)]
            if method == "consensus_ties":
                mtl = disjoint_mean(w, taus, norm)
            else:
                mtl = weighted_sum(w, taus)
                if norm:
                    mtl = (mtl / wsum).astype(F32)
            count = np.zeros(mtl.size, dtype=np.int64)
            for m in range(T):
                tm = raw[m][n]
                count += np.abs(tm) >= (F32(tl[m]) * np.abs((mtl - tm).astype(F32))).astype(F32)
            res[n] = np.where(count >= k, (b[n] + lam32 * mtl).astype(F32), b[n]).astype(F32)
    elif method == "model_stock":
        for n in names:
            taus = [raw[m][n].astype(np.float64) for m in range(T)]
            cs = []
            for i in range(T):
                for j in range(i + 1, T):
                    npd = np.linalg.norm(taus[i]) * np.linalg.norm(taus[j])
                    cs.append(float(np.clip(taus[i] @ taus[j] / max(npd, 1e-6), -1, 1)))
            cos = float(np.mean(cs))
            tt = T * cos / (1 + (T - 1) * cos)
            t32 = F32(tt)
            avg = (weighted_sum(np.ones(T, F32), [th[m][n] for m in range(T)]) / F32(T)).astype(F32)
            res[n] = (t32 * avg + (F32(1) - t32) * b[n]).astype(F32)
            if report is not None:
                report.setdefault("t", {})[n] = tt
    elif method == "slerp":
        if T != 2:
            raise ValueError("slerp interpolates exactly 2 models")
        for n in names:
            a, bb = th[0][n], th[1][n]
            na = float(np.linalg.norm(a.astype(np.float64)))
            nb = float(np.linalg.norm(bb.astype(np.float64)))
            na = na if na > 1e-8 else 1.0
            nb = nb if nb > 1e-8 else 1.0
            cos = float(a.astype(np.float64) @ bb.astype(np.float64)) / (na * nb)
            if abs(cos) > 0.9995:
                c0, c1 = 1 - t, t
            else:
                om = math.acos(cos)
                c0 = math.sin((1 - t) * om) / math.sin(om)
                c1 = math.sin(t * om) / math.sin(om)
            res[n] = (F32(c0) * a + F32(c1) * bb).astype(F32)
    elif method == "pcb":
        if scope == "global":
            cat = [np.concatenate([raw[m][n] for n in ranked]) for m in range(T)]
            tm = pcb_unit(cat, dens, w)
            off = 0
            for n in ranked:
                size = b[n].size
                res[n] = (b[n] + lam32 * tm[off : off + size]).astype(F32)
                off += size
        else:
            for n in names:
                tm = pcb_unit([raw[m][n] for m in range(T)], dens, w)
                res[n] = (b[n] + lam32 * tm).astype(F32)
    elif method == "neuro":
        keep = 1.0 - mask_rate
        sp = over_scope(lambda v, d: topk_mask(v, d), [keep] * T)
        sigma = []
        for m in range(T):
            total = sum(float(np.abs(raw[m][n].astype(np.float64)).sum()) for n in names)
            kept = sum(float(np.abs(sp[m][n].astype(np.float64)).sum()) for n in names)
            sigma.append((total - kept) / total if total > 0 else 0.0)
        l2 = lam2 if lam2 is not None else (1 / (1 - max(sigma)) if max(sigma) < 1 else 1.0)
        if report is not None:
            report["sigma"] = sigma
            report["lam2"] = l2
        for n in names:
            shape = shapes[n]
            if len(shape) >= 2:
                rshape = to_rows(np.zeros(shape, F32), n in tr).shape
                w0 = b[n].reshape(rshape).astype(np.float64)
                taus = [sp[m][n].reshape(rshape).astype(np.float64) for m in range(T)]
                r = neuro_rows(w0, taus, w, lam * lam1, lam * l2)
                res[n] = r.ravel().astype(F32)
            else:
                X = np.stack([sp[m][n].astype(np.float64) for m in range(T)])
                res[n] = (b[n] + lam * l2 * ties_scalars(X, w)).astype(F32)
    return {n: unflat(res[n], n) for n in names}
