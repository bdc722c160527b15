"""Training-loop integrations.

:class:`MergeOnSave` is a Hugging Face ``TrainerCallback`` that, after every
checkpoint the ``Trainer`` saves, asks the node's ``npsfused`` to merge that
checkpoint with a base model (and any other fine-tunes) into a new folder —
like TRL's ``MergeModelCallback``, but the merge runs in the daemon, so
training does not wait for it. Each submit carries an idempotency key derived
from the checkpoint, so a re-sent submit never merges twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .client import Client, Job

log = logging.getLogger("npsfuse")

__all__ = ["MergeOnSave"]


class MergeOnSave(TrainerCallback):
    """Submit a merge job to ``npsfused`` after each checkpoint save.

    Parameters
    ----------
    base_model
        Path of the pre-trained checkpoint θ₀ (inside the daemon's data roots).
    method
        Merge method (``linear``, ``task_arithmetic``, ``ties``, ``dare_ties``, ...).
    models
        Other fine-tuned checkpoints merged along with each new checkpoint.
    weights
        Per-model weights: the new checkpoint's first, then ``models``'.
    parameters
        The merge's global ``parameters`` (``density``, ``lambda``, ``normalize``).
    out_dir
        Where each merge goes, a template with ``{checkpoint}`` (the
        checkpoint folder's path), ``{name}`` (its name, ``checkpoint-STEP``),
        ``{step}`` and ``{output_dir}``; inside the data roots. Default
        ``"{output_dir}/merged/{name}"``: a folder the Trainer's checkpoint
        rotation (``save_total_limit``) never matches. Do not use a name
        that starts with ``checkpoint-`` directly in ``output_dir``: rotation
        would take it for a checkpoint and delete it (or a real one).
    dtype
        Output dtype (default: the base's).
    client, address, token
        The daemon to use: an existing :class:`~npsfuse.Client`, or how to
        connect (default: the local socket, ``$NPSFUSE_TOKEN``).
    wait_on_train_end
        At the end of training, wait for the submitted merges and log any
        failure (``False``: leave them running in the daemon).
    timeout
        Seconds to wait per job at the end of training (``None``: no limit).
    on_unavailable
        What a save does when no daemon answers: ``"warn"`` (default: log a
        warning, skip this merge, training goes on), ``"local"`` (merge in
        this process with :func:`npsfuse.merge_checkpoints`; training waits
        for it) or ``"raise"`` (stop training with the ``ConnectionError``).

    Notes
    -----
    Only the main process (``state.is_world_process_zero``) submits. The
    checkpoint folder must hold full weights (``model.safetensors`` or
    shards) with the base's tensor names; PEFT adapter checkpoints are not
    merged. ``jobs`` lists the submitted :class:`~npsfuse.client.Job` objects.

    With ``save_total_limit``, the Trainer deletes the oldest checkpoint at
    the next save: before a save returns, the merges of the checkpoints the
    next rotation may delete are waited for, so no merge loses its input.
    """

    def __init__(
        self,
        base_model: str | os.PathLike,
        *,
        method: str = "ties",
        models: Sequence[str | os.PathLike] = (),
        weights: Sequence[float] | None = None,
        parameters: Mapping[str, Any] | None = None,
        out_dir: str = "{output_dir}/merged/{name}",
        dtype: str | None = None,
        client: Client | None = None,
        address: str | None = None,
        token: str | None = None,
        wait_on_train_end: bool = True,
        timeout: float | None = None,
        on_unavailable: str = "warn",
    ) -> None:
        if on_unavailable not in ("warn", "local", "raise"):
            raise ValueError(
                f'on_unavailable must be "warn", "local" or "raise", got {on_unavailable!r}'
            )
        self.on_unavailable = on_unavailable
        self.base_model = os.path.abspath(os.fspath(base_model))
        self.method = method
        self.models = [os.path.abspath(os.fspath(m)) for m in models]
        if weights is not None and len(weights) != 1 + len(self.models):
            raise ValueError(
                f"{len(weights)} weights for {1 + len(self.models)} models "
                "(the new checkpoint, then `models`)"
            )
        self.weights = list(weights) if weights is not None else None
        self.parameters = dict(parameters or {})
        self.out_dir = out_dir
        self.dtype = dtype
        self._client = client
        self._address, self._token = address, token
        self.wait_on_train_end = wait_on_train_end
        self.timeout = timeout
        self.jobs: list[Job] = []
        self._settled: set[int] = set()

    @property
    def client(self) -> Client:
        """The daemon connection (opened on first use)."""
        if self._client is None:
            self._client = Client(self._address, self._token)
        return self._client

    def config_for(self, checkpoint: str) -> dict[str, Any]:
        """The mergekit-style configuration submitted for ``checkpoint``."""
        paths = [os.path.abspath(checkpoint), *self.models]
        models: list[dict[str, Any]] = [{"model": p} for p in paths]
        for m, w in zip(models, self.weights or (), strict=False):  # no weights: none given
            m["parameters"] = {"weight": float(w)}
        cfg: dict[str, Any] = {
            "merge_method": self.method,
            "base_model": self.base_model,
            "models": models,
        }
        if self.parameters:
            cfg["parameters"] = dict(self.parameters)
        return cfg

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Submit the merge of the checkpoint just saved (does not wait for it)."""
        if not state.is_world_process_zero:
            return
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(ckpt):
            log.warning("MergeOnSave: no checkpoint folder %s; nothing merged", ckpt)
            return
        ckpt = os.path.abspath(ckpt)
        out = self.out_dir.format(
            checkpoint=ckpt,
            name=os.path.basename(ckpt),
            step=state.global_step,
            output_dir=args.output_dir,
        )
        try:
            job = self.client.submit_merge(
                self.config_for(ckpt),
                out_dir=out,
                dtype=self.dtype,
                idempotency_key=f"merge-on-save:{ckpt}:{state.global_step}:{os.path.abspath(out)}",
            )
        except ConnectionError as exc:
            if self.on_unavailable == "raise":
                raise
            if self.on_unavailable == "warn":
                log.warning("MergeOnSave: step %d not merged: %s", state.global_step, exc)
                return
            from .checkpoint import merge_checkpoints

            log.info("MergeOnSave: no daemon (%s); merging step %d here", exc, state.global_step)
            merge_checkpoints(self.config_for(ckpt), out, dtype=self.dtype, force=True, quiet=True)
            return
        self.jobs.append(job)
        log.info("MergeOnSave: step %d: merge job %d → %s", state.global_step, job.id, out)
        limit = getattr(args, "save_total_limit", None)
        if limit:
            # The next save deletes the oldest checkpoint still on disk: the
            # merges of all but the newest limit - 1 must have read theirs.
            for j in self.jobs[: max(len(self.jobs) - (limit - 1), 0)]:
                self._settle(j, self.timeout)

    def _settle(self, job: Job, timeout: float | None) -> None:
        """Wait for job once and log how it ended."""
        if job.id in self._settled:
            return
        try:
            st = job.wait(timeout)
        except TimeoutError:
            log.warning("MergeOnSave: merge job %d still running", job.id)
            return
        self._settled.add(job.id)
        if st["state"] != "done":
            log.warning(
                "MergeOnSave: merge job %d %s: %s", job.id, st["state"], st.get("error", "")
            )

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Wait for the submitted merges (when ``wait_on_train_end``) and log failures."""
        if not self.wait_on_train_end:
            return
        for job in self.jobs:
            self._settle(job, self.timeout)
