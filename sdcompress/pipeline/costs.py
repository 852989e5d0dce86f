"""The pre-flight's cost model: measured unit costs (:class:`Probe`) and per-stage
predictions of time and peak memory (:func:`predict`).

See :mod:`sdcompress.pipeline.preflight` for the model's terms and how settings are picked.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sdcompress.data.core import Batch, batch_size_of
from sdcompress.models.functional import FunctionalLoss
from sdcompress.models.loader import LoadedModel

GiB = 1024 ** 3
#: a product expected to take longer than this (seconds) on the larger batch is timed once, with its graph
SLOW_PRODUCT_S = 5.0


@dataclass(frozen=True)
class Probe:
    """Measured unit costs on the real batch.

    Attributes:
        device: where it ran.
        d: parameters the estimates run over; itemsize: bytes per parameter.
        n_small: examples in the batch the products were timed on.
        t_forward, t_grad, t_hvp_first, t_hvp: seconds at ``n_small`` examples.
        grad_sizes, grad_times: gradient timings at one or two batch sizes (the scaling line).
        base_bytes: memory in use before the probe (resident on CPU, allocated on CUDA).
        hvp_bytes: peak extra memory of a product (gradient graph, activations).
        threads: torch threads.
        wall_time_s: what the probe itself took (the smaller probes included).
        activation_bytes_per_example: growth of a gradient's peak memory per example.
        svd_s: per distinct target shape ``"OUTxIN"``: seconds of a float64 SVD, of
            rebuilding a rank-1 and a rank-k2 truncation, and k2 (:mod:`~sdcompress.pipeline.subprobes`).
        t_curv_graph, t_curv_probe, t_curv_product: the planner's curvature work at ``n_curv``
            examples (the larger size of the product line for a cheap model, else ``n_small``).
        overhead: the estimators' non-product seconds (``slq_lanczos``, ``slq_density``,
            ``lyap_step``) and the settings they were timed at.
        hvp_sizes, hvp_times: product timings at ``n_small`` and a larger batch: products
            grow faster with the batch than gradients (a double-backward graph over the
            activations), so they scale along their own line.
        block_n, t_hvp_block: one batched product of ``block_n`` vectors on the larger batch (a
            Lyapunov step multiplies its whole frame in one vmapped call, which on a small model
            costs far less per vector than single products); timed for a cheap model only.
        eval_n, t_forward_eval: a forward pass at the evaluation's batch size (the real
            batch repeated to that size; fewer examples where its logits would take more
            than 256 MiB, scaled linearly), since no line through small batches reaches it.
    """

    device: str
    d: int
    itemsize: int
    n_small: int
    t_forward: float
    t_grad: float
    t_hvp_first: float
    t_hvp: float
    grad_sizes: tuple[int, ...]
    grad_times: tuple[float, ...]
    base_bytes: int
    hvp_bytes: int
    threads: int
    wall_time_s: float
    activation_bytes_per_example: float = 0.0  # growth of a gradient's peak memory per example
    # the smaller probes (sdcompress.pipeline.subprobes); empty or 0: not measured, not predicted
    svd_s: dict[str, list[float]] = field(default_factory=dict)  # "OxI": [float64 SVD s, rebuild at rank 1, at k2, k2]
    t_curv_graph: float = 0.0  # at n_curv: gradient of the target weights with its graph (once per curvature batch)
    t_curv_probe: float = 0.0  # at n_curv: one Hutchinson probe (a backward pass over all target weights)
    t_curv_product: float = 0.0  # at n_curv: one module's truncation product (mean over up to 3 modules)
    n_curv: int = 0  # examples the curvature work was timed on (0: n_small)
    overhead: dict[str, float] = field(default_factory=dict)  # the estimators' non-product seconds and their settings
    hvp_sizes: tuple[int, ...] = ()  # product timings at one or two batch sizes (the products' own scaling line)
    hvp_times: tuple[float, ...] = ()
    eval_n: int = 0  # examples of the evaluation's forward pass timed (0: not timed)
    block_n: int = 0  # vectors of the batched product timed at hvp_sizes[-1] examples (0: not timed)
    t_hvp_block: float = 0.0  # one batched (vmapped) product of block_n vectors, as a Lyapunov step takes them
    t_forward_eval: float = 0.0  # one no-grad forward pass at eval_n examples

    def workspace(self, n: int) -> float:
        """Peak extra memory of a product at ``n`` examples: the measured one at ``n_small`` plus
        the activations of the other examples, kept about 3 times over (the gradient's graph,
        the double-backward graph on top of it, their gradients)."""
        return self.hvp_bytes + 3.0 * self.activation_bytes_per_example * max(n - self.n_small, 0)

    def hvp_scale(self, n: int) -> float:
        """t_hvp(n) / t_hvp(n_small): a line through the product timings (the gradient line when
        products were timed at one size only)."""
        if len(self.hvp_sizes) < 2 or self.hvp_sizes[0] == self.hvp_sizes[1]:
            return self.scale(n)
        (n0, n1), (t0, t1) = self.hvp_sizes, self.hvp_times
        slope = max((t1 - t0) / (n1 - n0), 0.0)
        return max(t0 + slope * (n - n0), 1e-9) / t0

    def scale(self, n: int) -> float:
        """t_grad(n) / t_grad(n_small): a line through the gradient timings (≥ n/n_small·0 floor)."""
        if len(self.grad_sizes) < 2 or self.grad_sizes[0] == self.grad_sizes[1]:
            return n / self.n_small
        (n0, n1), (t0, t1) = self.grad_sizes, self.grad_times
        slope = max((t1 - t0) / (n1 - n0), 0.0)
        return max(t0 + slope * (n - n0), 1e-9) / t0


@dataclass(frozen=True)
class StagePrediction:
    """One stage's predicted cost.

    Attributes:
        name: stage name.
        seconds: predicted wall-clock seconds.
        peak_bytes: predicted peak memory.
        grads: the cost in gradient-equivalents (seconds / t_grad at the run's batch).
        hvps: Hessian-vector products the stage will spend.
        detail: the settings that drive it.
        svds: float64 SVDs the stage will run (the planner's curvature and ``compress_``).
        parts: the seconds split by what spends them (e.g. ``products`` and ``overhead``;
            ``curvature``, ``compress`` and ``evaluate`` for plan+compress).
    """

    name: str
    seconds: float
    peak_bytes: int
    grads: float
    hvps: int
    detail: str
    svds: int = 0
    parts: dict[str, float] = field(default_factory=dict)


def _fmt_s(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _fmt_b(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------ probing


def memory_in_use(device: torch.device) -> int:
    """Resident memory of this process (CPU) or memory allocated on the GPU (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


class _PeakSampler:
    """Peak of :func:`memory_in_use` while the block runs (a thread samples RSS on CPU;
    CUDA keeps its own peak counter)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory_in_use(self.device))
            self._stop.wait(self.interval)

    def __enter__(self) -> "_PeakSampler":
        self.peak = memory_in_use(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, int(torch.cuda.max_memory_allocated(self.device)))
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, memory_in_use(self.device))


def _timed(fn: Any, device: torch.device, min_time: float = 1.0, max_reps: int = 5) -> float:
    """Median seconds of ``fn()``, repeated until ``min_time`` has passed (at most ``max_reps``)."""
    times: list[float] = []
    total = 0.0
    while len(times) < max_reps and (not times or total < min_time):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        total += times[-1]
    return float(sorted(times)[len(times) // 2])


def _head(batch: Batch, n: int) -> Batch:
    if isinstance(batch, dict):
        return {k: v[:n] for k, v in batch.items()}
    return tuple(t[:n] for t in batch)  # type: ignore[return-value]


def _repeat(batch: Batch, n: int) -> Batch:
    """``batch`` repeated along its first axis to ``n`` examples (a forward pass's cost depends on shapes only)."""
    reps = -(-n // batch_size_of(batch))

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat((reps,) + (1,) * (t.ndim - 1))[:n]

    if isinstance(batch, dict):
        return {k: rep(v) for k, v in batch.items()}
    return tuple(rep(t) for t in batch)  # type: ignore[return-value]


def probe_costs(loaded: LoadedModel, batch: Batch, *, params: Any = None, n_small: int | None = None,
                eval_batch_size: int | None = None, block: int | None = None, memory_budget: int | None = None) -> Probe:
    """Time a forward pass, a gradient and Hessian-vector products on ``batch``.

    Products and the forward pass are timed on the first ``n_small`` examples (default:
    min(batch, 2)); gradients and products also on a larger head of the batch (the whole
    batch, or 4·``n_small`` examples for a model whose gradient takes over 2 s), which
    gives the lines the times are scaled along (:meth:`Probe.scale`, :meth:`Probe.hvp_scale`).

    Args:
        loaded: the model and its loss.
        batch: the real minibatch (on the model's device).
        params: parameter patterns the estimates run over (``None``: all trainable).
        n_small: examples the products are timed on.
        eval_batch_size: also time a no-grad forward pass at this many examples (the
            evaluation's batch; ``None``: not timed).
        block: also time one batched product of this many vectors on the larger batch (the
            Lyapunov frame; ``None``: not timed; skipped for a slow model).
        memory_budget: bytes the probe itself may use (``None``: no limit). The larger batch
            is cut to what the small gradient's and product's memory, scaled linearly in the
            examples (an over-estimate: part of it is d-sized), says fits; with no room the
            times are scaled along a line through the small point alone.

    Returns:
        The :class:`Probe`.
    """
    from sdcompress.linalg import HessianOperator

    start = time.perf_counter()
    model = loaded.model
    p0 = next(model.parameters())
    device, itemsize = p0.device, p0.element_size()
    n = batch_size_of(batch)
    n_small = max(1, min(n, 2 if n_small is None else n_small))
    small = _head(batch, n_small)
    floss = FunctionalLoss(model, params, loaded.loss_fn if loaded.task == "classification" else None)
    if loaded.task == "classification" and loaded.loss_fn is None:
        import torch.nn.functional as F

        floss = FunctionalLoss(model, params, F.cross_entropy)
    w = floss.params_vector()

    def forward() -> None:
        with torch.no_grad():
            floss(w, small)

    def gradient(b: Batch) -> Any:
        return lambda: torch.func.grad(lambda x: floss(x, b))(w)

    base = memory_in_use(device)
    t_fwd = _timed(forward, device)
    if t_fwd < 0.5:
        gradient(small)()  # warm-up (allocator, kernels); a slow model is warm after its forward pass
    with _PeakSampler(device) as g_small:
        t_grad = _timed(gradient(small), device)
    v = torch.randn(floss.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(w.dtype).to(device)
    with _PeakSampler(device) as peak:
        firsts = []
        for _ in range(2 if t_grad < 1.0 else 1):
            op = HessianOperator(floss, small, w)
            t = time.perf_counter()
            op.matvec(v)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            firsts.append(time.perf_counter() - t)
        t_hvp = _timed(lambda: op.matvec(v), device)
        del op
    sizes, times, peaks = [n_small], [t_grad], [g_small.peak]
    hvp_sizes, hvp_times = [n_small], [t_hvp]
    # the second point of the lines: the whole batch, or 4× the small one for a slow model, cut to the memory budget
    n2 = n if t_grad < 2.0 else min(n, 4 * n_small)
    if memory_budget is not None:
        per_example = max(g_small.peak - base, peak.peak - base, 1) / n_small
        n2 = min(n2, int(max(memory_budget - base, 0) // per_example))
    if n2 > n_small:
        sizes.append(n2)
        if t_grad < 0.5:
            gradient(_head(batch, n2))()  # warm-up at this size too (a cheap model's first call is mostly set-up)
        with _PeakSampler(device) as g_big:
            times.append(_timed(gradient(_head(batch, n2)), device, max_reps=3))
        peaks.append(g_big.peak)
    t_block, block_n = 0.0, 0
    if len(sizes) > 1:  # the products' own line: products on the second batch of the gradient line
        op = HessianOperator(floss, _head(batch, sizes[1]), w)
        graph_n2 = (min(firsts) - t_hvp) * times[1] / t_grad  # the graph build, scaled like a gradient
        t = time.perf_counter()
        op.matvec(v)  # builds the gradient graph
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_n2 = time.perf_counter() - t
        hvp_sizes.append(sizes[1])
        if t_hvp * sizes[1] / n_small > SLOW_PRODUCT_S:  # a slow model: the first product, less its graph build
            hvp_times.append(max(first_n2 - graph_n2, t_hvp))
        else:
            hvp_times.append(_timed(lambda: op.matvec(v), device, max_reps=3 if t_hvp * sizes[1] / n_small > 1.0 else 5))
            if block and block > 1 and hvp_times[-1] * block <= SLOW_PRODUCT_S:
                V = torch.randn(block, floss.d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                V = V.to(w.dtype).to(device)
                op.matmat(V)  # warm-up of the batched path
                t_block, block_n = _timed(lambda: op.matmat(V), device, max_reps=3), block
                del V
        del op
    t_fwd_eval = 0.0
    if eval_batch_size:
        big = _repeat(batch, eval_batch_size)
        with torch.no_grad():
            if t_fwd < 0.5:
                floss(w, big)  # warm-up at this size
            t_fwd_eval = _timed(lambda: floss(w, big), device, max_reps=3)
        del big
    return Probe(
        eval_n=int(eval_batch_size or 0), t_forward_eval=t_fwd_eval, block_n=block_n, t_hvp_block=t_block,
        device=str(device), d=int(floss.d), itemsize=int(itemsize), n_small=n_small, t_forward=t_fwd, t_grad=t_grad,
        t_hvp_first=float(min(firsts)), t_hvp=t_hvp, grad_sizes=tuple(sizes), grad_times=tuple(times),
        base_bytes=int(base), hvp_bytes=int(max(peak.peak - base, 0)), threads=torch.get_num_threads(),
        activation_bytes_per_example=float(max(peaks[-1] - peaks[0], 0) / max(sizes[-1] - sizes[0], 1)),
        hvp_sizes=tuple(hvp_sizes), hvp_times=tuple(hvp_times), wall_time_s=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- predicting


@dataclass
class Knobs:
    """The settings the cost model reads (a mutable working copy while picking)."""

    batch_size: int
    sgd_steps: int  # 0: no SGD phase to run
    log_every: int
    sharpness_steps: int
    eval_batches: int
    method: str
    slq_runs: int
    lanczos_steps: int
    n_batches: int
    lyapunov: bool
    lyap_m: int
    lyap_steps: int
    eval_test: int  # examples actually evaluated (after caps)
    eval_train: int
    eval_test_cap: int | None
    eval_train_cap: int | None
    eval_batch_size: int
    remeasure: bool
    compress: bool  # a non-dry run
    lm_tokens_per_example: int = 0  # > 0 for language models: block length (logits memory)
    vocab: int = 0
    n_test_total: int = 0
    n_train_total: int = 0
    curvature_batches: int = 0  # per-module curvature of the planner (0: not measured)
    curvature_probes: int = 0
    curvature_pairs: int = 0  # (module, rank) truncation costs, one product each per batch
    lyap_frames: int = 1  # 2 when the convergence test rides a second (twin) frame on the same orbit
    lyap_warm: int = 0  # products of the Jacobian warm start (2m + 20 Lanczos steps), before the steps
    curvature_bytes: int = 0  # the truncation deltas it keeps
    fixed_batch: bool = False  # the batch size is part of the model's EoS setting (built-ins): never changed
    reorth: str = "auto"  # estimate.reorth as configured
    lanczos_budget: int | None = None  # bytes an SLQ Lanczos run may use (estimate.memory_budget; None: linalg's default)
    sharpness_budget: int | None = None  # the same for the SGD phase's λ_max runs (they use linalg's default)
    window_context: int = 0  # sliding-window perplexity of the test text (0: off): context and stride in tokens
    window_stride: int = 0
    target_shapes: tuple[tuple[int, int], ...] = ()  # (out, in) of every target module (the curvature's SVDs)
    svd_shapes: tuple[tuple[int, int], ...] = ()  # (out, in) of the modules compress_ factorises (one SVD each per try)
    max_tries: int = 1  # compress-and-evaluate tries (the closed loop's cap; 1 without plan.tolerance)
    remeasure_fraction: float = 1.0  # planned share of the products' cost left after compressing (1: unknown)


#: d-vectors the probe's measured workspace already holds (the vector v and its product H v)
_PROBE_VECTORS = 2


def lanczos_vectors(probe: Probe, steps: int, mode: str, *, keep_basis: bool = False) -> float:
    """d-vectors one Lanczos run keeps (basis and work vectors) in reorthogonalisation ``mode``
    (:func:`sdcompress.linalg.lanczos.lanczos_memory_bytes`)."""
    from sdcompress.linalg.lanczos import lanczos_memory_bytes

    dtype = {8: torch.float64, 4: torch.float32, 2: torch.float16}.get(probe.itemsize, torch.float32)
    total = lanczos_memory_bytes(probe.d, steps, dtype, mode, keep_basis=keep_basis) / (probe.d * probe.itemsize)
    # two of its work vectors (the vector multiplied and the product) were already in the probe's workspace
    return max(total - _PROBE_VECTORS, 0.0)


def lanczos_mode(probe: Probe, steps: int, budget: int | None, reorth: str = "auto") -> str:
    """The mode a run of ``steps`` takes under ``budget`` bytes (``None``: the linalg default)."""
    from sdcompress.linalg.lanczos import choose_reorth

    dtype = {8: torch.float64, 4: torch.float32, 2: torch.float16}.get(probe.itemsize, torch.float32)
    device = torch.device(probe.device)
    return choose_reorth(probe.d, min(steps, probe.d), dtype, memory_budget=budget, device=device, reorth=reorth)


def _window_seconds(probe: Probe, k: Knobs) -> float:
    """The sliding-window perplexity: ⌈(N − context)/stride⌉ + 1 windows of ``context`` tokens over
    the N test tokens evaluated, in forward passes of ``eval_batch_size`` windows."""
    if not (k.window_context and k.window_stride and k.lm_tokens_per_example):
        return 0.0
    tokens = k.eval_test * k.lm_tokens_per_example
    n_windows = math.ceil(max(tokens - k.window_context, 0) / k.window_stride) + 1
    examples = k.eval_batch_size * k.window_context / k.lm_tokens_per_example  # a forward pass, in blocks
    return math.ceil(n_windows / k.eval_batch_size) * probe.t_forward * probe.scale(max(1, round(examples)))


def shape_key(o: int, i: int) -> str:
    """Key of an ``(out, in)`` shape in :attr:`Probe.svd_s`."""
    return f"{o}x{i}"


def useful_rank(o: int, i: int) -> int:
    """Largest rank whose factorisation is smaller than the dense weight (the top of the planner's rank grid)."""
    return max(1, max((k for k in range(1, min(o, i) + 1) if k * (o + i) < o * i), default=1))


def _nearest_shape(probe: Probe, o: int, i: int, size: Any) -> str:
    key = shape_key(o, i)
    if key in probe.svd_s:
        return key

    def of(k: str) -> float:
        a, b = (int(x) for x in k.split("x"))
        return float(size(a, b))

    return min(probe.svd_s, key=lambda k: abs(math.log(of(k) / size(o, i))))


def svd_seconds(probe: Probe, o: int, i: int) -> float:
    """Seconds of one float64 SVD of an ``(o, i)`` matrix: timed, or scaled by ``o·i·min(o, i)``
    from the timed shape nearest in that count (0 when nothing was timed)."""
    if not probe.svd_s:
        return 0.0
    def flops(a: int, b: int) -> int:
        return a * b * min(a, b)

    key = _nearest_shape(probe, o, i, flops)
    a, b = (int(x) for x in key.split("x"))
    return float(probe.svd_s[key][0]) * flops(o, i) / flops(a, b)


def rebuild_seconds(probe: Probe, o: int, i: int, k: int) -> float:
    """Seconds of forming one rank-``k`` truncation ``W − U_k S_k V_kᵀ`` of an ``(o, i)`` weight:
    a line in k through the two timed ranks, scaled by ``o·i`` from the nearest timed shape."""
    if not probe.svd_s:
        return 0.0
    key = _nearest_shape(probe, o, i, lambda a, b: a * b)
    a, b = (int(x) for x in key.split("x"))
    _, t1, t2, k2 = probe.svd_s[key]
    slope = max((t2 - t1) / max(k2 - 1.0, 1.0), 0.0)
    return max(t1 + slope * (k - 1), 0.0) * (o * i) / (a * b)


def _overhead(probe: Probe, name: str, scale: float) -> float:
    """A measured non-product cost, scaled from the settings it was timed at (0 when not timed)."""
    return float(probe.overhead.get(name, 0.0)) * scale


def _slq_overhead(probe: Probe, runs: int, steps: int) -> float:
    """The SLQ estimate's non-product seconds: the Lanczos part scales with runs × steps, the density step not."""
    o = probe.overhead
    if "slq_lanczos" not in o:
        return 0.0
    timed = max(o.get("slq_runs", runs) * o.get("lanczos_steps", steps), 1.0)
    return _overhead(probe, "slq_lanczos", runs * steps / timed) + _overhead(probe, "slq_density", 1.0)


def _lanczos_step_overhead(probe: Probe) -> float:
    """Non-product seconds of one Lanczos step (from the SLQ overhead probe; 0 when not timed)."""
    o = probe.overhead
    if "slq_lanczos" not in o:
        return 0.0
    return o["slq_lanczos"] / max(o.get("slq_runs", 1.0) * o.get("lanczos_steps", 1.0), 1.0)


def compression_seconds(probe: Probe, k: Knobs) -> tuple[float, float, int]:
    """(curvature seconds, seconds of one compress-and-evaluate try without the evaluation, SVDs per run).

    Curvature (when ``k.curvature_batches``): one float64 SVD of every target weight and
    the rebuilding of its truncation at every grid rank, then per batch the gradient graph,
    ``curvature_probes`` whole-target backward passes and one single-module backward pass
    per (module, rank) pair. A try: one SVD per factorised module (``k.svd_shapes``) and
    the rebuilding of its product (the relative error), and a copy of the model.
    """
    from sdcompress.plan.curvature import rank_grid

    s = probe.scale(k.batch_size)
    vec = probe.d * probe.itemsize
    curv = 0.0
    svds = 0
    if k.curvature_batches:
        if probe.t_curv_product > 0:
            for o, i in k.target_shapes:
                grid = rank_grid(useful_rank(o, i))
                curv += svd_seconds(probe, o, i) + sum(rebuild_seconds(probe, o, i, r) for r in grid)
            svds += len(k.target_shapes)
            # timed at n_curv; backward passes through the double-backward graph scale like products
            n_curv = probe.n_curv or probe.n_small
            sg = probe.scale(k.batch_size) / probe.scale(n_curv)
            sh = probe.hvp_scale(k.batch_size) / probe.hvp_scale(n_curv)
            curv += k.curvature_batches * (sg * probe.t_curv_graph + sh * (k.curvature_probes * probe.t_curv_probe
                                                                           + k.curvature_pairs * probe.t_curv_product))
        else:  # no curvature probe: whole-model products (an over-estimate)
            hv = k.curvature_batches * (k.curvature_probes + k.curvature_pairs)
            curv = k.curvature_batches * s * (probe.t_hvp_first - probe.t_hvp) + hv * s * probe.t_hvp
    per_try = 2 * vec / 200e6
    for o, i in k.svd_shapes:
        per_try += svd_seconds(probe, o, i) + rebuild_seconds(probe, o, i, max(1, useful_rank(o, i) // 2))
    return curv, per_try, svds + k.max_tries * len(k.svd_shapes)


def predict(probe: Probe, k: Knobs) -> tuple[StagePrediction, ...]:
    """Per-stage predictions for the settings ``k`` (module docstring)."""
    s, sh = probe.scale(k.batch_size), probe.hvp_scale(k.batch_size)
    # a first product on a batch builds its gradient graph (scales like a gradient), then multiplies
    fwd, grad, hvp = probe.t_forward * s, probe.t_grad * s, probe.t_hvp * sh
    hvp1 = (probe.t_hvp_first - probe.t_hvp) * s + hvp
    vec = probe.d * probe.itemsize
    base = probe.base_bytes + probe.workspace(k.batch_size)
    stages: list[StagePrediction] = []

    def add(name: str, seconds: float, extra_vectors: float, hvps: int, detail: str, extra_bytes: float = 0.0) -> None:
        stages.append(StagePrediction(name, float(seconds), int(base + extra_vectors * vec + extra_bytes),
                                      float(seconds / grad) if grad > 0 else 0.0, int(hvps), detail))

    if k.sgd_steps > 0:
        logs = len({t for t in range(0, k.sgd_steps + 1) if t % k.log_every == 0 or t == k.sgd_steps})
        # λ_max: one Lanczos run of sharpness_steps products (value and free residual, no Ritz vector)
        mode = lanczos_mode(probe, k.sharpness_steps, k.sharpness_budget)
        per = k.sharpness_steps
        hv = logs * per
        sec = k.sgd_steps * grad + logs * ((1 + 2 * k.eval_batches) * fwd + hvp1 + (per - 1) * hvp)
        sec += hv * _lanczos_step_overhead(probe)
        sec += 3 * vec / 200e6  # checkpoint and trained/ written (≈ 200 MB/s)
        add("SGD phase", sec, 2 + lanczos_vectors(probe, k.sharpness_steps, mode), hv,
            f"{k.sgd_steps} steps, batch {k.batch_size}, λ_max by {k.sharpness_steps} Lanczos steps ({mode}) at {logs} points")
    lmode = lanczos_mode(probe, k.lanczos_steps, k.lanczos_budget, k.reorth)
    est_over = 0.0  # the estimate's non-product seconds (the re-measure spends them again)
    if k.method == "exact":
        hv = k.n_batches * probe.d
        add("SD estimate", k.n_batches * (hvp1 + probe.d * hvp), 0, hv, f"exact, {k.n_batches} dense Hessians",
            extra_bytes=2.0 * probe.d ** 2 * 8)
    elif k.method == "lyapunov":
        sec, vectors, hv = _lyapunov_cost(k, grad, hvp1, hvp, probe.d, _lyapunov_hvp(probe, k, hvp))
        est_over = _lyapunov_overhead(probe, k)
        add("SD estimate", sec + est_over, vectors, hv, f"Lyapunov m = {k.lyap_m} × {k.lyap_steps} steps{_frames_note(k)}")
        stages[-1] = replace(stages[-1], parts={"products": sec, "overhead": est_over})
    else:
        hv = k.slq_runs * k.lanczos_steps
        est_over = _slq_overhead(probe, k.slq_runs, k.lanczos_steps)
        over_note = f"; {_fmt_s(est_over)} of it Lanczos, density and bootstrap work" if est_over else ""
        add("SD estimate", k.slq_runs * (hvp1 + (k.lanczos_steps - 1) * hvp) + est_over,
            lanczos_vectors(probe, k.lanczos_steps, lmode), hv,
            f"{k.method}: {k.slq_runs} SLQ runs × {k.lanczos_steps} Lanczos steps ({lmode} reorthogonalisation){over_note}")
        stages[-1] = replace(stages[-1], parts={"products": stages[-1].seconds - est_over, "overhead": est_over})
    if k.lyapunov and k.method != "lyapunov":
        sec, vectors, hv = _lyapunov_cost(k, grad, hvp1, hvp, probe.d, _lyapunov_hvp(probe, k, hvp))
        lyap_over = _lyapunov_overhead(probe, k)
        add("Lyapunov", sec + lyap_over, vectors, hv, f"m = {k.lyap_m} tangent vectors × {k.lyap_steps} steps{_frames_note(k)}")
        stages[-1] = replace(stages[-1], parts={"products": sec, "overhead": lyap_over})
    # evaluation runs at its own batch size; the sliding-window perplexity's windows are counted in examples
    if probe.eval_n and probe.t_forward_eval > 0:  # timed at (up to) the evaluation's batch; linear in examples there
        per_batch = probe.t_forward_eval * k.eval_batch_size / probe.eval_n
    else:
        per_batch = probe.t_forward * probe.scale(k.eval_batch_size)
    eval_sec = (math.ceil(k.eval_test / k.eval_batch_size) + math.ceil(k.eval_train / k.eval_batch_size)) \
        * per_batch + _window_seconds(probe, k)
    logits = 3.0 * k.eval_batch_size * k.lm_tokens_per_example * k.vocab * 4
    add("evaluate", eval_sec, 0, 0, f"{k.eval_test} test + {k.eval_train} train examples, batch {k.eval_batch_size}",
        extra_bytes=logits)
    if k.compress:
        hv = k.curvature_batches * (k.curvature_probes + k.curvature_pairs)
        curv, per_try, svds = compression_seconds(probe, k)
        what = (f"curvature: {k.curvature_batches} batches × ({k.curvature_probes} probes + {k.curvature_pairs} "
                f"rank costs); " if k.curvature_batches else "")
        tries = f"at most {k.max_tries} tries" if k.max_tries > 1 else "1 try"
        svd_bytes = max((3 * o * i * 8 for o, i in k.target_shapes + k.svd_shapes), default=0)  # float64 W, U, Vᵀ
        add("plan+compress", curv + k.max_tries * (per_try + eval_sec), 1 + (2 * k.lyap_m if k.lyapunov else 0), hv,
            what + f"{svds} float64 SVDs; plan, compress a copy, evaluate it ({tries})",
            extra_bytes=logits + svd_bytes + (k.curvature_bytes if k.curvature_batches else 0))
        stages[-1] = replace(stages[-1], svds=svds, parts={"curvature": curv, "compress": k.max_tries * per_try,
                                                           "evaluate": k.max_tries * eval_sec})
        if k.remeasure:
            est = stages[1] if k.sgd_steps > 0 else stages[0]
            products = (est.seconds - est_over) * k.remeasure_fraction
            note = ("same estimator on the compressed model; dense product costs (the planned size is not known "
                    "before planning): an upper bound, re-probed before the stage" if k.remeasure_fraction >= 1 else
                    f"same estimator on the compressed model; products at {k.remeasure_fraction:.2f} of the dense "
                    "cost (planned size), re-probed before the stage")
            add("re-measure SD", products + est_over + vec / 200e6, 1 + (est.peak_bytes - base) / vec, est.hvps, note)
            stages[-1] = replace(stages[-1], parts={"products": products, "overhead": est_over})
    return tuple(stages)



def _lyapunov_hvp(probe: Probe, k: Knobs, hvp: float) -> float:
    """Seconds per tangent-vector product of a Lyapunov step: from the batched product when it was
    timed (the frame goes through one vmapped call), else a single product's ``hvp``."""
    if not (probe.block_n and probe.t_hvp_block > 0 and probe.hvp_sizes):
        return hvp
    n_b = probe.hvp_sizes[-1]
    return probe.t_hvp_block / probe.block_n * probe.hvp_scale(k.batch_size) / probe.hvp_scale(n_b)


def _lyapunov_cost(k: "Knobs", grad: float, hvp1: float, hvp: float, d: int,
                   tangent_hvp: float | None = None) -> tuple[float, int, int]:
    """Seconds, d-vectors held and products of the Lyapunov stage at its step cap: per step one
    gradient graph serves the SGD step and the products of every frame (``lyap_frames`` of m
    columns each), after the warm start's Lanczos run. The convergence test may stop it early,
    so this is an upper bound."""
    warm = min(d, k.lyap_warm)
    per_step = k.lyap_frames * k.lyap_m
    sec = k.lyap_steps * (grad + hvp1 + (per_step - 1) * hvp) + warm * hvp
    if tangent_hvp is not None:  # the frame's products in one batched call: the graph, then per vector
        sec = k.lyap_steps * (grad + (hvp1 - hvp) + per_step * tangent_hvp) + warm * hvp
    return sec, 6 * per_step + 2, k.lyap_steps * per_step + warm


def _lyapunov_overhead(probe: Probe, k: Knobs) -> float:
    """The Lyapunov stage's non-product seconds: per step the frames' QR and bookkeeping (timed
    at the probe's m and frames, scaled linearly in m × frames), and the warm start's Lanczos steps."""
    o = probe.overhead
    if "lyap_step" not in o:
        return 0.0
    timed = max(o.get("lyap_m", k.lyap_m) * o.get("lyap_frames", k.lyap_frames), 1.0)
    per_step = o["lyap_step"] * k.lyap_m * k.lyap_frames / timed
    return k.lyap_steps * per_step + min(probe.d, k.lyap_warm) * _lanczos_step_overhead(probe)


def _frames_note(k: "Knobs") -> str:
    return " (two frames: convergence test)" if k.lyap_frames > 1 else ""


__all__ = ["GiB", "Knobs", "Probe", "StagePrediction", "compression_seconds", "lanczos_mode", "lanczos_vectors", "memory_in_use",
           "predict", "probe_costs", "rebuild_seconds", "shape_key", "svd_seconds", "useful_rank"]

