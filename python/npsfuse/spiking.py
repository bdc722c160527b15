"""Spiking networks (SpikingJelly) as individuals of :class:`npsfuse.Evolver`,
:func:`npsfuse.search_merge` and the daemon's evolve sessions.

CADE (Jiang, Du et al., 2024) fine-tunes spiking networks by differential
evolution over whole weight sets. A SpikingJelly model's state dict holds
more than weights: BatchNorm running statistics, integer counters, and, in
models that register them as buffers, neuron memories (membrane potential
``v``, spike and trace buffers). Those must not be evolved: a statistic is
not a parameter (and a DE step can make a variance negative), and a
membrane potential is the state of one forward pass. This module says which
tensors evolve and resets the network's state around every evaluation.

* :data:`SPIKING_EXCLUDE`: the default rules (``re.search`` on tensor names).
* :func:`split`: resolves include/exclude rules on a model or state dict into
  the evolved and kept tensor names, and renders them for each door
  (:meth:`Split.evolver_exclude` for ``Evolver(exclude=...)``,
  :meth:`Split.daemon_exclude` for ``Client.evolve(exclude=...)``), so both
  evolve exactly the same tensors (the Evolver takes regular expressions, the
  daemon globs: the names are resolved once, here).
* :func:`reset` and :func:`evaluator`: reset every neuron's state before and
  after each evaluation, so nothing of one candidate's forward pass leaks
  into the next one's score.

``spikingjelly`` is an optional extra (``pip install 'npsfuse[spiking]'``),
imported only when :func:`reset` needs it; rules work on any state dict.

Example
-------
>>> from npsfuse import spiking
>>> s = spiking.split(net)                            # SpikingJelly defaults
>>> evaluate = spiking.evaluator(net, dev_accuracy)   # load, reset, score, reset
>>> evo = npsfuse.Evolver(base_sd, population, evaluate, strategy="rand/1/bin",
...                       schedule="cosine", exclude=s.evolver_exclude())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._extras import need

__all__ = ["SPIKING_EXCLUDE", "Split", "evaluator", "memory_names", "reset", "split"]

#: Default rules (``re.search`` on state-dict names) of tensors a spiking
#: network keeps out of the evolution: BatchNorm running statistics and
#: counters (statistics of the data, not parameters; every individual keeps
#: its own, like a head), and the neuron memories SpikingJelly and older
#: SpikingJelly-style code may register as buffers (membrane potential
#: ``v``, ``v_seq``, ``h_seq``, spikes, STDP traces). Neuron *parameters*
#: (a PLIF neuron's learnable time constant ``w``) are parameters and evolve.
SPIKING_EXCLUDE: tuple[str, ...] = (
    r"(^|\.)running_(mean|var)$",
    r"(^|\.)num_batches_tracked$",
    r"(^|\.)(v|v_seq|h_seq|spike|spike_seq|trace_pre|trace_post)$",
)

Reason = str


@dataclass(frozen=True)
class Split:
    """Which tensors of a spiking network evolve.

    Attributes
    ----------
    evolved
        Floating-point tensors that evolve, in name order (the order both
        doors flatten them in).
    kept
        Every other tensor, name → why: ``"exclude rule <pattern>"``, ``"not
        included"``, ``"neuron memory"``, ``"neuron parameter"`` or ``"not
        floating-point"``. Each individual keeps its own.
    """

    evolved: tuple[str, ...]
    kept: dict[str, Reason]

    def evolver_exclude(self) -> list[str]:
        """``exclude=`` for :class:`npsfuse.Evolver`: one anchored regular
        expression per kept floating-point tensor."""
        return [f"^{re.escape(k)}$" for k, why in self.kept.items()
                if why != "not floating-point"]

    def daemon_exclude(self) -> list[str]:
        """``exclude=`` for ``npsfuse.Client.evolve`` (Go ``path.Match``
        globs): one glob per kept floating-point tensor, its metacharacters
        escaped, so it matches that name only."""
        return [re.sub(r"([\\*?\[\]])", r"\\\1", k) for k, why in self.kept.items()
                if why != "not floating-point"]


def _compile(rules: Sequence[str | re.Pattern[str]], what: str) -> list[re.Pattern[str]]:
    out = []
    for r in rules:
        if not isinstance(r, (str, re.Pattern)):
            raise TypeError(f"{what} rules must be strings or compiled patterns, got {r!r}")
        try:
            out.append(re.compile(r))  # a compiled pattern is returned as it is
        except re.error as exc:
            raise ValueError(f"{what}: bad regular expression {r!r}: {exc}") from None
    return out


def _is_neuron(m: nn.Module) -> bool:
    """A SpikingJelly neuron (any ``BaseNode``), recognised without importing
    SpikingJelly: a memory module with a firing threshold."""
    return hasattr(m, "_memories") and hasattr(m, "v_threshold")


def memory_names(model: nn.Module) -> list[str]:
    """State-dict names of neuron memories a model registered as tensors in
    its state dict (SpikingJelly keeps them out of it; subclasses and older
    code may not), found from every module's ``_memories``."""
    sd_keys = set(model.state_dict())
    out = []
    for prefix, m in model.named_modules():
        for name in getattr(m, "_memories", {}) or {}:
            key = f"{prefix}.{name}" if prefix else name
            if key in sd_keys:
                out.append(key)
    return sorted(out)


