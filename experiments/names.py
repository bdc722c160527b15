"""Row names of the results table, shared by the study and the report.

Pure functions of the configuration: the report finds the rows a claim
compares by these names, the study records its results under them.
"""

from __future__ import annotations

PRETRAINED = "pre-trained (θ₀, same heads)"
PRETRAINED_INITIAL = "pre-trained (θ₀, initial heads)"
PROBE = "pre-trained + linear probe (context)"
INDIVIDUAL = "individual fine-tunes"
BEST_PARENT = "best single fine-tune (by val.)"
BASELINES = (PRETRAINED, PRETRAINED_INITIAL, PROBE, INDIVIDUAL, BEST_PARENT)

AVERAGING = "weight averaging"
TA_NOVAL = "task arithmetic (λ=0.4, no val.)"
NEURO_NOVAL = "NeuroMerging (defaults, no val.)"
MODEL_STOCK = "Model Stock"
SLERP = "SLERP (t=0.5)"
ADAMERGING = "AdaMerging"

NEURO_GRID = "NeuroMerging (λ₁, λ₂ grid)"
EVOLVER = "Evolver with merger (TIES)"
DE_CADE = "TIES λ,k by DE/CADE"
DE_FIXED = "TIES λ,k by DE (fixed F, CR)"
CMA = "TIES λ,k by CMA-ES"

#: Display names of npsfuse methods in λ rows; ``True`` = the row shows its density.
LABELS: dict[str, tuple[str, bool]] = {
    "task_arithmetic": ("task arithmetic", False),
    "ties": ("TIES", True),
    "dare_ties": ("DARE-TIES", True),
    "dare_linear": ("DARE", True),
    "magnitude_prune": ("magnitude top-k + TA", True),
    "breadcrumbs": ("Breadcrumbs", True),
    "breadcrumbs_ties": ("Breadcrumbs-TIES", True),
    "della": ("DELLA", True),
    "della_linear": ("DELLA-linear", True),
    "consensus_ta": ("Consensus-TA", False),
    "consensus_ties": ("Consensus-TIES", True),
    "pcb": ("PCB", True),
    "neuro": ("NeuroMerging", False),
    "tsv": ("TSV-Merge", False),
    "iso_c": ("Iso-C", False),
    "iso_cts": ("Iso-CTS", False),
    "fisher": ("Fisher merging", False),
    "regmean": ("RegMean", False),
}


def ties_noval(density: float) -> str:
    """TIES with its paper's defaults (λ = 1) and no validation."""
    return f"TIES (k={density}, λ=1, no val.)"


def lam_row(method: str, density: float | None) -> str:
    """The row of ``method`` with λ chosen on validation (density shown when used)."""
    label, shows = LABELS.get(method, (method, False))
    inner = f"k={density}, " if shows and density is not None else ""
    return f"{label} ({inner}λ on val.)"


def plain_row(method: str) -> str:
    """The row of a method without λ, run with its defaults."""
    return LABELS.get(method, (method, False))[0]


def nps_fusion(keep: float) -> str:
    """NPS fusion at keep ratio ``keep``."""
    return f"NPS fusion (keep {keep})"
