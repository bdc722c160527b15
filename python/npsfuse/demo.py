"""``make demo``: merge a tiny locally trained model with every method.

Builds a small MLP "pre-trained" on a synthetic task, fine-tunes three copies
on three related tasks (nothing is downloaded), merges the fine-tunes with
every method of :func:`npsfuse.methods`, and prints per method the merge
time, the agreement with the NumPy reference implementation
(:mod:`npsfuse.reference`) and the merged model's accuracy on each task.

Run with ``python -m npsfuse.demo``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import npsfuse
from npsfuse import _spec, reference
from npsfuse.merging import USES_DENSITY

DIM, HIDDEN, CLASSES = 32, 128, 4
PARAMS = {"density": 0.3, "lam": 1.0, "seed": 0}


def _task(seed: int, n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic classification task: labels from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(DIM, CLASSES, generator=g)
    shared = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, DIM, generator=g)
    y = (x @ (0.6 * shared + 0.4 * teacher)).argmax(1)
    return x, y


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
                         nn.Linear(HIDDEN, CLASSES))


def _train(
    start: dict[str, torch.Tensor] | None, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> dict[str, torch.Tensor]:
    """The state dict of a model trained from ``start`` (a fresh one when None)."""
    model = _model()
    if start is not None:
        model.load_state_dict(start)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _accuracy(sd: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    m = _model()
    m.load_state_dict(sd)
    return float((m(x).argmax(1) == y).float().mean())


def _statistics(
    method: str, fts: list[dict[str, torch.Tensor]], tasks: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, object]:
    """The data-aware methods' statistics: from each fine-tune on 512 of its
    task's inputs (no labels)."""
    if method not in ("fisher", "regmean"):
        return {}
    helper = npsfuse.stats.fisher if method == "fisher" else npsfuse.stats.regmean_grams
    stats = []
    for sd, (x, _) in zip(fts, tasks, strict=True):
        m = _model()
        m.load_state_dict(sd)
        stats.append(helper(m, [x[:256], x[256:512]]))
    return {"statistics": stats}


def main() -> None:
    """Train, fine-tune, merge with every method and print the table."""
    torch.manual_seed(0)
    base_sd = _train(None, *_task(0), steps=300, lr=3e-3)
    tasks = [_task(s) for s in (1, 2, 3)]
    fts = [_train(base_sd, x, y, steps=200, lr=1e-3) for x, y in tasks]
    header = f"{'method':<18}{'time (ms)':>10}{'max |Δ| vs NumPy':>18}" + "".join(
        f"{'task ' + str(i + 1):>9}" for i in range(len(tasks))
    ) + f"{'mean':>8}"
    print(f"npsfuse {npsfuse.__version__}: {sum(v.numel() for v in base_sd.values()):,} "
          f"parameters, {len(fts)} fine-tunes, {npsfuse.get_num_threads()} threads")
    print(header)
    print("-" * len(header))
    rows = [("pre-trained", None, None, base_sd)]
    rows += [(f"fine-tune {i + 1}", None, None, sd) for i, sd in enumerate(fts)]
    for method in npsfuse.methods():
        # Methods with a model bound take the first fine-tunes: slerp and
        # nuslerp two, nearswap (with a distance t of 0.01) and arcee_fusion one.
        most = _spec.table().methods[method].max_models
        models = fts[:most] if most else fts
        extra = _statistics(method, fts, tasks)
        if method == "nearswap":
            extra["t"] = 0.01
        t0 = time.perf_counter()
        # density only for the methods that use it (the others refuse it)
        kw = {k: v for k, v in PARAMS.items()
              if k != "density" or method in USES_DENSITY}
        merged = npsfuse.merge(base_sd, models, method, **kw, **extra)
        ms = (time.perf_counter() - t0) * 1e3
        np_base = {k: v.numpy() for k, v in base_sd.items()}
        np_models = [{k: v.numpy() for k, v in sd.items()} for sd in models]
        ref = None
        if method in reference.METHODS:
            ref = reference.merge(np_base, np_models, method, **PARAMS)
        elif method in reference.SUBSPACE_METHODS:
            ref = reference.merge_subspace(np_base, np_models, method, lam=PARAMS["lam"])
        diff = None if ref is None else max(
            float(np.abs(merged[k].numpy() - ref[k]).max()) for k in ref
        )
        name = {"slerp": "slerp (1+2)", "nearswap": "nearswap (1)"}.get(method, method)
        rows.append((name, ms, diff, merged))
    for name, ms, diff, sd in rows:
        accs = [_accuracy(sd, x, y) for x, y in tasks]
        t = f"{ms:10.2f}" if ms is not None else f"{'':>10}"
        d = f"{diff:18.2e}" if diff is not None else f"{'n/a' if ms is not None else '':>18}"
        print(f"{name:<18}{t}{d}" + "".join(f"{a:9.3f}" for a in accs) + f"{np.mean(accs):8.3f}")


if __name__ == "__main__":
    main()
