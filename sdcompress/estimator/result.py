"""The estimator's artifact: a frozen, JSON-serialisable :class:`SDEstimate`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sdcompress.errors import EstimatorError
from sdcompress.io import write_json_atomic

Method = Literal["exact", "slq", "kde", "ps", "lyapunov"]
ESTIMATES_FILE = "estimates.json"
SUBSPACE_FILE = "lyapunov_subspace.safetensors"
#: keys :meth:`SDEstimate.to_dict` writes that are derived from the fields (not fields)
DERIVED_KEYS = ("sd_over_d", "has_subspace")
#: fields without a default: every estimate file has them
REQUIRED_KEYS = ("method", "sd", "j_star", "exponents", "d", "n_hvp", "wall_time_s", "lr")


@dataclass(frozen=True)
class SDEstimate:
    """Sharpness exponents and the Sharpness Dimension from one estimator run.

    Attributes:
        method: ``"exact"``, ``"slq"``, ``"kde"``, ``"ps"`` or ``"lyapunov"``.
        sd: the (Kaplan–Yorke) dimension; a lower bound when ``lower_bound``.
        j_star: critical index (number of leading exponents with non-negative running sum).
        exponents: sorted decreasing. Exact: one per parameter (averaged index by index
            over minibatches). Density methods: the pseudo-spectrum / quantile exponents
            (each standing for ``weights[i]`` directions). Lyapunov: the m tracked exponents.
        weights: multiplicity of each exponent (``None``: one direction each).
        d: number of parameters counted (the subset's size).
        n_hvp: Hessian-vector products spent.
        wall_time_s: wall-clock seconds.
        lr, weight_decay: the step map's η and wd (J = (1 − η·wd) I − η H).
        sd_interval: (low, high) uncertainty interval of ``sd``.
        uncertainty: how the interval was made (e.g. "bootstrap 95% over 8 minibatches").
        lower_bound: the running sum never turned negative within the tracked exponents:
            SD ≥ ``sd`` (Lyapunov with m < d).
        n_neutral: exponents within ``neutral_tol`` of ln|1 − η·wd|, the exponent of a
            zero-curvature direction (|λ| ≤ ``neutral_tol`` without weight decay). Density
            methods count SLQ mass there; Ritz values resolve the zero atom only to
            |θ| ≈ 1e-4·max|θ|, so they undercount (see ``extras["mass_near_zero"]``).
        neutral_tol: the tolerance used for ``n_neutral``.
        params: the parameter patterns the estimate was restricted to (``None``: all).
        settings: every knob used (ε, quantiles, bandwidth, runs, steps, batches, seed).
        extras: method-specific diagnostics (density grids, top Hessian eigenvalue, trace,
            per-module energy shares of the Lyapunov subspace, ...), JSON-serialisable.
        module_sd: per parameter tensor (keyed by ``model.named_parameters()`` name), the
            attractor's directions living in it, SD_b = mean_B Σ_i w_i ‖P_b u_i‖² with the
            Kaplan–Yorke weights w_i (PAPER.md §8); sums to ``sd``. ``None``: not measured.
        module_expansion: per parameter tensor, its share of the expansion,
            E_b ∝ mean_B Σ_i max(λ_i, 0) ‖P_b u_i‖²; shares sum to 1. ``None``: not measured.
        converged: Lyapunov only: whether the tracked frame passed its convergence test
            (``None`` for the one-step methods, which have no frame).
        convergence: the convergence test's settings and numbers (steps, statistics).
        subspace: (d, m) orthonormal basis of the dominant Lyapunov directions, or ``None``.
    """

    method: Method
    sd: float
    j_star: int
    exponents: np.ndarray
    d: int
    n_hvp: int
    wall_time_s: float
    lr: float
    weight_decay: float = 0.0
    weights: np.ndarray | None = None
    sd_interval: tuple[float, float] | None = None
    uncertainty: str = ""
    lower_bound: bool = False
    n_neutral: int = 0
    neutral_tol: float = 1e-6
    params: tuple[str, ...] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    module_sd: dict[str, float] | None = None
    module_expansion: dict[str, float] | None = None
    converged: bool | None = None
    convergence: dict[str, Any] = field(default_factory=dict)
    subspace: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def sd_over_d(self) -> float:
        return self.sd / self.d if self.d else float("nan")

    def summary(self) -> str:
        """One line: SD, its interval, d, cost."""
        bound = "≥ " if self.lower_bound else ""
        ci = f" [{self.sd_interval[0]:.1f}, {self.sd_interval[1]:.1f}]" if self.sd_interval else ""
        return (
            f"SD ({self.method}) {bound}{self.sd:.1f}{ci} of d = {self.d} ({self.sd_over_d:.3f}); "
            f"j* = {self.j_star}; {self.n_hvp} HVPs in {self.wall_time_s:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "subspace"}
        out["exponents"] = np.asarray(self.exponents, dtype=np.float64).tolist()
        out["weights"] = None if self.weights is None else np.asarray(self.weights, dtype=np.float64).tolist()
        out["sd_over_d"] = self.sd_over_d
        out["params"] = None if self.params is None else list(self.params)
        out["has_subspace"] = self.subspace is not None
        return out

    def save(self, folder: str | Path, name: str = ESTIMATES_FILE) -> Path:
        """Write ``estimates.json`` (and the subspace as safetensors when present)."""
        folder = Path(folder)
        path = write_json_atomic(folder / name, self.to_dict())
        if self.subspace is not None:
            from safetensors.torch import save_file

            tmp = folder / f".{SUBSPACE_FILE}.tmp"
            save_file({"subspace": self.subspace.detach().contiguous().cpu()}, str(tmp))
            tmp.replace(folder / SUBSPACE_FILE)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SDEstimate":
        """Build from what :meth:`to_dict` wrote, strictly (as ``Plan.from_dict``).

        The derived keys :meth:`to_dict` adds (``sd_over_d``, ``has_subspace``) are
        accepted and ignored; any other key that is not a field is an error, so a file
        from another tool or a newer version is not silently half-read.

        Raises:
            EstimatorError: not a mapping, an unknown key, or a missing required field.
        """
        if not isinstance(data, dict):
            raise EstimatorError(f"an estimate must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.name != "subspace"}
        unknown = sorted(set(data) - known - set(DERIVED_KEYS))
        if unknown:
            raise EstimatorError(f"unknown estimate field(s) {unknown}; known fields are {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.name in REQUIRED_KEYS and f.name not in data]
        if missing:
            raise EstimatorError(f"the estimate is missing the field(s) {missing}")
        kw = {k: v for k, v in data.items() if k in known}
        kw["exponents"] = np.asarray(kw["exponents"], dtype=np.float64)
        if kw.get("weights") is not None:
            kw["weights"] = np.asarray(kw["weights"], dtype=np.float64)
        if kw.get("sd_interval") is not None:
            kw["sd_interval"] = tuple(kw["sd_interval"])
        if kw.get("params") is not None:
            kw["params"] = tuple(kw["params"])
        kw["sd"] = float(kw["sd"])
        return cls(**kw)

    @classmethod
    def load(cls, folder: str | Path, name: str = ESTIMATES_FILE) -> "SDEstimate":
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        est = cls.from_dict(json.loads((folder / name).read_text()))
        if (folder / SUBSPACE_FILE).exists():
            from safetensors.torch import load_file

            est = replace(est, subspace=load_file(str(folder / SUBSPACE_FILE))["subspace"])
        return est


__all__ = ["DERIVED_KEYS", "ESTIMATES_FILE", "Method", "REQUIRED_KEYS", "SDEstimate", "SUBSPACE_FILE", "asdict"]
