"""Lanczos in O(d) or O(steps · d) memory, chosen by a memory budget, and the top
eigenpairs in *algebraic* order.

Three ways to keep the Krylov vectors orthogonal (``reorth``):

- ``"full"``: every vector is kept (steps × d in the operator's dtype) and each new one
  is reorthogonalised against all of them, twice ("twice is enough", Parlett). Exact
  Ritz values to rounding; memory steps · d · itemsize.
- ``"half"``: the same, against a basis stored in half the precision (float16 scaled by
  √d for float32/float16/bfloat16 operators, float32 for float64 ones); orthogonality
  to ~1e-3 instead of 1e-16, for half the basis memory.
- ``"none"``: the three-term recurrence alone (plus a local second pass against the
  current vector), four vectors of d in all: O(d). In floating point the vectors lose
  orthogonality as Ritz values converge and copies ("ghosts") of converged extreme
  eigenvalues appear, but Gauss quadrature stays accurate: the ghosts split their
  node's weight rather than add to it (Greenbaum 1989; Knizhnerman 1996), so SLQ
  moments and densities are nearly unchanged. What it does to SD is a coarser
  quadrature near the Kaplan–Yorke crossing, as if with fewer steps: measured
  (results/bench/lean_lanczos.md, 32 runs × 80 steps, same batches and probes) SD-PS
  +3.2% on the trained digits MLP and +2.8% on tiny-gpt2 against ``"full"``, per-module
  SD shares within 0.007 and expansion shares within 0.05; on the MLP ``"none"`` at 160
  steps matches ``"full"`` at 80 (results/bench/lean_lanczos_steps.md). ``"half"``
  matched ``"full"`` to 1e-4 on both.

Selective or partial reorthogonalisation (Parlett–Scott, Simon) need the basis to form
the converged Ritz vectors, so they do not give O(d) memory and are not offered.

``"auto"`` (the default) picks the most accurate mode whose memory fits the budget:
:func:`lanczos_memory_bytes` predicts a run's own memory (basis and work vectors; the
operator's own memory, e.g. a kept gradient graph, is not included), and
:func:`default_memory_budget` is a fraction of the available RAM (or free GPU memory).

Per-block dot products. Given ``blocks`` (slices of the flat vector, e.g. one per
parameter tensor) and a ``probe`` v, the run also records C[k, b] = q_kᵀ v_b with v_b
the probe restricted to block b, as it goes (no basis needed). With T = S Θ Sᵀ,
v_bᵀ f(A) v ≈ ‖v‖ Σ_i (C[:, b] · s_i) s_i[0] f(θ_i) (PAPER.md §8).

PyHessian's power iteration returns the eigenvalue of largest magnitude, which at a
saddle can be the most negative one. Here ``top_eigenpairs`` returns the largest
algebraic eigenvalues (Ritz values of the Lanczos tridiagonal), as ``eigh`` would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from sdcompress.errors import ConfigError
from sdcompress.linalg.operators import SymmetricOperator

logger = logging.getLogger(__name__)

Reorth = Literal["auto", "full", "half", "none"]
REORTH_MODES: tuple[str, ...] = ("auto", "full", "half", "none")
# fraction of the available memory a Lanczos run may use by default
DEFAULT_BUDGET_FRACTION = 0.1
# work vectors of d each held by one run besides the basis (the start vector, q, q_prev, z)
_WORK_VECTORS = 4
# a "half" basis is cast back to full precision this many bytes at a time
_CAST_CHUNK_BYTES = 2**26


# small chunks: their float64 temporaries (2 × 512 KiB) are reused by the allocator instead
# of growing the heap (larger ones raised the peak RSS of a run by hundreds of MB)
_DOT_CHUNK = 2**16


def _dot(a: Tensor, b: Tensor) -> float:
    """aᵀb accumulated in float64, chunk by chunk (64k entries, 1 MiB of temporaries).

    A float32 BLAS dot accumulates in float32, and its error grows with d: on a
    diagonal operator with λ_max = 3 the Ritz value came out as 3.006 at d = 16M and
    3.055 at d = 124M (GPT-2-small's size) — above the true maximum.
    """
    if a.dtype == torch.float64:
        return float(torch.dot(a, b))
    total = 0.0
    for i in range(0, a.numel(), _DOT_CHUNK):
        total += float(torch.dot(a[i : i + _DOT_CHUNK].double(), b[i : i + _DOT_CHUNK].double()))
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def low_precision_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a ``"half"`` basis: float32 for float64 operators, else float16."""
    return torch.float32 if dtype == torch.float64 else torch.float16


def lanczos_memory_bytes(d: int, steps: int, dtype: torch.dtype = torch.float32, reorth: str = "full", *, keep_basis: bool = False) -> int:
    """Predicted memory of one Lanczos run, in bytes (excluding the operator's own).

    ``"full"``: steps · d · itemsize (the basis) + 4 · d · itemsize (work vectors);
    ``"half"``: steps · d · itemsize(low-precision dtype) + the work vectors + one chunk
    of rows cast back to full precision (≤ 64 MiB, at least one row);
    ``"none"``: the work vectors only. ``keep_basis`` adds a full-precision basis for
    the ``"half"``/``"none"`` modes (Ritz vectors need it). The O(steps²) tridiagonal
    and the per-block dot products (steps × blocks, float64) are negligible and left out.

    Args:
        d: the operator's dimension.
        steps: Lanczos steps m (clipped to d).
        dtype: the operator's dtype.
        reorth: ``"full"``, ``"half"`` or ``"none"``.
        keep_basis: whether the basis is returned.

    Returns:
        Bytes.

    Raises:
        ConfigError: an unknown mode (``"auto"`` must be resolved first, see
            :func:`choose_reorth`).
    """
    if reorth not in ("full", "half", "none"):
        raise ConfigError(f"reorth must be 'full', 'half' or 'none' to predict memory, got {reorth!r}")
    steps = min(steps, d)
    item = _itemsize(dtype)
    work = _WORK_VECTORS * d * item
    if reorth == "full":
        return work + steps * d * item
    basis = steps * d * item if keep_basis else 0
    if reorth == "half":
        basis += steps * d * _itemsize(low_precision_dtype(dtype))
        if low_precision_dtype(dtype) != dtype:  # rows cast back in chunks of ≤ 64 MiB (at least one row)
            basis += min(steps * d * item, max(d * item, _CAST_CHUNK_BYTES))
    return work + basis


def available_memory_bytes(device: torch.device | str | None = None) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on CUDA, else the
    available RAM (psutil when installed, else ``/proc/meminfo``/``sysconf``)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is installed with the toolkit's deps
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_memory_budget(device: torch.device | str | None = None, fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """The default budget of a Lanczos run: ``fraction`` (0.1) of the available memory.

    Args:
        device: where the run's vectors live (CPU: available RAM; CUDA: free memory).
        fraction: share of the available memory.

    Returns:
        Bytes.
    """
    return int(fraction * available_memory_bytes(device))


def choose_reorth(
    d: int,
    steps: int,
    dtype: torch.dtype = torch.float32,
    *,
    memory_budget: int | None = None,
    device: torch.device | str | None = None,
    reorth: str = "auto",
    keep_basis: bool = False,
) -> str:
    """The reorthogonalisation mode a run will use: ``reorth`` itself unless it is
    ``"auto"``, then the first of ``"full"``, ``"half"``, ``"none"`` whose
    :func:`lanczos_memory_bytes` fits ``memory_budget``.

    Args:
        d: dimension.
        steps: Lanczos steps.
        dtype: operator dtype.
        memory_budget: bytes (``None``: :func:`default_memory_budget` of ``device``).
        device: the operator's device (for the default budget).
        reorth: ``"auto"``, ``"full"``, ``"half"`` or ``"none"``.
        keep_basis: the basis must be returned (counted in every mode).

    Returns:
        ``"full"``, ``"half"`` or ``"none"``.

    Raises:
        ConfigError: an unknown mode or a budget ≤ 0.
    """
    if reorth not in REORTH_MODES:
        raise ConfigError(f"reorth must be one of {list(REORTH_MODES)}, got {reorth!r}")
    if reorth != "auto":
        return reorth
    if memory_budget is not None and not memory_budget > 0:
        raise ConfigError(f"memory_budget must be a number of bytes > 0 (or None for {DEFAULT_BUDGET_FRACTION:g} of the available memory), got {memory_budget!r}")
    budget = default_memory_budget(device) if memory_budget is None else int(memory_budget)
    for mode in ("full", "half"):
        if lanczos_memory_bytes(d, steps, dtype, mode, keep_basis=keep_basis) <= budget:
            return mode
    return "none"


@dataclass(frozen=True)
class LanczosResult:
    """T = Qᵀ A Q for the Krylov basis Q (orthonormal up to the chosen reorthogonalisation).

    Attributes:
        alpha: (m,) diagonal of the tridiagonal T (float64).
        beta: (m − 1,) off-diagonal of T (float64).
        Q: (m, d) Krylov basis (rows), or ``None`` when not kept.
        reorth: the mode used (``"full"``, ``"half"`` or ``"none"``).
        block_dots: (m, n_blocks) C[k, b] = q_kᵀ v_b (float64), or ``None`` without blocks.
        probe_norm: ‖v‖ of the start vector before normalisation.
        residual_norm: ‖r_m‖, the norm of the last step's residual (the β that would
            come next): A Q_mᵀ = Q_mᵀ T + r_m e_mᵀ, so a Ritz pair (θ_i, s_i) has residual
            ‖r_m‖ |s_i[m − 1]| (exactly, with an orthonormal basis).
    """

    alpha: Tensor
    beta: Tensor
    Q: Tensor | None
    reorth: str = "full"
    block_dots: Tensor | None = None
    probe_norm: float = 1.0
    residual_norm: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def tridiagonal(self) -> Tensor:
        m = self.steps
        T = torch.diag(self.alpha)
        if m > 1:
            T += torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        return T

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors of T (columns), float64."""
        return torch.linalg.eigh(self.tridiagonal())

    def block_weights(self) -> Tensor | None:
        """(m, n_blocks) ω_{i,b} = (C[:, b] · s_i) s_i[0] / ‖v‖ for the Ritz values in
        ascending order; Σ_b ω_{i,b} ≈ s_i[0]² (exactly with an orthonormal basis)."""
        if self.block_dots is None:
            return None
        _, S = self.ritz()
        return (S.T @ self.block_dots) * S[0][:, None] / self.probe_norm


class _Basis:
    """The stored Krylov vectors of one run, in the operator's or a lower precision."""

    def __init__(self, steps: int, d: int, dtype: torch.dtype, device: torch.device, low: bool) -> None:
        self.dtype = low_precision_dtype(dtype) if low else dtype
        # float16 entries of a unit vector are ~1/√d: scale them to O(1) (away from subnormals)
        self.scale = float(d) ** 0.5 if self.dtype == torch.float16 else 1.0
        self.Q = torch.zeros(steps, d, dtype=self.dtype, device=device)
        self.n = 0

    def append(self, q: Tensor) -> None:
        self.Q[self.n] = q * self.scale if self.scale != 1.0 else q
        self.n += 1

    def orthogonalise(self, z: Tensor) -> Tensor:
        """z minus its projection on the stored vectors, twice."""
        for _ in range(2):
            if self.dtype == z.dtype:
                Q = self.Q[: self.n]
                z.sub_(Q.T @ (Q @ z))
            else:
                # a few rows at a time: never a full-precision copy of the basis
                rows = max(1, _CAST_CHUNK_BYTES // (z.numel() * z.element_size()))
                for k in range(0, self.n, rows):
                    Q = self.Q[k : min(k + rows, self.n)].to(z.dtype)
                    z.sub_(Q.T @ (Q @ z), alpha=1.0 / self.scale**2)
        return z


def lanczos(
    op: SymmetricOperator,
    v0: Tensor,
    steps: int,
    *,
    keep_basis: bool = False,
    tol: float = 1e-10,
    reorth: str = "auto",
    memory_budget: int | None = None,
    blocks: Sequence[slice] | None = None,
) -> LanczosResult:
    """Run ``steps`` Lanczos iterations of ``op`` from ``v0``.

    Stops early on breakdown (an invariant subspace was found: β_j ≤ tol·‖T‖). The
    recurrence runs in the operator's dtype; α and β are returned in float64.

    Args:
        op: symmetric operator.
        v0: (d,) start vector (normalised here; its norm is ``probe_norm``).
        steps: maximum Krylov dimension m (≤ d).
        keep_basis: return the basis Q in the operator's dtype (needed for Ritz vectors).
        tol: relative breakdown threshold.
        reorth: ``"auto"`` (default: the most accurate mode that fits
            ``memory_budget``; see :func:`choose_reorth`), ``"full"``, ``"half"`` or
            ``"none"``.
        memory_budget: bytes a run may use for ``"auto"`` (``None``: 0.1 of the
            available memory of the operator's device).
        blocks: slices of the flat vector; records C[k, b] = q_kᵀ v0[b] per step.

    Returns:
        The :class:`LanczosResult`.

    Raises:
        ConfigError: ``steps < 1``, an unknown mode or a bad budget.
    """
    if steps < 1:
        raise ConfigError(f"Lanczos needs at least one step, got {steps}")
    steps = min(steps, op.d)
    mode = choose_reorth(op.d, steps, op.dtype, memory_budget=memory_budget, device=op.device, reorth=reorth, keep_basis=keep_basis)
    probe_norm = _dot(v0, v0) ** 0.5
    q = v0 / probe_norm
    basis = None if mode == "none" else _Basis(steps, op.d, op.dtype, op.device, low=mode == "half")
    separate = keep_basis and mode != "full"  # "half"/"none" keep a full-precision copy only when asked
    kept = torch.zeros(steps, op.d, dtype=op.dtype, device=op.device) if separate else None
    dots: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    q_prev: Tensor | None = None
    scale = 0.0
    for j in range(steps):
        if basis is not None:
            basis.append(q)
        if kept is not None:
            kept[j] = q
        if blocks is not None:
            prod = q * v0
            dots.append(torch.stack([prod[s].sum() for s in blocks]).double().cpu())
            del prod
        z = op.matvec(q)
        if z.untyped_storage().data_ptr() in (q.untyped_storage().data_ptr(), v0.untyped_storage().data_ptr()):
            z = z.clone()  # updated in place below: never write into q (an operator may return its input)
        if q_prev is not None:
            z.sub_(q_prev, alpha=betas[-1])
        a = _dot(q, z)
        z.sub_(q, alpha=a)
        if basis is not None:
            z = basis.orthogonalise(z)
        else:
            z.sub_(q, alpha=_dot(q, z))  # local second pass against the current vector
        alphas.append(a)
        b = _dot(z, z) ** 0.5
        scale = max(scale, abs(alphas[-1]), b)
        if j + 1 == steps or b <= tol * max(scale, 1e-30):
            break
        betas.append(b)
        q_prev, q = q, z.div_(b)  # in place: no fifth vector
        del z
    m = len(alphas)
    if keep_basis and kept is None and basis is not None:
        kept = basis.Q
    return LanczosResult(
        alpha=torch.tensor(alphas, dtype=torch.float64),
        beta=torch.tensor(betas[: m - 1], dtype=torch.float64),
        Q=kept[:m] if kept is not None else None,
        reorth=mode,
        residual_norm=b,
        block_dots=torch.stack(dots) if dots else None,
        probe_norm=probe_norm,
    )


@dataclass(frozen=True)
class Eigenpairs:
    """Top eigenpairs in algebraic order (largest first) and their cost.

    Attributes:
        values: (k,) float64, descending.
        vectors: (k, d) in the operator's dtype, or ``None`` when not asked for.
        n_matvecs: operator products spent.
        residuals: (k,) ‖A v − λ v‖ (float64): computed from the vectors when there are
            vectors, else the Lanczos estimate β_m |s_i[m]| (exact with an orthonormal
            basis; free).
        reorth: the Lanczos mode used.
    """

    values: Tensor
    vectors: Tensor | None
    n_matvecs: int
    residuals: Tensor
    reorth: str = "full"


def _random_start(op: SymmetricOperator, seed: int) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(op.d, generator=g, dtype=torch.float64).to(dtype=op.dtype, device=op.device)


def _ritz_vectors(op: SymmetricOperator, v0: Tensor, steps: int, S: Tensor, mode: str) -> Tensor:
    """Σ_j S[j, i] q_j for the columns of S, by replaying the recurrence (no basis kept
    when ``mode`` is ``"none"``; ``steps`` more operator products)."""
    k = S.shape[1]
    Y = torch.zeros(k, op.d, dtype=op.dtype, device=op.device)
    state = {"j": 0}

    class _Tap(SymmetricOperator):
        def __init__(self) -> None:
            super().__init__()
            self.d, self.dtype, self.device = op.d, op.dtype, op.device

        def _matmat(self, V: Tensor) -> Tensor:
            j = state["j"]
            if j < S.shape[0]:
                Y.add_(S[j].to(op.dtype).to(op.device)[:, None] * V[0][None, :])
            state["j"] = j + 1
            return op.matmat(V)

    lanczos(_Tap(), v0, steps, reorth=mode)
    return Y


def _distinct_top(evals: Tensor, bounds: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """Indices of the k largest Ritz values, skipping copies ("ghosts", which appear when
    the basis loses orthogonality): a value within max(√ε(dtype) · max|θ|, its residual
    bound β_m |s_i[m]|) of one already taken is not resolved from it and counts once."""
    floor = float(torch.finfo(dtype).eps) ** 0.5 * float(evals.abs().max())
    taken: list[int] = []
    for i in torch.argsort(evals, descending=True).tolist():
        tol = max(floor, float(bounds[i]))
        if all(abs(float(evals[i] - evals[t])) > tol for t in taken):
            taken.append(i)
        if len(taken) == k:
            break
    return torch.tensor(taken, dtype=torch.long)


def top_eigenpairs(
    op: SymmetricOperator,
    k: int = 1,
    *,
    steps: int = 30,
    seed: int = 0,
    v0: Tensor | None = None,
    vectors: bool = True,
    reorth: str = "auto",
    memory_budget: int | None = None,
) -> Eigenpairs:
    """The k largest *algebraic* eigenvalues of ``op`` and their eigenvectors.

    A single Lanczos run of ``steps`` iterations; extreme eigenvalues converge first, so
    20–40 steps give the top few to several digits on typical Hessians. Residual norms
    are returned so callers can check convergence.

    Memory: with ``reorth="auto"`` the run keeps its basis (full reorthogonalisation,
    steps · d) only when :func:`lanczos_memory_bytes` fits ``memory_budget``; otherwise
    it runs in O(d) (or with a half-precision basis) and, if ``vectors`` is true, forms
    the Ritz vectors by replaying the recurrence (``steps`` more products, k vectors of
    memory). With ``vectors=False`` no vector is formed and the residuals are the free
    Lanczos estimates: a λ_max check (value and residual) in O(d) memory. Without full
    reorthogonalisation converged eigenvalues reappear as copies; a Ritz value within its
    residual bound (or √ε · max|θ|) of a larger one counts once (so fewer than k may come
    back from a short run).

    Args:
        op: symmetric operator.
        k: number of eigenpairs.
        steps: Krylov dimension (clipped to d).
        seed: seeds the random start vector when ``v0`` is not given.
        v0: start vector.
        vectors: form the eigenvectors (and residuals from them).
        reorth: ``"auto"`` (by memory budget), ``"full"``, ``"half"`` or ``"none"``.
        memory_budget: bytes for ``"auto"`` (``None``: 0.1 of the available memory).

    Returns:
        The :class:`Eigenpairs`.

    Raises:
        ConfigError: k outside [1, d], or a bad mode or budget.
    """
    if not 1 <= k <= op.d:
        raise ConfigError(f"k must be between 1 and d={op.d}, got {k}")
    start = op.n_matvecs
    v0 = _random_start(op, seed) if v0 is None else v0
    steps = max(steps, k)
    mode = choose_reorth(op.d, min(steps, op.d), op.dtype, memory_budget=memory_budget, device=op.device, reorth=reorth)
    keep = vectors and mode == "full"
    res = lanczos(op, v0, steps, keep_basis=keep, reorth=mode)
    evals, evecs = res.ritz()
    bounds = res.residual_norm * evecs[-1].abs()
    order = _distinct_top(evals, bounds, k, op.dtype) if res.reorth != "full" else torch.argsort(evals, descending=True)[:k]
    values = evals[order]
    if not vectors:
        resid = bounds[order]
        return Eigenpairs(values, None, op.n_matvecs - start, resid.double(), res.reorth)
    if keep:
        vecs = evecs[:, order].T.to(res.Q.dtype).to(res.Q.device) @ res.Q  # (k, d)
    else:
        vecs = _ritz_vectors(op, v0, res.steps, evecs[:, order], res.reorth)
        vecs = vecs / vecs.norm(dim=1, keepdim=True)
    resid = torch.stack([(op.matvec(v) - float(lam) * v).norm().double() for v, lam in zip(vecs, values)])
    return Eigenpairs(values, vecs, op.n_matvecs - start, resid, res.reorth)


def top_eigenvalue(
    op: SymmetricOperator,
    *,
    steps: int = 30,
    seed: int = 0,
    reorth: str = "auto",
    memory_budget: int | None = None,
) -> float:
    """The largest algebraic eigenvalue of ``op`` (see :func:`top_eigenpairs`), in O(d)
    memory when the basis does not fit ``memory_budget``."""
    if not 1 <= op.d:
        raise ConfigError("operator has dimension 0")
    res = lanczos(op, _random_start(op, seed), steps, reorth=reorth, memory_budget=memory_budget)
    return float(res.ritz()[0][-1])
