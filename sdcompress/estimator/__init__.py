"""Sharpness exponents and the Sharpness Dimension (PAPER.md §2–§3).

``estimate_sd`` runs any estimator (exact, SLQ histogram, KDE, pseudo-spectrum,
Lyapunov); ``sharpness_dimension`` and ``critical_index`` are the Kaplan–Yorke formula;
``lyapunov_spectrum`` is the QR (Benettin) method for any differentiable map.
"""

from __future__ import annotations

from typing import Any

from sdcompress.estimator.config import EstimateConfig
from sdcompress.estimator.batches import BatchSource
from sdcompress.estimator.estimate import estimate_sd
from sdcompress.estimator.kaplan_yorke import critical_index, sharpness_dimension
from sdcompress.estimator.result import ESTIMATES_FILE, SDEstimate

__all__ = [
    "ESTIMATES_FILE",
    "BatchSource",
    "EstimateConfig",
    "SDEstimate",
    "critical_index",
    "estimate_sd",
    "lyapunov_spectrum",
    "sharpness_dimension",
]


def __getattr__(name: str) -> Any:
    # lazy: the Lyapunov module is imported only when asked for
    if name in ("lyapunov_spectrum", "LyapunovResult"):
        from sdcompress.estimator import lyapunov

        return getattr(lyapunov, name)
    if name == "lyapunov_sd":
        from sdcompress.estimator import lyapunov_sgd

        return lyapunov_sgd.lyapunov_sd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