def split(
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    include: Sequence[str | re.Pattern[str]] | None = None,
    exclude: Sequence[str | re.Pattern[str]] = SPIKING_EXCLUDE,
    neuron_params: bool = True,
) -> Split:
    """Resolve include/exclude rules into the evolved and kept tensors.

    Parameters
    ----------
    model
        A spiking ``nn.Module`` or its state dict. A module also contributes
        what names cannot tell: its neuron memories (:func:`memory_names`)
        and, with ``neuron_params=False``, its neurons' parameters.
    include
        ``re.search`` rules: when given, only matching tensors evolve.
    exclude
        ``re.search`` rules of tensors kept (default :data:`SPIKING_EXCLUDE`;
        pass ``(*SPIKING_EXCLUDE, r"^fc\\.")`` to keep a head too).
    neuron_params
        Evolve the neurons' own parameters (PLIF's ``w``); needs a module.

    Raises
    ------
    ValueError
        A bad rule, or no tensor left to evolve.
    """
    inc = None if include is None else _compile(include, "include")
    exc = _compile(exclude, "exclude")
    if isinstance(model, nn.Module):
        sd = model.state_dict()
        memories = set(memory_names(model))
        neuron_p = set() if neuron_params else {
            f"{prefix}.{n}" if prefix else n
            for prefix, m in model.named_modules() if _is_neuron(m)
            for n, _ in m.named_parameters(recurse=False)
        }
    elif isinstance(model, Mapping):
        sd, memories, neuron_p = dict(model), set(), set()
        if not neuron_params:
            raise ValueError("neuron_params=False needs the model, not its state dict")
    else:
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    evolved: list[str] = []
    kept: dict[str, Reason] = {}
    for k in sorted(sd):
        t = sd[k]
        if not torch.is_tensor(t) or not t.is_floating_point():
            kept[k] = "not floating-point"
        elif k in memories:
            kept[k] = "neuron memory"
        elif k in neuron_p:
            kept[k] = "neuron parameter"
        elif (hit := next((p for p in exc if p.search(k)), None)) is not None:
            kept[k] = f"exclude rule {hit.pattern}"
        elif inc is not None and not any(p.search(k) for p in inc):
            kept[k] = "not included"
        else:
            evolved.append(k)
    if not evolved:
        raise ValueError("no floating-point tensor is left to evolve (check include and exclude)")
    return Split(tuple(evolved), kept)


def reset(model: nn.Module) -> None:
    """Reset every neuron's state (membrane potential, spikes, traces) of a
    SpikingJelly network: ``spikingjelly.activation_based.functional.reset_net``.

    Call it between independent inputs (after each batch of a multi-step
    forward); :func:`evaluator` calls it around every evaluation.
    """
    functional = need("spikingjelly.activation_based.functional", "spiking",
                      "npsfuse.spiking.reset")
    functional.reset_net(model)


def evaluator(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    *,
    strict: bool = True,
) -> Callable[[Mapping[str, torch.Tensor]], float]:
    """Wrap a score of a spiking network into an ``evaluate(state_dict)`` for
    :class:`npsfuse.Evolver` and :func:`npsfuse.search_merge`.

    Each call copies the state dict into ``model`` (the Evolver's state dicts
    are views valid until its next trial: nothing is kept), resets the
    network's state, switches it to eval mode and runs ``score(model)``
    without gradients, then resets the state again, so no membrane potential
    of one candidate reaches the next, whatever ``score`` does. ``score``
    must still reset between its own batches (:func:`reset`) when it feeds
    independent inputs one batch after another.

    Parameters
    ----------
    model
        The network whose state dicts are evolved (its weights are
        overwritten at every call).
    score
        ``score(model) -> float``, higher is better (dev accuracy).
    strict
        Passed to ``model.load_state_dict``.
    """
    if not callable(score):
        raise TypeError("score must be a callable model -> float")

    def evaluate(sd: Mapping[str, torch.Tensor]) -> float:
        model.load_state_dict(sd, strict=strict)
        reset(model)
        model.eval()
        try:
            with torch.no_grad():
                return float(score(model))
        finally:
            reset(model)

    return evaluate

