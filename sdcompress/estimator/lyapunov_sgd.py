"""Lyapunov exponents and dominant Lyapunov subspaces of the SGD map (DESIGN.md, estimator).

The map is one SGD step on the batch of step t (PAPER.md §1),

    w_{t+1} = w_t − η (∇L_{B_t}(w_t) + wd · w_t),   J_t = (1 − η·wd) I − η H_{B_t}(w_t),

run from the model's current parameters on a *copy* (the model is never modified). The
step and its tangent map come from ONE gradient graph per step (:func:`sgd_step_and_tangents`):
g = ∇L_{B_t}(w_t) is built once with its graph kept, the SGD step uses g, and the m
Hessian-vector products H Q are backward passes through the same graph (or, on CUDA,
one ``vmap(jvp(grad))`` whose primal output is g); a minibatch is split across processes
under ``torch.distributed`` and the shards are all-reduced. The QR method
(:func:`~sdcompress.estimator.lyapunov.lyapunov_spectrum`) gives the top-m multi-step
exponents Λ_1 ≥ … ≥ Λ_m, their Kaplan–Yorke (Lyapunov) dimension D_Λ, and the final
tangent frame Q, whose columns span the directions the attractor expands most.

Module energy. For Q (d × m) orthonormal, ‖Q‖_F² = m; the share of a parameter tensor
P (rows I_P of Q) is Σ_{i ∈ I_P} Σ_j Q_ij² / m, and a module's share (the module that
owns the parameter, ``"layers.0"`` for ``"layers.0.weight"``) is the sum over its
parameters. Shares sum to 1: they say where in the network the dominant subspace lives.
Per exponent, column j's share in a module is Σ_{i ∈ I_module} Q_ij² (columns have unit
norm). Both are divided by the actual norms, so rounding in a float32 Q cannot make the
shares miss 1.

Warm start and convergence (PAPER.md §8: a random frame of m = 16 on the digits MLP at
EoS sits in the weight-decay-contracted bulk for ~1,000 steps). ``lyapunov_warm_start``
``"jacobian"`` starts the frame from the m eigenvectors of the first step's Jacobian
J_0 = (1 − η·wd) I − η H_{B_0}(w_0) with the largest |eigenvalue| (a Lanczos run of
``2m + 20`` products on J_0, both ends of the spectrum), ``"random"`` from a seeded
Gaussian frame. ``lyapunov_tol`` turns ``lyapunov_steps`` into a cap and carries a
second frame along the same orbit, started the other way (at random, seed + 1, when the
reported frame is warm-started; from the Jacobian when it is random): its m tangents
share the step's gradient graph with the main frame's. At every check the window is the last
half of the steps (the first half is burn-in) and the run stops as soon as
:func:`~sdcompress.estimator.lyapunov.frames_test` passes: each frame's half-means agree
within ``tol``, their standard errors are ≤ ``tol`` / 2, the two frames' sorted
exponents agree within ``tol`` and their Lyapunov dimensions within one direction. A frame stuck in the bulk is stable too, so stability of
one frame is not enough (on the digits MLP a random frame "passes" the halves test after
100 steps at the bulk's −0.002), and neither are two random frames (they agreed at the
bulk after 50 steps); a warm and a random frame agree only once the random one has left
the bulk. ``SDEstimate.converged`` says whether the test
passed within the cap and ``convergence`` holds its numbers; an unconverged frame is
reported as such and its subspace must not be called dominant.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdcompress.config import FieldError, check_step_size, is_int
from sdcompress.data.core import Batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, EstimatorError
from sdcompress.estimator.batches import BatchSource
from sdcompress.estimator.lyapunov import block_bootstrap_dimension, lyapunov_spectrum
from sdcompress.estimator.result import SDEstimate
from sdcompress.linalg.distributed import all_reduce_sum, is_distributed, shard_batch
from sdcompress.linalg.hvp import resolve_method
from sdcompress.linalg.lanczos import lanczos
from sdcompress.linalg.operators import HessianOperator, StepJacobian
from sdcompress.models.functional import FunctionalLoss, ParamLayout

logger = logging.getLogger(__name__)

ROOT_MODULE = "(root)"  # module name of parameters owned by the top-level module

# Defaults of the EstimateConfig fields read here (used when config is None or lacks them).
_DEFAULTS: dict[str, Any] = {
    "lyapunov_exponents": 16,
    "lyapunov_steps": 100,
    "lyapunov_warmup": 20,
    "seed": 0,
    "chunk_size": 16,
    "neutral_tol": 1e-6,
    "n_bootstrap": 200,
    "confidence": 0.95,
    "hvp_method": None,  # None: the default path ("auto")
    "lyapunov_tol": None,  # None: no convergence test, run all steps; "auto": see resolve_tol
    "lyapunov_check_every": 50,
    "lyapunov_warm_start": "random",
}
WARM_STARTS = ("random", "jacobian")
#: with hvp_method "auto" on CPU, models up to this size take the m products as vmapped
#: backward passes (measured, 1 thread, m = 16: 5.9 vs 14.3 ms on the digits MLP, d = 1,440;
#: 0.86 vs 0.74 s on tiny-gpt2, d = 35,744, where the loop stays)
BATCHED_BACKWARD_MAX_D = 8192
_N_BLOCKS = 10


def module_of(param_name: str) -> str:
    """The module that owns a parameter: ``"layers.0.weight"`` → ``"layers.0"``."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ROOT_MODULE


