"""``EstimateConfig``: every knob of the SD estimators, with documented defaults.

Recipes are YAML views of this dataclass, so every field is a plain type (str, int,
float, bool, list of str, or ``None``). The config validates itself on construction
(:meth:`EstimateConfig.validate`), raising :class:`~sdcompress.config.FieldError`
naming the field, the value and a fix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal

from sdcompress.config import FieldError, Validated, is_int, is_number, need_int
from sdcompress.errors import ConfigError

METHODS = ("exact", "slq", "kde", "ps", "lyapunov")
DENSITY_METHODS = ("slq", "kde", "ps")
DTYPES = ("model", "float64")


@dataclass
class EstimateConfig(Validated):
    """Settings of :func:`~sdcompress.estimator.estimate_sd`.

    Attributes:
        method: ``"ps"`` (default: pseudo-spectrum from SLQ; matrix-free, any size, for
            ~4% of exact's Hessian-vector products; measured on the digits MLP against
            exact SD: within 0.4% when SD ≈ d (no weight decay, 48 runs) but off by up to
            10.4% with weight decay 1e-3–3e-2, where SD/d ≈ 0.3–0.9; results/README.md
            §1), ``"kde"``, ``"slq"`` (histogram), ``"exact"``
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
        lyapunov_tol: convergence tolerance of the Lyapunov frame (``"auto"``:
            ½ |ln(1 − η·wd)|, 1e-3 without weight decay; a number; ``None``: no test, run
            all ``lyapunov_steps``). With a tolerance, ``lyapunov_steps`` is a cap, a
            second frame started the other way (random if the reported one is warm, and
            vice versa) rides along (twice the products per step, one gradient graph,
            plus one warm-start Lanczos run) and the run stops once the two frames'
            exponents and dimensions agree and are stable (see
            :mod:`sdcompress.estimator.lyapunov_sgd`); ``SDEstimate.converged`` says
            whether they did.
        lyapunov_check_every: steps between convergence checks.
        lyapunov_warm_start: ``"jacobian"`` (start the frame from the m eigenvectors of the
            first step's Jacobian with the largest |eigenvalue|, one Lanczos run of
            2m + 20 products) or ``"random"``.
    """

    SECTION: ClassVar[str] = "estimate"

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
    lyapunov_tol: float | Literal["auto"] | None = "auto"
    lyapunov_check_every: int = 50
    lyapunov_warm_start: Literal["jacobian", "random"] = "jacobian"

    def with_overrides(self, **overrides: Any) -> "EstimateConfig":
        """A copy with some fields replaced (unknown names are errors; the copy is validated).

        Raises:
            ConfigError: an unknown field name, or a value out of range.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown estimator setting(s) {unknown}; known settings: {sorted(known)}")
        return replace(self, **overrides) if overrides else self

    def validate(self) -> "EstimateConfig":
        """Check every field; returns ``self`` (run on construction).

        Raises:
            FieldError: a field out of range, naming it (``estimate.NAME``), the value and the fix.
        """
        from sdcompress.linalg.hvp import HVP_METHODS

        s = self.SECTION

        def need(ok: bool, name: str, rule: str, fix: str = "") -> None:
            if not ok:
                raise FieldError(s, name, rule, getattr(self, name), fix)

        need(self.method in METHODS, "method", f"one of {list(METHODS)}")
        for name in ("n_batches", "slq_runs", "lanczos_steps", "n_quantiles", "n_bins", "grid_size", "max_dense_params",
                     "lyapunov_exponents", "lyapunov_steps"):
            need_int(s, name, getattr(self, name), 1)
        need_int(s, "n_bootstrap", self.n_bootstrap, 0, "0 gives no interval")
        need_int(s, "lyapunov_warmup", self.lyapunov_warmup, 0)
        need_int(s, "seed", self.seed, 0)
        need(self.grid_size % self.n_bins == 0, "grid_size", f"a multiple of n_bins ({self.n_bins})", "e.g. n_bins=256, grid_size=4096")
        need(is_number(self.eps) and self.eps >= 0, "eps", "a finite number ≥ 0")
        need(is_number(self.density_scale) and 0 < self.density_scale < 1, "density_scale", "in (0, 1)")
        need(is_number(self.density_linear) and self.density_scale < self.density_linear, "density_linear",
             f"a number > density_scale ({self.density_scale})")
        if isinstance(self.bandwidth, str):
            need(self.bandwidth == "silverman", "bandwidth", "a positive number (u units) or 'silverman'")
        else:
            need(is_number(self.bandwidth) and self.bandwidth > 0, "bandwidth", "a positive number (u units) or 'silverman'")
        need(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1), "chunk_size", "an integer ≥ 1 or null")
        need(self.hvp_method in HVP_METHODS, "hvp_method", f"one of {list(HVP_METHODS)}")
        need(self.ps_representative in ("quantile", "mean"), "ps_representative", "'quantile' or 'mean'")
        need(self.reorth in ("auto", "full", "half", "none"), "reorth", "one of ['auto', 'full', 'half', 'none']")
        need(self.memory_budget is None or (is_int(self.memory_budget) and self.memory_budget > 0), "memory_budget",
             "a number of bytes > 0, or null for 0.1 of the available memory", "e.g. memory_budget=2000000000")
        need(self.dtype in DTYPES, "dtype", f"one of {list(DTYPES)}")
        need(is_number(self.confidence) and 0 < self.confidence < 1, "confidence", "in (0, 1)")
        need(is_number(self.neutral_tol) and self.neutral_tol >= 0, "neutral_tol", "a finite number ≥ 0")
        if isinstance(self.lyapunov_tol, str) or self.lyapunov_tol is None:
            need(self.lyapunov_tol in ("auto", None), "lyapunov_tol", "a number > 0, 'auto' or null (no convergence test)")
        else:
            need(is_number(self.lyapunov_tol) and self.lyapunov_tol > 0, "lyapunov_tol",
                 "a number > 0, 'auto' or null (no convergence test)", "e.g. lyapunov_tol=0.001")
        need_int(s, "lyapunov_check_every", self.lyapunov_check_every, 1)
        need(self.lyapunov_warm_start in ("jacobian", "random"), "lyapunov_warm_start", "'jacobian' or 'random'")
        need(self.lyapunov_warmup < self.lyapunov_steps, "lyapunov_warmup", f"below lyapunov_steps ({self.lyapunov_steps})",
             "the warm-up steps are discarded before averaging")
        if self.params is not None:
            need(isinstance(self.params, (list, tuple)) and len(self.params) > 0
                 and all(isinstance(p, str) and p for p in self.params),
                 "params", "a non-empty list of name patterns, or null for all parameters")
        return self
