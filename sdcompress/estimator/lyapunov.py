"""Multi-step Lyapunov exponents by the QR (Benettin) method (PAPER.md §3, last part).

For a map x_{t+1} = f_t(x_t) on R^d with Jacobians J_t = ∂f_t/∂x (x_t), the Lyapunov
exponents are the growth rates of the product J_{T−1} ⋯ J_1 J_0 (Oseledets):

    Λ_i = lim_{T→∞} (1/T) ln σ_i(J_{T−1} ⋯ J_0).

Benettin's method tracks m orthonormal tangent vectors Q (d × m) along the orbit:

    Z_t = J_t Q_{t−1},   Q_t R_t = qr(Z_t)  (diag R_t > 0),   Λ_i ≈ mean_t ln R_t[i, i],

which needs only m Jacobian-vector products and one d × m QR per step. The first k
columns of Q span the k most expanding directions (the dominant Lyapunov subspace), so
the finite-time estimates come out in decreasing order asymptotically; after a finite
number of steps near-equal exponents can be out of order, so the result sorts them and
keeps the permutation. The Kaplan–Yorke formula of PAPER.md §2 applied to the sorted Λ
gives the Lyapunov dimension D_Λ; when the running sum of all m tracked exponents is
still ≥ 0 the dimension is only known to be ≥ m and the result says so.

Numerics: the QR is Cholesky-QR2 in the frame's own dtype
(:func:`sdcompress.linalg.qr.cholesky_qr`: float64 Gram matrices accumulated over row
blocks, no float64 d × m copy), R's diagonal is float64 and the log-sum accumulates in
float64; Q stays in the state's dtype (float32 models stay float32 where the cost is).

Convergence. With ``tol`` set, ``steps`` is a cap: every ``check_every`` steps the
averaged window is cut into halves and the run stops as soon as
:func:`halves_test` passes (each sorted exponent's half-means agree within ``tol`` and
its standard error over the window is ≤ ``tol`` / 2, so neither a drifting frame nor a
short noisy run passes). The result records whether it passed and the statistics.

The SGD map of a model (:func:`~sdcompress.estimator.lyapunov_sgd.lyapunov_sd`) lives in
:mod:`sdcompress.estimator.lyapunov_sgd`, which imports this module (not the reverse).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp, vmap

from sdcompress.errors import DivergenceError, EstimatorError
from sdcompress.estimator.kaplan_yorke import critical_index, sharpness_dimension
from sdcompress.linalg.qr import cholesky_qr
from sdcompress.progress import progress

logger = logging.getLogger(__name__)

#: ``jvp_fn(x, Q, t) -> J_t(x) Q`` for a (d, m) block of tangent vectors.
JvpFn = Callable[[Tensor, Tensor, int], Tensor]
#: ``step_jvp_fn(x, Q, t) -> (f_t(x), J_t(x) Q)``: the step and the tangents from one evaluation.
StepJvpFn = Callable[[Tensor, Tensor, int], "tuple[Tensor, Tensor]"]
StepFn = Callable[..., Tensor]

# ln of the smallest positive float64: the floor for a stretch factor that is exactly 0
# (a singular Jacobian, e.g. η·a = 1 on a quadratic), so one such step cannot turn the
# average into −inf while still dominating it, as it should.
_LOG_TINY = math.log(np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class LyapunovResult:
    """The top-m Lyapunov exponents of a map along one orbit.

    Attributes:
        exponents: (m,) float64, sorted decreasing (``exponents_qr[order]``).
        exponents_qr: (m,) float64 in QR column order (column i of ``Q`` ↔ entry i).
        order: (m,) permutation with ``exponents == exponents_qr[order]``.
        dimension: Kaplan–Yorke dimension of ``exponents``; a lower bound when ``lower_bound``.
        j_star: critical index (leading exponents with running sum ≥ 0).
        lower_bound: the running sum of all m tracked exponents never turned negative and
            m < d: the dimension is ≥ m, and ``dimension`` (= m) is not the true value.
        state: the state after the last step, x_steps.
        Q: (d, m) orthonormal tangent frame after the last step, in the state's dtype and
            QR column order (pass it as ``q0`` to continue the run).
        log_stretch: (steps − warmup, m) float64 ln R_t[i, i] of each averaged step, QR order.
        running: (steps − warmup, m) float64 running means of ``log_stretch`` (the exponent
            estimate after each step, for convergence plots), QR order.
        d: state dimension.
        steps: total steps taken (warm-up included).
        warmup: steps discarded before averaging (with a tolerance: the burn-in actually
            used, max(warmup, steps // 2)).
        n_jvp: Jacobian-vector products spent (m per step and frame, warm-up included).
        wall_time_s: wall-clock seconds.
        converged: whether the convergence test passed (``None``: no test was asked for).
        convergence: the last test's settings and statistics (see :func:`halves_test`),
            ``{}`` without a test.
        qr_methods: how often each QR path ran (``{"cholesky-qr2": steps}`` normally).
    """

    exponents: np.ndarray
    exponents_qr: np.ndarray
    order: np.ndarray
    dimension: float
    j_star: int
    lower_bound: bool
    state: Tensor
    Q: Tensor
    log_stretch: np.ndarray
    running: np.ndarray
    d: int
    steps: int
    warmup: int
    n_jvp: int
    wall_time_s: float
    converged: bool | None = None
    convergence: dict[str, Any] = field(default_factory=dict)
    qr_methods: dict[str, int] = field(default_factory=dict)

    @property
    def m(self) -> int:
        return len(self.exponents)

    @property
    def running_dimension(self) -> np.ndarray:
        """(steps − warmup,) Kaplan–Yorke dimension of the sorted running estimate after each step."""
        return np.array([_sorted_dimension(r) for r in self.running])

    def summary(self) -> str:
        """One line: dimension (with ≥ when a lower bound), top exponent, cost."""
        bound = "≥ " if self.lower_bound else ""
        return (
            f"Lyapunov dimension {bound}{self.dimension:.3f} from m = {self.m} of d = {self.d} "
            f"(Λ_1 = {self.exponents[0]:.4g}, Σ = {self.exponents.sum():.4g}); "
            f"{self.steps - self.warmup} averaged steps after {self.warmup} warm-up, {self.n_jvp} JVPs"
        )


def takes_time(step: StepFn) -> bool:
    """Whether ``step`` has two required positional parameters (and is called ``step(x, t)``).

    Parameters with defaults do not count, so ``f(x, a=1.4)`` is called as ``f(x)``.
    """
    try:
        params = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: step(x)
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) >= 2


def default_jvp(step: Callable[[Tensor, int], Tensor], chunk_size: int | None = None) -> JvpFn:
    """``(x, Q, t) ↦ J_t(x) Q`` by forward-mode AD, ``vmap`` over Q's columns in chunks.

    Args:
        step: the map as ``step(x, t)``.
        chunk_size: columns per ``vmap`` call (``None``: all m at once); bounds memory.

    Returns:
        A ``jvp_fn`` for :func:`lyapunov_spectrum`: (d,), (d, m), t → (d, m).
    """

    def apply(x: Tensor, Q: Tensor, t: int) -> Tensor:
        def tangent(v: Tensor) -> Tensor:
            return jvp(lambda y: step(y, t), (x,), (v,))[1]

        m = Q.shape[1]
        size = m if chunk_size is None else max(1, chunk_size)
        return torch.cat([vmap(tangent, in_dims=1, out_dims=1)(Q[:, i : i + size]) for i in range(0, m, size)], dim=1)

    return apply


def _check_inputs(x0: Tensor, n_exponents: int, steps: int, warmup: int) -> None:
    if not isinstance(x0, Tensor) or x0.ndim != 1 or not x0.is_floating_point():
        got = f"{type(x0).__name__} of shape {tuple(x0.shape)} and dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
        raise EstimatorError(f"x0 must be a flat floating-point tensor of shape (d,), got {got}; flatten the state first")
    d = x0.shape[0]
    if isinstance(n_exponents, bool) or not isinstance(n_exponents, int) or not 1 <= n_exponents <= d:
        raise EstimatorError(
            f"n_exponents must be an integer between 1 and the state dimension d = {d}, got {n_exponents!r}; "
            "track at most d tangent vectors"
        )
    for name, value in (("steps", steps), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise EstimatorError(f"{name} must be a non-negative integer, got {value!r}")
    if steps <= warmup:
        raise EstimatorError(
            f"steps ({steps}) must exceed warmup ({warmup}): nothing would be averaged; "
            "raise steps or lower warmup"
        )
    if not torch.isfinite(x0).all():
        raise EstimatorError("x0 has non-finite entries (nan or inf); start from a finite state")


def _initial_frame(x0: Tensor, m: int, seed: int, q0: Tensor | None) -> Tensor:
    d = x0.shape[0]
    if q0 is None:
        # CPU generator so the frame is the same on every device and every process
        g = torch.Generator().manual_seed(seed)
        q0 = torch.randn(d, m, generator=g, dtype=torch.float64)
    elif q0.shape != (d, m):
        raise EstimatorError(f"q0 must have shape (d, m) = ({d}, {m}), got {tuple(q0.shape)}")
    q0 = q0.detach().to(device=x0.device, dtype=x0.dtype)
    if not torch.isfinite(q0).all():
        raise EstimatorError("q0 must have full column rank and finite entries; pass m linearly independent columns")
    out = cholesky_qr(q0)
    diag = out.diag.abs()
    if out.method == "householder" or diag.min() <= 1e-12 * max(1.0, float(diag.max())):
        raise EstimatorError("q0 must have full column rank and finite entries; pass m linearly independent columns")
    return out.Q


def qr_positive(Z: Tensor) -> tuple[Tensor, Tensor, str]:
    """Thin QR of ``Z`` (d, m) in Z's dtype with R's diagonal non-negative (Cholesky-QR2).

    Args:
        Z: (d, m) block of stretched tangent vectors (no float64 copy is made).

    Returns:
        (Q, log_diag, method): Q (d, m) orthonormal in Z's dtype, log_diag (m,) float64
        ln R[i, i] (floored at ln of the smallest float64 when R[i, i] = 0), and the QR
        path taken (see :func:`sdcompress.linalg.qr.cholesky_qr`).
    """
    out = cholesky_qr(Z)
    log_diag = torch.log(out.diag.abs()).clamp_min(_LOG_TINY)
    return out.Q, log_diag, out.method


def halves_test(log_stretch: np.ndarray, tol: float, *, n_blocks: int = 10) -> dict[str, Any]:
    """Whether the running exponent estimates have settled: the two halves agree.

    The averaged steps are cut into a first and a second half; each half's mean
    log-stretch per QR column gives exponents, sorted decreasing. The test passes when

        max_i |Λ_i(first half) − Λ_i(second half)| ≤ tol   and   max_i SE_i ≤ tol / 2,

    with SE_i the standard error of the whole window's mean from ``n_blocks`` contiguous
    block means (successive steps are correlated). The first condition catches a frame
    still rotating towards the dominant subspace (its exponents drift), the second a
    window too short for its noise to be below the tolerance.

    Args:
        log_stretch: (n, m) ln R_t[i, i] of the averaged steps (QR order).
        tol: absolute tolerance on the exponents (per step, natural log).
        n_blocks: blocks of the standard error.

    Returns:
        ``{"test": "halves", "tol", "passed", "max_half_difference", "max_stderr",
        "first_half", "second_half", "dimension_first_half", "dimension_second_half",
        "averaged_steps"}`` (exponents sorted decreasing; differences nan when n < 4).
    """
    n, m = log_stretch.shape
    out: dict[str, Any] = {"test": "halves", "tol": float(tol), "averaged_steps": int(n)}
    if n < max(4, 2 * n_blocks):
        return {**out, "passed": False, "max_half_difference": None, "max_stderr": None,
                "first_half": [], "second_half": [], "dimension_first_half": None, "dimension_second_half": None}
    half = n // 2
    first = np.sort(log_stretch[:half].mean(axis=0))[::-1]
    second = np.sort(log_stretch[half:].mean(axis=0))[::-1]
    length = n // n_blocks
    means = log_stretch[n - n_blocks * length :].reshape(n_blocks, length, m).mean(axis=1)
    stderr = means.std(axis=0, ddof=1) / math.sqrt(n_blocks)
    diff = float(np.max(np.abs(first - second)))
    se = float(np.max(stderr))
    return {
        **out,
        "passed": bool(diff <= tol and se <= tol / 2),
        "max_half_difference": diff,
        "max_stderr": se,
        "first_half": first.tolist(),
        "second_half": second.tolist(),
        "dimension_first_half": sharpness_dimension(first),
        "dimension_second_half": sharpness_dimension(second),
    }


def frames_test(
    log_stretch_a: np.ndarray,
    log_stretch_b: np.ndarray,
    tol: float,
    Q_a: Tensor | None = None,
    Q_b: Tensor | None = None,
    *,
    dim_tol: float = 1.0,
) -> dict[str, Any]:
    """Whether two independently started frames on one orbit found the same exponents.

    A frame stuck in the weight-decay-contracted bulk is stable too (its exponents sit at
    ln(1 − η·wd) and its halves agree), so stability alone cannot tell it from the
    dominant subspace. Two frames started differently (e.g. a warm start and a random
    one) agree only when both have reached the same exponents. Passes when
    :func:`halves_test` passes for each frame and

        max_i |Λ_i(frame a) − Λ_i(frame b)| ≤ tol   (sorted, over the same window)
        and |D_Λ(frame a) − D_Λ(frame b)| ≤ dim_tol.

    The dimension condition matters because the dominant exponents can be far smaller
    than any useful ``tol`` (on the digits MLP at EoS they are 1e-5 … 1e-3): two frames
    agreed exponent by exponent within 1e-3 after 1,050 steps while their dimensions were
    2.2 and ≥ 16.

    The principal angles between the two frames' spans are reported, not tested: the
    exponents can agree while near-equal exponents (a gap Λ_m − Λ_{m+1} ≈ 1e-4) keep the
    m-th direction undetermined for thousands of steps.

    Args:
        log_stretch_a, log_stretch_b: (n, m) ln R_t[i, i] of the two frames, same steps.
        tol: absolute tolerance on the exponents.
        Q_a, Q_b: the frames now (d, m), for the principal angles (optional).
        dim_tol: tolerance on the two Kaplan–Yorke dimensions (directions).

    Returns:
        Frame a's :func:`halves_test` dictionary with ``"test": "frames"``,
        ``"passed"``, ``"max_frame_difference"``, ``"dimension_difference"``, ``"frame_b"`` (frame b's sorted
        exponents), ``"frame_b_halves"`` (its halves statistics) and, with the frames,
        ``"max_principal_angle_deg"``.
    """
    a = halves_test(log_stretch_a, tol)
    b = halves_test(log_stretch_b, tol)
    out = {**a, "test": "frames"}
    if len(log_stretch_a) == 0:
        return {**out, "passed": False, "max_frame_difference": None, "frame_b": []}
    ea = np.sort(log_stretch_a.mean(axis=0))[::-1]
    eb = np.sort(log_stretch_b.mean(axis=0))[::-1]
    diff = float(np.max(np.abs(ea - eb)))
    dim_diff = abs(sharpness_dimension(ea) - sharpness_dimension(eb))
    out.update({
        "passed": bool(a["passed"] and b["passed"] and diff <= tol and dim_diff <= dim_tol),
        "max_frame_difference": diff,
        "dimension_difference": dim_diff,
        "dim_tol": dim_tol,
        "frame_a": ea.tolist(),
        "frame_b": eb.tolist(),
        "dimension_frame_a": sharpness_dimension(ea),
        "dimension_frame_b": sharpness_dimension(eb),
        "frame_b_halves": {key: b[key] for key in ("passed", "max_half_difference", "max_stderr")},
    })
    if Q_a is not None and Q_b is not None:
        cos = torch.linalg.svdvals((Q_a.T @ Q_b).to(torch.float64)).clamp(max=1.0)
        out["max_principal_angle_deg"] = float(torch.rad2deg(torch.arccos(cos.min())))
    return out


def _sorted_dimension(lam: np.ndarray) -> float:
    return sharpness_dimension(np.sort(lam)[::-1])


def lyapunov_spectrum(
    step: StepFn,
    x0: Tensor,
    n_exponents: int,
    steps: int,
    warmup: int | None = None,
    *,
    seed: int = 0,
    q0: Tensor | None = None,
    jvp_fn: JvpFn | None = None,
    step_jvp_fn: StepJvpFn | None = None,
    chunk_size: int | None = None,
    tol: float | None = None,
    check_every: int = 50,
    min_steps: int = 0,
    twin_seed: int | None = None,
    twin_q0: Tensor | None = None,
    desc: str = "Lyapunov",
) -> LyapunovResult:
    """Top-m Lyapunov exponents of a differentiable map along the orbit of ``x0`` (QR method).

    For t = 0, …, steps − 1: Z_t = J_t(x_t) Q_{t−1}; Q_t R_t = qr(Z_t) with diag R_t > 0
    (columns of Q flipped); x_{t+1} = step(x_t). The first ``warmup`` steps move both the
    state and the tangent frame but are not averaged; then

        Λ_i = (1 / (steps − warmup)) Σ_{t ≥ warmup} ln R_t[i, i],

    accumulated in float64. The exponents are returned sorted decreasing (Benettin's
    estimates are decreasing only asymptotically) with their Kaplan–Yorke dimension.

    Args:
        step: the map, a deterministic function of the state ``step(x) -> x'`` on a flat
            (d,) tensor; if it has two required positional parameters it is called as
            ``step(x, t)`` with the step index t (a time-dependent map f_t, e.g. SGD on
            batch t). It is evaluated once per step for the orbit and again, under
            ``vmap(jvp)``, for the tangents, so it must not draw random numbers itself.
        x0: initial state (d,), any floating dtype and device.
        n_exponents: m, the number of leading exponents tracked, 1 ≤ m ≤ d.
        steps: total number of steps, warm-up included (> warmup); with ``tol``, the cap.
        warmup: steps discarded before averaging; ``None``: ``steps // 5``.
        seed: seed of the random initial frame (ignored with ``q0``).
        q0: initial tangent vectors (d, m), orthonormalised here; e.g. a previous
            result's ``Q`` to continue a run, or a warm start.
        jvp_fn: optional batched Jacobian product ``jvp_fn(x, Q, t) -> J_t(x) Q`` for a
            (d, m) block (use it when J has structure, e.g. I − ηH by Hessian-vector
            products). Default: ``torch.func.jvp`` of ``step`` vmapped over Q's columns.
        step_jvp_fn: optional ``(x, Q, t) -> (step(x, t), J_t(x) Q)`` computing both from
            one evaluation (e.g. one gradient graph for the SGD step and its m
            Hessian-vector products); replaces ``step`` and ``jvp_fn`` in the loop.
        chunk_size: columns per ``vmap`` call of the default ``jvp_fn`` (``None``: all).
        tol: convergence tolerance (``None``: run all ``steps``, no test). With ``tol``
            the averaged window adapts: at a check after t steps it is the last half,
            steps max(warmup, t // 2) … t − 1 (the first half is burn-in), and the test
            is :func:`halves_test` on it, or :func:`frames_test` with ``twin_seed``.
        check_every: steps between convergence checks.
        min_steps: no check before this many steps (warm-up included).
        twin_seed: carry a second frame, started at random from this seed, along the
            same orbit (its m tangents go through the same ``step_jvp_fn`` call as the
            main frame's, as one (d, 2m) block); the convergence test then also needs
            the two frames' exponents to agree (:func:`frames_test`). Requires ``tol``.
            The two frames must start *differently* (one warm, one random): two random
            frames can agree while both are still stuck in a contracted bulk.
        twin_q0: the second frame's start (d, m) instead of a random one.
        desc: label of the progress bar.

    Returns:
        A :class:`LyapunovResult` (``converged``/``convergence`` filled when ``tol`` is set).

    Raises:
        EstimatorError: x0 not a finite flat float tensor, m outside [1, d], steps ≤
            warmup, a rank-deficient ``q0``, ``tol`` ≤ 0 or ``check_every`` < 1.
        DivergenceError: the state or the tangent vectors became non-finite.
    """
    if warmup is None:
        warmup = steps // 5 if isinstance(steps, int) else 0  # a bad ``steps`` is reported below
    _check_inputs(x0, n_exponents, steps, warmup)
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise EstimatorError(f"the convergence tolerance must be a finite number > 0, got {tol!r}; e.g. tol=1e-3")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise EstimatorError(f"check_every must be an integer ≥ 1, got {check_every!r}")
    m, d = n_exponents, x0.shape[0]
    f = step if takes_time(step) else (lambda x, t: step(x))
    if step_jvp_fn is None:
        jvp = default_jvp(f, chunk_size) if jvp_fn is None else jvp_fn

        def step_jvp_fn(x: Tensor, Q: Tensor, t: int) -> tuple[Tensor, Tensor]:
            Z = jvp(x, Q, t)
            with torch.no_grad():
                return f(x, t).detach(), Z

    twin = twin_seed is not None or twin_q0 is not None
    if twin and tol is None:
        raise EstimatorError("a twin frame (twin_seed, twin_q0) is only used by the convergence test: set tol as well")
    start = time.perf_counter()
    x = x0.detach()
    frames = [_initial_frame(x, m, seed, q0)]
    if twin:
        frames.append(_initial_frame(x, m, 0 if twin_seed is None else twin_seed, twin_q0))
    k = len(frames)
    log_stretch = np.empty((k, steps, m), dtype=np.float64)  # every step; the window is cut at the end
    qr_methods: dict[str, int] = {}
    convergence: dict[str, Any] = {}
    taken = steps

    def window_start(done: int) -> int:
        return warmup if tol is None else max(warmup, done // 2)

    def test(done: int) -> dict[str, Any]:
        lo = window_start(done)
        if k == 1:
            return halves_test(log_stretch[0, lo:done], tol)  # type: ignore[arg-type]
        return frames_test(log_stretch[0, lo:done], log_stretch[1, lo:done], tol, frames[0], frames[1])  # type: ignore[arg-type]

    for t in progress(range(steps), desc=desc, total=steps):
        x_next, Z = step_jvp_fn(x, frames[0] if k == 1 else torch.cat(frames, dim=1), t)
        if Z.shape != (d, k * m):
            raise EstimatorError(f"jvp_fn must return a (d, m) = ({d}, {k * m}) block, got {tuple(Z.shape)}")
        if not torch.isfinite(Z).all():
            raise DivergenceError(f"tangent vectors became non-finite at step {t}: the map diverges; use a smaller step size or fewer steps")
        for i in range(k):
            Qn, log_diag, how = qr_positive(Z[:, i * m : (i + 1) * m].to(x.dtype))
            frames[i] = Qn
            qr_methods[how] = qr_methods.get(how, 0) + 1
            log_stretch[i, t] = log_diag.cpu().numpy()
        del Z
        x = x_next.detach()
        if not torch.isfinite(x).all():
            raise DivergenceError(
                f"the state became non-finite at step {t + 1} of {steps}: the map diverges; "
                "use a smaller step size (η), fewer steps, or a start closer to the attractor"
            )
        done = t + 1
        if tol is not None and done - window_start(done) >= 2 and done >= min_steps and (done - warmup) % check_every == 0:
            convergence = test(done)
            logger.debug("step %d: %s", done, {key: convergence[key] for key in ("passed", "max_half_difference", "max_stderr")})
            if convergence["passed"]:
                taken = done
                break
    lo = window_start(taken)
    if tol is not None and (not convergence or convergence.get("averaged_steps") != taken - lo):
        convergence = test(taken)
    Q = frames[0]
    warmup_used = lo
    kept = taken - lo
    log_stretch_main = log_stretch[0, lo:taken]
    running = np.cumsum(log_stretch_main, axis=0) / np.arange(1, kept + 1)[:, None]
    exponents_qr = running[-1].copy()
    order = np.argsort(-exponents_qr, kind="stable")
    exponents = exponents_qr[order]
    j_star = critical_index(exponents)
    if tol is not None:
        convergence = {**convergence, "steps": taken, "warmup": warmup, "burn_in": lo, "max_steps": steps,
                       "check_every": check_every, "min_steps": min_steps, "frames": k}
    result = LyapunovResult(
        exponents=exponents,
        exponents_qr=exponents_qr,
        order=order,
        dimension=sharpness_dimension(exponents),
        j_star=j_star,
        lower_bound=j_star == m and m < d,
        state=x,
        Q=Q,
        log_stretch=log_stretch_main,
        running=running,
        d=d,
        steps=taken,
        warmup=warmup_used,
        n_jvp=taken * m * k,
        wall_time_s=time.perf_counter() - start,
        converged=None if tol is None else bool(convergence["passed"]),
        convergence=convergence,
        qr_methods=qr_methods,
    )
    logger.info("%s", result.summary())
    return result


def block_bootstrap_dimension(
    log_stretch: np.ndarray,
    *,
    n_blocks: int = 10,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[tuple[float, float], np.ndarray, int]:
    """Uncertainty of the Lyapunov dimension from the per-step log-stretches.

    Successive steps are correlated, so the averaged steps are cut into ``n_blocks``
    contiguous blocks of equal length (a trailing remainder is dropped) and the blocks
    are resampled with replacement: each replicate's exponents are the mean of its
    blocks' means, sorted, and its dimension is the Kaplan–Yorke dimension (= m when the
    running sum stays ≥ 0). The interval is the central ``level`` percentile range.

    Args:
        log_stretch: (n, m) ln R_t[i, i] of the averaged steps.
        n_blocks: number of blocks (reduced to n when n is smaller).
        n_boot: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ((low, high), stderr, n_blocks_used): the interval, the standard error of each
        exponent (QR order) from the spread of block means, and the number of blocks.
        With fewer than 2 blocks the interval is (nan, nan) and the errors are nan; with
        ``n_boot < 1`` the interval is (nan, nan).
    """
    n, m = log_stretch.shape
    b = min(n_blocks, n)
    if b < 2:
        return (float("nan"), float("nan")), np.full(m, np.nan), b
    length = n // b
    means = log_stretch[: b * length].reshape(b, length, m).mean(axis=1)  # (b, m)
    stderr = means.std(axis=0, ddof=1) / math.sqrt(b)
    if n_boot < 1:  # no replicates asked for: errors only, no interval
        return (float("nan"), float("nan")), stderr, b
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, b, size=(n_boot, b))
    reps = means[picks].mean(axis=1)  # (n_boot, m)
    dims = np.array([_sorted_dimension(r) for r in reps])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(dims, [tail, 100 - tail])
    return (float(low), float(high)), stderr, b


__all__ = [
    "JvpFn",
    "LyapunovResult",
    "StepJvpFn",
    "block_bootstrap_dimension",
    "default_jvp",
    "frames_test",
    "halves_test",
    "lyapunov_spectrum",
    "qr_positive",
    "takes_time",
]
