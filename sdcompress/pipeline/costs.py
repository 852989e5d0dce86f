"""The pre-flight's cost model: measured unit costs (:class:`Probe`) and per-stage
predictions of time and peak memory (:func:`predict`).

See :mod:`sdcompress.pipeline.preflight` for the model's terms and how settings are picked.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from sdcompress.data.core import Batch, batch_size_of
from sdcompress.models.functional import FunctionalLoss
from sdcompress.models.loader import LoadedModel

GiB = 1024 ** 3


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
        wall_time_s: what the probe itself took.
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

    def workspace(self, n: int) -> float:
        """Peak extra memory of a product at ``n`` examples: the measured one at ``n_small`` plus
        the activations of the other examples, kept about 3 times over (the gradient's graph,
        the double-backward graph on top of it, their gradients)."""
        return self.hvp_bytes + 3.0 * self.activation_bytes_per_example * max(n - self.n_small, 0)

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
    """

    name: str
    seconds: float
    peak_bytes: int
    grads: float
    hvps: int
    detail: str


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


def probe_costs(loaded: LoadedModel, batch: Batch, *, params: Any = None, n_small: int | None = None) -> Probe:
    """Time a forward pass, a gradient and Hessian-vector products on ``batch``.

    Products and the forward pass are timed on the first ``n_small`` examples (default:
    min(batch, 2)); gradients on those and on the whole batch, which gives the line the
    other times are scaled along.

    Args:
        loaded: the model and its loss.
        batch: the real minibatch (on the model's device).
        params: parameter patterns the estimates run over (``None``: all trainable).
        n_small: examples the products are timed on.

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
    sizes, times, peaks = [n_small], [t_grad], [g_small.peak]
    if n > n_small:  # the second point of the line: the whole batch, or 4× the small one for a slow model
        n2 = n if t_grad < 2.0 else min(n, 4 * n_small)
        sizes.append(n2)
        with _PeakSampler(device) as g_big:
            times.append(_timed(gradient(_head(batch, n2)), device, max_reps=3))
        peaks.append(g_big.peak)
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
    return Probe(
        device=str(device), d=int(floss.d), itemsize=int(itemsize), n_small=n_small, t_forward=t_fwd, t_grad=t_grad,
        t_hvp_first=float(min(firsts)), t_hvp=t_hvp, grad_sizes=tuple(sizes), grad_times=tuple(times),
        base_bytes=int(base), hvp_bytes=int(max(peak.peak - base, 0)), threads=torch.get_num_threads(),
        activation_bytes_per_example=float(max(peaks[-1] - peaks[0], 0) / max(sizes[-1] - sizes[0], 1)),
        wall_time_s=time.perf_counter() - start,
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


def predict(probe: Probe, k: Knobs) -> tuple[StagePrediction, ...]:
    """Per-stage predictions for the settings ``k`` (module docstring)."""
    s = probe.scale(k.batch_size)
    fwd, grad, hvp1, hvp = (probe.t_forward * s, probe.t_grad * s, probe.t_hvp_first * s, probe.t_hvp * s)
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
        sec += 3 * vec / 200e6  # checkpoint and trained/ written (≈ 200 MB/s)
        add("SGD phase", sec, 2 + lanczos_vectors(probe, k.sharpness_steps, mode), hv,
            f"{k.sgd_steps} steps, batch {k.batch_size}, λ_max by {k.sharpness_steps} Lanczos steps ({mode}) at {logs} points")
    lmode = lanczos_mode(probe, k.lanczos_steps, k.lanczos_budget, k.reorth)
    if k.method == "exact":
        hv = k.n_batches * probe.d
        add("SD estimate", k.n_batches * (hvp1 + probe.d * hvp), 0, hv, f"exact, {k.n_batches} dense Hessians",
            extra_bytes=2.0 * probe.d ** 2 * 8)
    elif k.method == "lyapunov":
        sec, vectors, hv = _lyapunov_cost(k, grad, hvp1, hvp, probe.d)
        add("SD estimate", sec, vectors, hv, f"Lyapunov m = {k.lyap_m} × {k.lyap_steps} steps{_frames_note(k)}")
    else:
        hv = k.slq_runs * k.lanczos_steps
        add("SD estimate", k.slq_runs * (hvp1 + (k.lanczos_steps - 1) * hvp),
            lanczos_vectors(probe, k.lanczos_steps, lmode), hv,
            f"{k.method}: {k.slq_runs} SLQ runs × {k.lanczos_steps} Lanczos steps ({lmode} reorthogonalisation)")
    if k.lyapunov and k.method != "lyapunov":
        sec, vectors, hv = _lyapunov_cost(k, grad, hvp1, hvp, probe.d)
        add("Lyapunov", sec, vectors, hv, f"m = {k.lyap_m} tangent vectors × {k.lyap_steps} steps{_frames_note(k)}")
    # evaluation runs at its own batch size; the sliding-window perplexity's windows are counted in examples
    eval_sec = (math.ceil(k.eval_test / k.eval_batch_size) + math.ceil(k.eval_train / k.eval_batch_size)) \
        * probe.t_forward * probe.scale(k.eval_batch_size) + _window_seconds(probe, k)
    logits = 3.0 * k.eval_batch_size * k.lm_tokens_per_example * k.vocab * 4
    add("evaluate", eval_sec, 0, 0, f"{k.eval_test} test + {k.eval_train} train examples, batch {k.eval_batch_size}",
        extra_bytes=logits)
    if k.compress:
        hv = k.curvature_batches * (k.curvature_probes + k.curvature_pairs)
        curv = k.curvature_batches * (hvp1 - hvp) + hv * hvp  # one graph per batch, then one backward pass per product
        what = (f"curvature: {k.curvature_batches} batches × ({k.curvature_probes} probes + {k.curvature_pairs} "
                f"rank costs); " if k.curvature_batches else "")
        add("plan+compress", eval_sec + curv + 2 * vec / 200e6, 1 + (2 * k.lyap_m if k.lyapunov else 0), hv,
            what + "plan, compress a copy, evaluate it",
            extra_bytes=logits + (k.curvature_bytes if k.curvature_batches else 0))
        if k.remeasure:
            est = stages[1] if k.sgd_steps > 0 else stages[0]
            add("re-measure SD", est.seconds + vec / 200e6, 1 + (est.peak_bytes - base) / vec, est.hvps,
                "same estimator on the compressed model")
    return tuple(stages)



def _lyapunov_cost(k: "Knobs", grad: float, hvp1: float, hvp: float, d: int) -> tuple[float, int, int]:
    """Seconds, d-vectors held and products of the Lyapunov stage at its step cap: per step one
    gradient graph serves the SGD step and the products of every frame (``lyap_frames`` of m
    columns each), after the warm start's Lanczos run. The convergence test may stop it early,
    so this is an upper bound."""
    warm = min(d, k.lyap_warm)
    per_step = k.lyap_frames * k.lyap_m
    sec = k.lyap_steps * (grad + hvp1 + (per_step - 1) * hvp) + warm * hvp
    return sec, 6 * per_step + 2, k.lyap_steps * per_step + warm


def _frames_note(k: "Knobs") -> str:
    return " (two frames: convergence test)" if k.lyap_frames > 1 else ""


__all__ = ["GiB", "Knobs", "Probe", "StagePrediction", "lanczos_mode", "lanczos_vectors", "memory_in_use", "predict", "probe_costs"]