def subspace_energy(Q: Tensor, layout: ParamLayout) -> dict[str, Any]:
    """Where the columns of an orthonormal Q (d × m) live, by parameter and by module.

    Args:
        Q: (d, m) orthonormal basis in ``layout``'s flat order.
        layout: the flat parameter layout.

    Returns:
        ``{"param_energy": {name: share}, "module_energy": {module: share},
        "exponent_energy": {module: [share of column j, j = 1..m]}}``; shares of
        ``param_energy`` and ``module_energy`` sum to 1, and for each column j the
        ``exponent_energy`` shares over modules sum to 1.
    """
    sq = Q.detach().to(torch.float64).square()
    # normalise by the actual norms (= m and 1 for an orthonormal Q) so that a float32 Q,
    # orthonormal only to ~1e-7, still gives shares that sum to 1 to float64 rounding
    col_norms = sq.sum(dim=0)  # (m,)
    total = float(col_norms.sum())
    per_param = {n: sq[s].sum(dim=0) for n, s in layout.slices().items()}  # name -> (m,)
    per_module: dict[str, Tensor] = {}
    for n, col in per_param.items():
        mod = module_of(n)
        per_module[mod] = per_module[mod] + col if mod in per_module else col.clone()
    return {
        "param_energy": {n: float(col.sum()) / total for n, col in per_param.items()},
        "module_energy": {mod: float(col.sum()) / total for mod, col in per_module.items()},
        "exponent_energy": {mod: (col / col_norms).cpu().tolist() for mod, col in per_module.items()},
    }


