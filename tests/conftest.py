"""Shared fixtures: random model families and thread-count restoration.

The tests import the installed ``npsfuse`` (``make test`` runs them from this
folder against the pip-installed package); during development run them with
``PYTHONPATH=/work/main/python``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import npsfuse
import numpy as np
import pytest
import torch

StateDict = dict[str, torch.Tensor]

# Several tests Ctrl-C a child merge (SIGINT) and check how it stops. A runner
# started in the background by a shell without job control (`cmd &`, nohup)
# hands SIGINT down ignored, and an ignored signal stays ignored across exec:
# the children would never see it. A handler here is reset to the default in
# every child at exec, so they get SIGINT as a terminal would deliver it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Shapes of the default test model. ``embed.weight`` has 39 000 entries, so
#: the Go engine splits it into three 16 384-entry chunks and ranks it with
#: the radix select; ``layer.0`` stays under the 4 096-entry sort path.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (130, 300),
    "layer.0.weight": (64, 48),
    "layer.0.bias": (48,),
    "layer.1.weight": (70, 80),
    "head.weight": (3, 5, 7),
}

MakeFamily = Callable[..., tuple[StateDict, list[StateDict]]]


def make_family(
    shapes: Mapping[str, Sequence[int]] = SHAPES,
    n_models: int = 3,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scale: float = 0.5,
    delta: float = 0.05,
    quantized: bool = False,
    buffers: bool = False,
) -> tuple[StateDict, list[StateDict]]:
    """A random base model and ``n_models`` fine-tunes of it.

    Parameters
    ----------
    shapes
        Tensor name → shape, in state-dict order.
    n_models
        How many fine-tuned models.
    seed
        NumPy seed of the draw.
    dtype
        Storage dtype of every floating-point tensor.
    scale, delta
        Standard deviations of the base entries and of the task vectors
        (values of order 1 keep float32 rounding below 1e-6 absolute).
    quantized
        Draw the base on a 1/8 grid and task vectors on a 1/4 grid, so that
        θ_t − θ₀ is exact and many |τ| tie (exercises the tie-breaking rule).
    buffers
        Add an int64 ``position_ids`` and a bool ``mask`` buffer, equal in all
        models.

    Returns
    -------
    tuple
        ``(base, [model_1, …])`` as state dicts of CPU tensors.
    """
    rng = np.random.default_rng(seed)
    base: StateDict = {}
    models: list[StateDict] = [{} for _ in range(n_models)]
    for name, shape in shapes.items():
        if quantized:
            b = np.round(rng.standard_normal(shape) * 8) / 8
        else:
            b = rng.standard_normal(shape) * scale
        b32 = torch.from_numpy(np.asarray(b, dtype=np.float32)).to(dtype)
        base[name] = b32
        for sd in models:
            if quantized:
                d = np.round(rng.standard_normal(shape) * 2) / 4
            else:
                d = rng.standard_normal(shape) * delta
            sd[name] = (b32.float() + torch.from_numpy(np.asarray(d, dtype=np.float32))).to(
                dtype
            )
    if buffers:
        pos = torch.arange(12, dtype=torch.int64).unsqueeze(0)
        msk = torch.tensor([True, False, True])
        base["position_ids"] = pos
        base["mask"] = msk
        for sd in models:
            sd["position_ids"] = pos.clone()
            sd["mask"] = msk.clone()
    return base, models


@pytest.fixture
def family() -> MakeFamily:
    """The :func:`make_family` factory."""
    return make_family


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Put npsfuse's thread count back after a test changes it."""
    before = npsfuse.get_num_threads()
    yield
    npsfuse.set_num_threads(before)


def to_numpy(sd: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Floating-point tensors of ``sd`` widened to float32 NumPy arrays, in order."""
    return {k: t.detach().float().numpy() for k, t in sd.items() if t.is_floating_point()}


@pytest.fixture
def as_numpy() -> Callable[[Mapping[str, torch.Tensor]], dict[str, np.ndarray]]:
    """The :func:`to_numpy` helper."""
    return to_numpy


def save_family(root: Path, base: Mapping[str, torch.Tensor],
                models: Sequence[Mapping[str, torch.Tensor]]) -> tuple[Path, list[Path]]:
    """Folders ``root/base`` and ``root/ft{i}``, one ``model.safetensors`` each."""
    from safetensors.torch import save_file

    paths = []
    for name, sd in [("base", base)] + [(f"ft{i}", m) for i, m in enumerate(models)]:
        d = root / name
        d.mkdir()
        save_file(dict(sd), str(d / "model.safetensors"), metadata={"format": "pt"})
        paths.append(d)
    return paths[0], paths[1:]


def load_folder(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors shards in folder ``out``."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd
