"""``EstimateConfig``: every knob of the SD estimators, with documented defaults.

Recipes are YAML views of this dataclass, so every field is a plain type (str, int,
float, bool, list of str, or ``None``). :meth:`EstimateConfig.validate` checks ranges and
raises :class:`~sdcompress.errors.ConfigError` naming the field, the value and a fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from sdcompress.errors import ConfigError

METHODS = ("exact", "slq", "kde", "ps", "lyapunov")
DENSITY_METHODS = ("slq", "kde", "ps")
DTYPES = ("model", "float64")


@dataclass
class EstimateConfig:
    """Settings of :func:`~sdcompress.estimator.estimate_sd`.

    Attributes:
        method: ``"ps"`` (default: pseudo-spectrum from SLQ; matrix-free, any size, and
            within a few percent of exact SD on the digits MLP for ~4% of exact's
            Hessian-vector products), ``"kde"``, ``"slq"`` (histogram), ``"exact"``
            (dense minibatch Hessians, d ≤ ``max_dense_params``) or ``"lyapunov"``
            (multi-step exponents along the SGD trajectory).
        n_batches: minibatches whose dense Hessians are averaged (exact). Each costs d
            Hessian-vector-product equivalents and d² memory.
        slq_runs: SLQ runs, one fresh minibatch and one Rademacher probe each. The paper
            used 500 runs for a 13k-parameter MLP; 32 keep the bootstrap interval of SD
            on the digits MLP within a few percent.
        lanczos_steps: Lanczos steps m per run (Ritz nodes per run; memory m · d with
            full reorthogonalisation, see ``reorth``).
        reorth: Lanczos reorthogonalisation: ``"auto"`` (default: ``"full"`` when the
            m × d basis fits ``memory_budget``, else ``"half"`` (a float16 basis), else
            ``"none"``, the O(d) three-term recurrence), or one of those three.
            Measured: ``"half"`` gives ``"full"``'s SD to 1e-4; ``"none"`` moved SD-PS
            by +3% at 80 steps (it needs about twice the steps for the same accuracy;
            results/bench/lean_lanczos.md).
        memory_budget: bytes one Lanczos run may use (its basis and work vectors; see
            :func:`sdcompress.linalg.lanczos_memory_bytes`); ``None``: 0.1 of the
            available RAM (free GPU memory on CUDA).
        eps: ε in g(α) = ln(|1 − η·wd − ηα| + ε) (density methods). It shifts every
            neutral exponent by ≈ ε, so it must be far below η·wd; see
            :mod:`sdcompress.estimator.density`.
        n_quantiles: M, quantiles of the pseudo-spectrum (each stands for d/M
            eigenvalues; clipped to d).
        ps_representative: how each of the M equal-mass groups is represented:
            ``"mean"`` (default: groups by exponent, each its mean exponent; keeps Σλ
            exact and agrees with SD-KDE for any M) or ``"quantile"`` (the paper's
            literal reading: g at the α-quantile (k − ½)/M; biased at small M).
        bandwidth: Gaussian kernel width in u = asinh(α/s) units (a relative width in α:
            0.05 ≈ 5%), or ``"silverman"`` (Silverman's rule on u; much too wide for the
            multi-decade spectra of networks, kept for comparison).
        n_bins: histogram bins in u for ``"slq"`` (must divide ``grid_size``).
        grid_size: cells of the density grid in u.
        density_scale: s / max|θ|: below s the u-grid is linear in α (resolution s·δu).
        density_linear: c / max|θ|: above c the u-grid is linear in α again (resolution
            c·δu), so outliers beyond 2/η are not smeared by a relative width.
        params: parameter patterns (names, module names or ``re:<regex>``) the estimate
            is restricted to (the Hessian's diagonal block); ``None``: all trainable.
        chunk_size: vectors per vmap call of the Hessian-vector product (also rows per
            vmapped reverse pass of the dense Hessian); ``None``: all at once.
        hvp_method: ``"auto"`` (fastest measured), ``"vmap"``, ``"loop"`` or
            ``"double-backward"``.
        dtype: ``"model"`` (compute in the model's dtype) or ``"float64"`` (a float64
            copy of the model and batches; the model itself is never changed). Note that
            transformers' causal-LM loss casts logits to float32, so for HF language
            models "float64" is float64 everywhere but in the loss itself.
        max_dense_params: the largest d for which ``"exact"`` forms dense Hessians
            (16,384 → 2 GiB per float64 matrix).
        n_bootstrap: bootstrap replicates of the uncertainty interval (over minibatches
            for exact, over SLQ runs for density methods).
        confidence: level of the interval.
        seed: seeds probes, bootstrap and the Lyapunov frame.
        neutral_tol: an exponent is neutral when |λ − ln|1 − η·wd|| ≤ neutral_tol (the
            exponent of a zero-curvature direction; 0 without weight decay).
        lyapunov_exponents: m, tangent vectors tracked by ``"lyapunov"``.
        lyapunov_steps: SGD steps of ``"lyapunov"`` (warm-up included).
        lyapunov_warmup: steps discarded before averaging.
    """

    method: Literal["exact", "slq", "kde", "ps", "lyapunov"] = "ps"
    n_batches: int = 20
    slq_runs: int = 32
    lanczos_steps: int = 80
    reorth: Literal["auto", "full", "half", "none"] = "auto"
    memory_budget: int | None = None
    eps: float = 1e-8
    n_quantiles: int = 1000
    ps_representative: Literal["quantile", "mean"] = "mean"
    bandwidth: float | Literal["silverman"] = 0.05
    n_bins: int = 256
    grid_size: int = 4096
    density_scale: float = 1e-6
    density_linear: float = 0.1
    params: list[str] | None = None
    chunk_size: int | None = 16
    hvp_method: Literal["auto", "vmap", "loop", "double-backward"] = "auto"
    dtype: Literal["model", "float64"] = "model"
    max_dense_params: int = 16384
    n_bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    neutral_tol: float = 1e-6
    lyapunov_exponents: int = 16
    lyapunov_steps: int = 100
    lyapunov_warmup: int = 20

    def with_overrides(self, **overrides: Any) -> "EstimateConfig":
        """A copy with some fields replaced (unknown names are errors)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown estimator setting(s) {unknown}; known settings: {sorted(known)}")
        return replace(self, **overrides)

    def validate(self) -> "EstimateConfig":
        """Check every field; returns ``self``.

        Raises:
            ConfigError: a field out of range, naming it, the value and the fix.
        """
        from sdcompress.linalg.hvp import HVP_METHODS

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.method in METHODS, f"method must be one of {list(METHODS)}, got {self.method!r}")
        for name in ("n_batches", "slq_runs", "lanczos_steps", "n_quantiles", "n_bins", "grid_size", "max_dense_params",
                     "lyapunov_exponents", "lyapunov_steps"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{name} must be an integer ≥ 1, got {value!r}")
        need(isinstance(self.n_bootstrap, int) and self.n_bootstrap >= 0, f"n_bootstrap must be an integer ≥ 0 (0: no interval), got {self.n_bootstrap!r}")
        need(isinstance(self.lyapunov_warmup, int) and self.lyapunov_warmup >= 0, f"lyapunov_warmup must be an integer ≥ 0, got {self.lyapunov_warmup!r}")
        need(self.grid_size % self.n_bins == 0, f"grid_size ({self.grid_size}) must be a multiple of n_bins ({self.n_bins}); e.g. n_bins=256, grid_size=4096")
        need(isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0, f"eps must be a finite number ≥ 0, got {self.eps!r}")
        need(isinstance(self.density_scale, (int, float)) and 0 < self.density_scale < 1, f"density_scale must be in (0, 1), got {self.density_scale!r}")
        need(isinstance(self.density_linear, (int, float)) and self.density_scale < self.density_linear, f"density_linear must be > density_scale ({self.density_scale}), got {self.density_linear!r}")
        if isinstance(self.bandwidth, str):
            need(self.bandwidth == "silverman", f"bandwidth must be a positive number (u units) or 'silverman', got {self.bandwidth!r}")
        else:
            need(isinstance(self.bandwidth, (int, float)) and self.bandwidth > 0, f"bandwidth must be > 0, got {self.bandwidth!r}")
        need(self.chunk_size is None or (isinstance(self.chunk_size, int) and self.chunk_size >= 1), f"chunk_size must be ≥ 1 or None, got {self.chunk_size!r}")
        need(self.hvp_method in HVP_METHODS, f"hvp_method must be one of {list(HVP_METHODS)}, got {self.hvp_method!r}")
        need(self.ps_representative in ("quantile", "mean"), f"ps_representative must be 'quantile' or 'mean', got {self.ps_representative!r}")
        need(self.reorth in ("auto", "full", "half", "none"), f"reorth must be one of ['auto', 'full', 'half', 'none'], got {self.reorth!r}")
        need(self.memory_budget is None or (isinstance(self.memory_budget, int) and not isinstance(self.memory_budget, bool) and self.memory_budget > 0),
             f"memory_budget must be a number of bytes > 0 or None (0.1 of the available memory), got {self.memory_budget!r}; e.g. memory_budget=2_000_000_000")
        need(self.dtype in DTYPES, f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        need(0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence!r}")
        need(self.neutral_tol >= 0, f"neutral_tol must be ≥ 0, got {self.neutral_tol!r}")
        need(self.lyapunov_warmup < self.lyapunov_steps, f"lyapunov_warmup ({self.lyapunov_warmup}) must be below lyapunov_steps ({self.lyapunov_steps})")
        if self.params is not None:
            need(isinstance(self.params, (list, tuple)) and all(isinstance(p, str) for p in self.params),
                 f"params must be a list of name patterns or None, got {self.params!r}")
        return self