def sgd_step_and_tangents(
    floss: FunctionalLoss,
    batch: Batch,
    w: Tensor,
    Q: Tensor,
    *,
    lr: float,
    weight_decay: float,
    method: str = "auto",
    chunk_size: int | None = 16,
) -> tuple[Tensor, Tensor]:
    """One SGD step and its Jacobian on a frame, from one gradient graph.

    w' = w − η(g + wd·w) and Z = J Q = (1 − η·wd) Q − η H Q with g = ∇L_B(w) and H = ∇²L_B(w).
    ``"double-backward"`` (the CPU default): g is computed once with ``create_graph=True``
    and each column of H Q is one more backward pass through that graph (with ``"auto"``
    and d ≤ ``BATCHED_BACKWARD_MAX_D``, chunks of ``chunk_size`` columns go through one
    vmapped backward pass, ``is_grads_batched``). ``"vmap"`` (the
    CUDA default for blocks): ``vmap(jvp(grad))`` over Q's columns in chunks; the primal
    output of the first chunk is g. ``"loop"``: the same jvp one column at a time. Under
    ``torch.distributed`` each process takes its shard of B and g and H Q are all-reduced.

    Args:
        floss: the functional loss.
        batch: the minibatch B_t.
        w: the point w_t (d,).
        Q: (d, m) tangent frame.
        lr: η.
        weight_decay: wd.
        method: Hessian-vector product path (``"auto"`` as :func:`~sdcompress.linalg.hvp.resolve_method`).
        chunk_size: columns per vmap call (``None``: all).

    Returns:
        (w', Z): the next point (d,) and J Q (d, m), detached, in w's dtype.
    """
    shard, weight = shard_batch(batch)
    m = Q.shape[1]
    how = resolve_method(method, m, w.device)  # type: ignore[arg-type]
    if how == "double-backward":
        # "auto" on a small model: one vmapped backward pass per chunk of columns
        # (is_grads_batched), 2.3× faster than a loop on the digits MLP, slower on tiny-gpt2
        batched = method == "auto" and floss.d <= BATCHED_BACKWARD_MAX_D and m > 1
        size = m if chunk_size is None else max(1, chunk_size)
        x = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(floss(x, shard), x, create_graph=True)
            if batched:
                rows = [torch.autograd.grad(g, x, Q[:, i : i + size].T.contiguous(), retain_graph=True, is_grads_batched=True)[0]
                        for i in range(0, m, size)]
                HQ = torch.cat(rows, dim=0).T.detach()
            else:
                rows = [torch.autograd.grad(g, x, Q[:, i], retain_graph=True)[0] for i in range(m)]
                HQ = torch.stack(rows, dim=1).detach()
        g = g.detach()
        del rows, x
    else:
        gfun = torch.func.grad(lambda y: floss(y, shard))

        def both(v: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.jvp(gfun, (w,), (v,))

        size = m if (how == "loop" or chunk_size is None) else max(1, chunk_size)
        if how == "loop":
            size = 1
        parts, g = [], None
        for i in range(0, m, size):
            block = Q[:, i : i + size]
            if size == 1:
                gs, hv = both(block[:, 0])
                gs, hv = gs[None], hv[None]
            else:  # rows out (k, d): an unbatched primal cannot be expanded along dim 1
                gs, hv = torch.func.vmap(both, in_dims=1, out_dims=0)(block)
            g = gs[0] if g is None else g
            parts.append(hv.T)
        HQ = torch.cat(parts, dim=1).detach()
        g = g.detach()  # type: ignore[union-attr]
    if is_distributed():
        g = all_reduce_sum(g * weight)
        HQ = all_reduce_sum(HQ * weight)
    shrink = 1.0 - lr * weight_decay
    return w - lr * (g + weight_decay * w), shrink * Q - lr * HQ


def jacobian_warm_frame(
    floss: FunctionalLoss,
    batch: Batch,
    w: Tensor,
    m: int,
    *,
    lr: float,
    weight_decay: float,
    steps: int | None = None,
    seed: int = 0,
    chunk_size: int | None = 16,
    hvp_kw: dict[str, Any] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The m eigenvectors of J = (1 − η·wd) I − η H_B(w) with the largest |eigenvalue|.

    One Lanczos run (full reorthogonalisation, basis kept: ``steps`` × d numbers) on the
    step Jacobian from a seeded Gaussian vector; both ends of J's spectrum converge first,
    and the Ritz vectors of the m largest |Ritz values| form the frame.

    Args:
        floss: the functional loss.
        batch: the minibatch of the first Lyapunov step.
        w: the point.
        m: frame width (≤ d).
        lr, weight_decay: the step map's η and wd.
        steps: Lanczos steps (default ``min(d, 2m + 20)``).
        seed: seed of the start vector.
        chunk_size: vectors per vmap call of the Hessian operator.
        hvp_kw: extra keyword arguments of :class:`HessianOperator` (``method``).

    Returns:
        ((d, m) orthonormal frame in w's dtype, info with ``"warm_start_hvp"``, the Ritz
        values ``"warm_start_ritz"`` of the chosen vectors and their stretch ``ln|θ|``).
    """
    d = floss.d
    steps = min(d, 2 * m + 20) if steps is None else min(d, max(steps, m))
    J = StepJacobian(HessianOperator(floss, batch, w, chunk_size=chunk_size, **(hvp_kw or {})), lr, weight_decay)
    g = torch.Generator().manual_seed(seed + 7919)
    v0 = torch.randn(d, generator=g, dtype=torch.float64).to(dtype=w.dtype, device=w.device)
    res = lanczos(J, v0, steps, keep_basis=True)
    theta, S = res.ritz()
    k = min(m, len(theta))
    pick = torch.argsort(theta.abs(), descending=True)[:k]
    frame = (S[:, pick].T.to(res.Q.dtype).to(res.Q.device) @ res.Q).T  # type: ignore[union-attr]  # (d, k)
    if k < m:  # Lanczos broke down early (an invariant subspace): fill up at random
        extra = torch.randn(d, m - k, generator=g, dtype=torch.float64).to(dtype=w.dtype, device=w.device)
        frame = torch.cat([frame, extra], dim=1)
    info = {
        "warm_start_hvp": int(J.n_hvp),
        "warm_start_ritz": theta[pick].tolist(),
        "warm_start_log_stretch": torch.log(theta[pick].abs().clamp_min(1e-300)).tolist(),
        "warm_start_lanczos_steps": int(res.steps),
    }
    return frame.contiguous(), info


def resolve_tol(tol: float | str | None, lr: float, weight_decay: float) -> float | None:
    """The convergence tolerance: a number as given, ``"auto"`` → ½ |ln(1 − η·wd)| (1e-3 without wd).

    ``"auto"`` is half the distance between the weight-decay-contracted bulk's exponent
    ln(1 − η·wd) and 0, so a frame still in the bulk cannot agree with one that has found
    expanding directions (measured on the digits MLP at η = 0.2, wd = 1e-2: the bulk sits
    at −0.0020, the dominant exponents at +0.0001 … +0.0019).

    Raises:
        ConfigError: a string other than ``"auto"``, or a number that is not finite and > 0.
    """
    if tol is None:
        return None
    if isinstance(tol, str):
        if tol != "auto":
            raise ConfigError(f"lyapunov_tol must be a number > 0, 'auto' or None, got {tol!r}")
        shrink = abs(1.0 - lr * weight_decay)
        return 0.5 * abs(math.log(shrink)) if weight_decay > 0 and 0 < shrink != 1.0 else 1e-3
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ConfigError(f"lyapunov_tol must be a number > 0, 'auto' or None, got {tol!r}")
    return float(tol)


def _setting(config: Any, name: str) -> Any:
    return getattr(config, name, _DEFAULTS[name]) if config is not None else _DEFAULTS[name]


def lyapunov_sd(
    floss: FunctionalLoss,
    batches: BatchStream | Iterable[Batch],
    *,
    lr: float,
    weight_decay: float = 0.0,
    config: Any | None = None,
) -> SDEstimate:
    """Multi-step Lyapunov exponents, Lyapunov dimension and subspace of SGD on a model.

    Runs ``lyapunov_steps`` SGD steps w ↦ w − η(∇L_{B_t}(w) + wd·w) from the model's
    current parameters (on a copy), tracking m = ``lyapunov_exponents`` tangent vectors
    with J_t = (1 − η·wd) I − η H_{B_t}(w_t) applied by Hessian-vector products; the first
    ``lyapunov_warmup`` steps are discarded. See :func:`lyapunov_spectrum`.

    Uncertainty: block bootstrap of the per-step log-stretches ln R_t[i, i] over the
    averaged steps (10 contiguous blocks, ``n_bootstrap`` replicates, ``confidence``
    percentile interval of the dimension); ``extras["exponent_stderr"]`` is the standard error of each exponent
    from the spread of the block means. It measures the sampling noise along this one
    trajectory, not the bias of a finite run.

    Args:
        floss: the functional loss (model and parameter subset, d = ``floss.d``).
        batches: a :class:`BatchStream` (batch t at step t) or batches consumed in order.
        lr: step size η > 0.
        weight_decay: coupled L2 coefficient wd ≥ 0.
        config: an ``EstimateConfig`` (or ``None``); reads ``lyapunov_exponents`` (16),
            ``lyapunov_steps`` (100, warm-up included), ``lyapunov_warmup`` (20), ``seed``
            (0, the initial frame and the bootstrap), ``chunk_size`` (16, vectors per
            vmap call), ``hvp_method`` (the operator's default), ``n_bootstrap`` (200),
            ``confidence`` (0.95) and ``neutral_tol`` (1e-6: an exponent is counted in
            ``n_neutral`` when |Λ − ln|1 − η·wd|| ≤ neutral_tol, the exponent of a
            zero-curvature direction), ``lyapunov_tol`` (``None``: no test;
            ``"auto"``: :func:`resolve_tol`), ``lyapunov_check_every`` (50) and
            ``lyapunov_warm_start`` (``"random"`` here; ``EstimateConfig`` defaults
            to ``"jacobian"``).

    Returns:
        An :class:`SDEstimate` with ``method="lyapunov"``: ``exponents`` (m, sorted
        decreasing), ``sd`` = D_Λ (a lower bound, SD ≥ m, when ``lower_bound``),
        ``subspace`` the final Q (d, m) in the model's dtype with column j belonging to
        ``exponents[j]``, and ``extras`` with ``module_energy``, ``param_energy``,
        ``exponent_energy`` (columns in the order of ``exponents``), ``exponent_stderr``,
        ``running_exponents`` and ``running_sd`` (per averaged step, for convergence
        plots) and ``n_grad``; ``converged`` and ``convergence`` (the test's numbers,
        steps and products) when a tolerance was set.

    Raises:
        ConfigError: lr ≤ 0 or not finite, weight_decay < 0.
        EstimatorError: m outside [1, d], steps ≤ warmup, an empty or too short batch
            stream, ``floss`` not a :class:`FunctionalLoss`.
        DivergenceError: the trajectory became non-finite (η too large).
    """
    if not isinstance(floss, FunctionalLoss):
        raise EstimatorError(f"floss must be a sdcompress.models.FunctionalLoss, got {type(floss).__name__}")
    lr, weight_decay = check_step_size(lr, weight_decay)
    m = _setting(config, "lyapunov_exponents")
    if is_int(m) and m > floss.d:  # under the config's name (the QR method's own check says n_exponents)
        raise FieldError("estimate", "lyapunov_exponents", f"at most d = {floss.d} (the parameters estimated over)", m,
                         f"track at most {floss.d} directions")
    steps = _setting(config, "lyapunov_steps")
    warmup = _setting(config, "lyapunov_warmup")
    seed = _setting(config, "seed")
    chunk_size = _setting(config, "chunk_size")
    neutral_tol = _setting(config, "neutral_tol")
    n_boot, confidence = _setting(config, "n_bootstrap"), _setting(config, "confidence")
    hvp_method = _setting(config, "hvp_method") or "auto"
    tol = resolve_tol(_setting(config, "lyapunov_tol"), lr, weight_decay)
    check_every = _setting(config, "lyapunov_check_every")
    warm = _setting(config, "lyapunov_warm_start")
    if warm not in WARM_STARTS:
        raise ConfigError(f"lyapunov_warm_start must be one of {list(WARM_STARTS)}, got {warm!r}")
    start = time.perf_counter()
    w0 = floss.params_vector()  # a detached clone: the model's parameters are never touched
    source = BatchSource(batches, w0.device)  # the estimators' one batch source
    source.check_steps(steps if isinstance(steps, int) else 0)
    n_hvp = [0]

    def step_and_tangents(w: Tensor, Q: Tensor, t: int) -> tuple[Tensor, Tensor]:
        n_hvp[0] += Q.shape[1]
        return sgd_step_and_tangents(floss, source(t), w, Q, lr=lr, weight_decay=weight_decay,
                                     method=hvp_method, chunk_size=chunk_size)

    def sgd_step(w: Tensor, t: int) -> Tensor:  # unused by the loop (step_jvp_fn is given)
        return step_and_tangents(w, w[:, None], t)[0]

    # the convergence test needs two DIFFERENTLY started frames (one warm, one random: two random
    # frames agree while both sit in the bulk); lyapunov_warm_start says which one is reported
    warm_info: dict[str, Any] = {}
    jac = None
    if (warm == "jacobian" or tol is not None) and isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= floss.d:
        hvp_kw = {} if hvp_method == "auto" else {"method": hvp_method}
        jac, warm_info = jacobian_warm_frame(floss, source(0), w0, m, lr=lr, weight_decay=weight_decay, seed=seed,
                                             chunk_size=chunk_size, hvp_kw=hvp_kw)
        n_hvp[0] += warm_info["warm_start_hvp"]
    q0, twin = (jac, None) if warm == "jacobian" else (None, jac)
    res = lyapunov_spectrum(
        sgd_step, w0, m, steps, warmup, seed=seed, q0=q0, step_jvp_fn=step_and_tangents, tol=tol,
        check_every=check_every, twin_seed=None if tol is None else seed + 1, twin_q0=twin, desc="Lyapunov (SGD)",
    )
    (low, high), stderr, n_blocks = block_bootstrap_dimension(
        res.log_stretch, n_blocks=_N_BLOCKS, n_boot=n_boot, level=confidence, seed=seed
    )
    order = res.order
    subspace = res.Q[:, torch.as_tensor(order, device=res.Q.device)]
    energy = subspace_energy(subspace, floss.layout)
    kept = res.steps - res.warmup
    shrink = abs(1 - lr * weight_decay)  # a zero-curvature direction's stretch per step
    neutral = math.log(shrink) if shrink > 0 else -math.inf
    block_len = kept // n_blocks if n_blocks else 0
    interval = None if math.isnan(low) else (low, high)
    uncertainty = (
        f"block bootstrap {100 * confidence:g}% over {n_blocks} blocks of {block_len} steps "
        f"({kept} averaged steps, {n_boot} replicates)"
        if interval is not None
        else f"none: {kept} averaged step(s) are too few for a block bootstrap"
    )
    extras = {
        **energy,
        "exponent_stderr": stderr[order].tolist(),
        "exponents_qr_order": res.exponents_qr.tolist(),
        "running_exponents": res.running[:, order].tolist(),
        "running_sd": res.running_dimension.tolist(),
        "n_grad": res.steps,  # one gradient graph per step, shared by the step and its m products
        "qr_methods": res.qr_methods,
        **warm_info,
    }
    settings = {
        "lyapunov_exponents": m,
        "lyapunov_steps": res.steps,
        "lyapunov_warmup": res.warmup,
        "seed": seed,
        "chunk_size": chunk_size,
        "bootstrap_blocks": n_blocks,
        "bootstrap_replicates": n_boot,
        "confidence": confidence,
        "hvp_method": hvp_method,
        "batches": source.description,
        "lyapunov_tol": tol,
        "lyapunov_check_every": check_every,
        "lyapunov_warm_start": warm,
        "lyapunov_max_steps": steps,
    }
    est = SDEstimate(
        method="lyapunov",
        sd=float(res.dimension),
        j_star=int(res.j_star),
        exponents=res.exponents,
        d=floss.d,
        n_hvp=n_hvp[0],
        wall_time_s=time.perf_counter() - start,
        lr=float(lr),
        weight_decay=float(weight_decay),
        sd_interval=interval,
        uncertainty=uncertainty,
        lower_bound=bool(res.lower_bound),
        n_neutral=int(np.sum(np.abs(res.exponents - neutral) <= neutral_tol)),
        neutral_tol=float(neutral_tol),
        settings=settings,
        extras=extras,
        converged=res.converged,
        convergence={**res.convergence, "hvp": n_hvp[0], "warm_start": warm} if res.convergence else {},
        subspace=subspace,
    )
    logger.debug("%s", est.summary())  # estimate_sd (the entry point) logs it at INFO
    return est


__all__ = ["lyapunov_sd", "module_of", "subspace_energy"]
