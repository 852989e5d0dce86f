"""The pre-flight: time one gradient and one Hessian-vector product on the real batch,
predict each stage's time and peak memory, and pick settings that fit.

Why: at GPT-2-small scale (d = 124M) one Hessian-vector product costs seconds to tens of
seconds on a CPU and each Lanczos vector half a gigabyte, so the main job's default
settings (16 SLQ runs × 40 steps, a 16-vector Lyapunov frame over 50 steps, 100 SGD
steps, evaluation on thousands of blocks) would need hours and tens of gigabytes. The
pre-flight measures instead of guessing, then scales the settings down until the
prediction fits the time and memory budgets, and says which it picked and why.

Cost model (every stage as a count of measured unit costs; ``n`` examples per batch):

- ``t_fwd(n)``, ``t_grad(n)``: one forward pass, one gradient of the minibatch loss;
- ``t_hvp1(n)``: the first product on a new minibatch (builds the gradient graph),
  ``t_hvp(n)``: each further product on the same minibatch (one more backward pass).
  Forward passes, gradients and graph builds scale with a straight line through two
  gradient timings; products with their own line through two product timings (they grow
  faster with the batch: the double-backward graph holds more per example).
- SGD phase of a non-built-in (S steps, logged every ``log_every``): S·t_grad plus, per
  logged step, (1 + 2·eval_batches)·t_fwd and a sharpness Lanczos run
  t_hvp1 + sharpness_steps·t_hvp.
- density estimate (ps/kde/slq, R runs × L steps): R·(t_hvp1 + (L − 1)·t_hvp) plus its
  non-product work (Lanczos bookkeeping and reorthogonalisation, the per-block weights,
  the density grid, the pseudo-spectrum and the bootstrap), timed by running the same
  SLQ and density code on a free diagonal operator at two sizes ≤ d and extrapolating
  linearly in d; Lyapunov (m vectors, T steps): T·(t_grad + t_hvp1 + (m − 1)·t_hvp) plus
  the frames' QR and bookkeeping per step, timed the same way
  (:mod:`~sdcompress.pipeline.subprobes`).
- evaluation: forwards over the capped test and train subsets (and the sliding-window
  perplexity), before and after compressing.
- plan and compress: the per-module curvature (an SVD of every target weight and its
  truncation at every grid rank, then per batch a gradient graph, the Hutchinson probes
  and one single-module backward pass per (module, rank), each timed on the real weights
  and batch), then per try (1, or at most ``plan.max_tries`` in the closed loop) an SVD of
  every factorised module (timed once per distinct shape), a model copy and the
  evaluation of the compressed copy.
- re-measure: the estimate's products scaled by the planned share of the parameters left
  (a hand-set rank or a params budget; otherwise the dense cost, an upper bound) plus the
  same non-product work. Just before that stage runs, :func:`remeasure_prediction`
  probes the compressed model (a gradient and a product) and logs an updated prediction.

Memory: the resident size when the pre-flight starts, plus the measured workspace of one
product (gradient graph and activations), plus the d-vectors each stage keeps (Lanczos
basis, Lyapunov frame and its QR copies, a model copy while compressing) and the logits
of an evaluation batch.

The picks come from fixed ladders (so a small timing change rarely changes them, and a
resumed run reads them from ``preflight.json`` instead of measuring again). Nothing is
raised above what the config asks for.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from sdcompress.data.core import move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, SdcompressError
from sdcompress.io import write_json_atomic
from sdcompress.pipeline.costs import (
    GiB,
    Knobs,
    Probe,
    StagePrediction,
    _fmt_b,
    _fmt_s,
    lanczos_mode,
    lanczos_vectors,
    memory_in_use,
    predict,
    probe_costs,
    useful_rank,
)
from sdcompress.pipeline.subprobes import probe_compression, probe_overheads

logger = logging.getLogger(__name__)

PREFLIGHT_FILE = "preflight.json"
#: default time budget of the main job (seconds)
DEFAULT_TIME_BUDGET_S = 1800.0
#: default memory cap on a CPU: the smaller of this and 80% of the memory available now
DEFAULT_CPU_MEMORY_GB = 7.4  # GiB: 7.95 GB, under the 8 GB a laptop-sized run is promised

# ladders, largest first: each entry is a setting the pre-flight may step down to
_SLQ_LADDER = ((16, 40), (12, 30), (8, 30), (8, 20), (6, 16), (4, 12), (4, 10), (3, 8), (2, 6))
_LYAP_LADDER = ((16, 50), (8, 30), (4, 20), (4, 12))
_SGD_LADDER = (100, 50, 20, 10, 5)
_SHARP_LADDER = (20, 12, 8, 6, 4)


class PreflightError(SdcompressError):
    """Nothing the pre-flight may pick fits the time or memory budget."""


@dataclass
class PreflightConfig:
    """Settings of the pre-flight.

    Attributes:
        enabled: run the pre-flight (``False``: use the settings as given, unchecked).
        time_budget_s: seconds the whole run may take (``None``: no time limit).
        memory_budget_gb: peak memory (GiB) the run may use: resident memory on a CPU,
            allocated GPU memory on CUDA. ``None``: on a CPU the smaller of 8 GiB and 80%
            of the memory available now; on CUDA 90% of the free GPU memory.
        adjust: step settings down until the prediction fits (``False``: only predict,
            and refuse when it does not fit).
    """

    enabled: bool = True
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S
    memory_budget_gb: float | None = None
    adjust: bool = True

    SECTION: ClassVar[str] = "preflight"

    def __post_init__(self) -> None:
        self.validate()

    def memory_budget_bytes(self, device: torch.device) -> int:
        """The memory budget in bytes: ``memory_budget_gb``, or the device's default."""
        return int(self.memory_budget_gb * GiB) if self.memory_budget_gb is not None else default_memory_budget(device)

    def validate(self) -> "PreflightConfig":
        """Check every field; returns ``self``.

        Raises:
            ConfigError: a budget that is not a positive number, a switch that is not a bool.
        """
        for name in ("time_budget_s", "memory_budget_gb"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ConfigError(f"preflight.{name} must be a positive number or null, got {v!r}")
        for name in ("enabled", "adjust"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"preflight.{name} must be true or false, got {getattr(self, name)!r}")
        return self


@dataclass(frozen=True)
class PreflightResult:
    """What the pre-flight measured, predicted and picked (``preflight.json``).

    Attributes:
        probe: the measured unit costs.
        settings: the picked values, as ``"section.key": value`` (``"lyapunov"``: whether
            the Lyapunov subspace is tracked).
        stages: per-stage predictions with the picked settings.
        time_budget_s, memory_budget_bytes: the budgets (``None``: unlimited).
        choices: one line per change, saying what was picked and why.
        fits: the prediction fits both budgets.
    """

    probe: Probe
    settings: dict[str, Any]
    stages: tuple[StagePrediction, ...]
    time_budget_s: float | None
    memory_budget_bytes: int | None
    choices: tuple[str, ...] = ()
    fits: bool = True

    @property
    def total_seconds(self) -> float:
        return float(sum(s.seconds for s in self.stages))

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.stages), default=self.probe.base_bytes)

    def table(self) -> str:
        """A small text table of the predictions (what the CLI prints)."""
        p = self.probe
        lines = [f"pre-flight on {p.device} ({p.threads} threads), d = {p.d:,}: one gradient {p.t_grad:.3g} s, "
                 f"one Hessian-vector product {p.t_hvp:.3g} s ({p.t_hvp_first:.3g} s the first) at {p.n_small} examples",
                 f"{'stage':<16} {'time':>9} {'peak memory':>12} {'grads':>8}  settings"]
        for s in self.stages:
            lines.append(f"{s.name:<16} {_fmt_s(s.seconds):>9} {_fmt_b(s.peak_bytes):>12} {s.grads:>8.0f}  {s.detail}")
        tb = "no limit" if self.time_budget_s is None else _fmt_s(self.time_budget_s)
        mb = "no limit" if self.memory_budget_bytes is None else _fmt_b(self.memory_budget_bytes)
        lines.append(f"{'total':<16} {_fmt_s(self.total_seconds):>9} {_fmt_b(self.peak_bytes):>12}           "
                     f"budget {tb}, {mb}")
        lines += [f"  picked: {c}" for c in self.choices]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_seconds"], d["peak_bytes"] = self.total_seconds, self.peak_bytes
        return json.loads(json.dumps(d))  # plain JSON types (lists, not tuples), as preflight.json holds them

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreflightResult":
        probe = data["probe"]
        probe = Probe(**{**probe, **{k: tuple(probe[k]) for k in ("grad_sizes", "grad_times", "hvp_sizes", "hvp_times")
                                     if k in probe}})
        return cls(probe=probe, settings=dict(data["settings"]),
                   stages=tuple(StagePrediction(**s) for s in data["stages"]), time_budget_s=data["time_budget_s"],
                   memory_budget_bytes=data["memory_budget_bytes"], choices=tuple(data["choices"]), fits=data["fits"])

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PreflightResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------- picking


def _fits(stages: tuple[StagePrediction, ...], time_budget: float | None, mem_budget: int | None) -> tuple[bool, bool]:
    total = sum(s.seconds for s in stages)
    peak = max(s.peak_bytes for s in stages)
    return (time_budget is None or total <= time_budget), (mem_budget is None or peak <= mem_budget)


def _moves(k: Knobs, builtin: bool) -> list[tuple[str, Any]]:
    """Step-downs in the order they are tried: first what costs least in quality."""
    moves: list[tuple[str, Any]] = [("eval", 512), ("curv", 1), ("lyap", (8, 30)), ("slq", (8, 30)), ("sgd", (50, 12))]
    if not builtin:
        moves.append(("batch", None))
    moves += [("eval", 256), ("lyap", (4, 20)), ("slq", (6, 16)), ("sgd", (20, 8))]
    if not builtin:
        moves.append(("batch", None))
    moves += [("eval", 128), ("curv", 0), ("slq", (4, 12)), ("lyap", (4, 12)), ("sgd", (10, 6)), ("lyap", None), ("slq", (4, 10))]
    if not builtin:
        moves += [("batch", None)] * 3
    moves += [("eval", 64), ("slq", (3, 8)), ("sgd", (5, 4)), ("eval", 32), ("slq", (2, 6)), ("sgd", (2, 3)),
              ("eval", 16)]
    return moves


def _apply_move(k: Knobs, move: tuple[str, Any]) -> str | None:
    """Apply one step-down in place; returns a description, or ``None`` when it changes nothing."""
    kind, arg = move
    if kind == "eval":
        t, r = min(k.eval_test, arg), min(k.eval_train, arg)
        if (t, r) == (k.eval_test, k.eval_train):
            return None
        k.eval_test, k.eval_train, k.eval_test_cap, k.eval_train_cap = t, r, arg, arg
        return f"evaluation on at most {arg} test and {arg} train examples"
    if kind == "lyap":
        if not k.lyapunov:
            return None
        if arg is None:
            k.lyapunov = False
            return "no Lyapunov subspace (the plan allots SD to modules by size, unweighted SVD)"
        m, steps = min(k.lyap_m, arg[0]), min(k.lyap_steps, arg[1])
        if (m, steps) == (k.lyap_m, k.lyap_steps):
            return None
        k.lyap_m, k.lyap_steps = m, steps
        return f"Lyapunov m = {m} × {steps} steps"
    if kind == "slq":
        if k.method not in ("ps", "kde", "slq"):
            return None
        r, L = min(k.slq_runs, arg[0]), min(k.lanczos_steps, arg[1])
        if (r, L) == (k.slq_runs, k.lanczos_steps):
            return None
        k.slq_runs, k.lanczos_steps = r, L
        return f"{r} SLQ runs × {L} Lanczos steps"
    if kind == "sgd":
        if k.sgd_steps == 0:
            return None
        s, sh = min(k.sgd_steps, arg[0]), min(k.sharpness_steps, arg[1])
        eb = min(k.eval_batches, 1 if s <= 20 else k.eval_batches)  # short phases log losses on one batch
        if (s, sh, eb) == (k.sgd_steps, k.sharpness_steps, k.eval_batches):
            return None
        k.sgd_steps, k.sharpness_steps, k.eval_batches = s, sh, eb
        return f"{s} SGD steps, λ_max by {sh} Lanczos steps, logged losses on {eb} batch(es)"
    if kind == "curv":
        if k.curvature_batches <= arg:
            return None
        k.curvature_batches = arg
        return (f"per-module curvature on {arg} batch(es)" if arg else
                "no per-module curvature (the SD split across modules goes by size and SD share)")
    if kind == "batch":
        if k.batch_size <= 1:
            return None
        k.batch_size = max(1, k.batch_size // 2)
        return f"batch size {k.batch_size}"
    raise ValueError(kind)  # pragma: no cover


def _memory_caps(probe: Probe, k: Knobs, mem_budget: int | None) -> list[str]:
    """Lower the settings whose memory grows with them until each fits on its own."""
    if mem_budget is None:
        return []
    notes = []
    vec = probe.d * probe.itemsize
    if not k.fixed_batch:  # the products' activations grow with the batch: halve it until 8 vectors fit beside
        while k.batch_size > 1 and probe.base_bytes + probe.workspace(k.batch_size) + 8 * vec > mem_budget:
            k.batch_size //= 2
            notes.append(f"batch size {k.batch_size} (the activations of a larger batch do not fit in memory)")
    room = (mem_budget - probe.base_bytes - probe.workspace(k.batch_size)) / vec  # d-vectors that fit next to a product
    if k.compress and k.remeasure:
        room -= 1  # the re-measure runs with the compressed copy beside the original
    if k.method in ("ps", "kde", "slq"):
        # the Lanczos runs get what is left next to a product; "auto" then keeps the most accurate
        # basis that fits (full, half precision, or none: the three-term recurrence in O(d))
        k.lanczos_budget = max(int(room * vec), 1)
        mode = lanczos_mode(probe, k.lanczos_steps, k.lanczos_budget, k.reorth)
        if mode != "full":
            notes.append(f"Lanczos with {mode} reorthogonalisation (a {k.lanczos_steps}-vector basis in full precision "
                         "does not fit in memory)")
        if lanczos_vectors(probe, k.lanczos_steps, mode) > room:
            notes.append("not even the O(d) Lanczos recurrence fits in memory")
    if k.sgd_steps > 0:
        mode = lanczos_mode(probe, k.sharpness_steps, k.sharpness_budget)  # linalg's default budget
        if 3 + lanczos_vectors(probe, k.sharpness_steps, mode) > room and mode == "full":
            s = k.sharpness_steps
            while s > 2 and 3 + lanczos_vectors(probe, s, mode) > room:
                s -= 1
            notes.append(f"λ_max by {s} Lanczos steps (a {k.sharpness_steps}-vector basis does not fit in memory)")
            k.sharpness_steps = s
    if k.lyapunov and 6 * k.lyap_m + 2 > room:
        m = int((room - 2) // 6)
        if m < 2:
            k.lyapunov = False
            notes.append("no Lyapunov subspace: even a 2-vector frame and its QR copies do not fit in memory")
        else:
            notes.append(f"Lyapunov m = {m} (an m = {k.lyap_m} frame and its QR copies do not fit in memory)")
            k.lyap_m = m
    if k.curvature_batches and probe.base_bytes + probe.hvp_bytes + 2 * vec + k.curvature_bytes > mem_budget:
        notes.append(f"no per-module curvature (its {_fmt_b(k.curvature_bytes)} of truncation deltas do not fit in memory)")
        k.curvature_batches = 0
    if k.vocab and k.lm_tokens_per_example:
        per = 3.0 * k.lm_tokens_per_example * k.vocab * 4
        free = mem_budget - probe.base_bytes - probe.hvp_bytes - 2 * vec
        bs = k.eval_batch_size
        while bs > 1 and bs * per > max(free, 0) / 4:
            bs //= 2
        if bs != k.eval_batch_size:
            notes.append(f"evaluation batch {bs} (the logits of {k.eval_batch_size} blocks would not fit)")
            k.eval_batch_size = bs
    return notes


def pick_settings(probe: Probe, knobs: Knobs, *, time_budget_s: float | None, memory_budget_bytes: int | None,
                  adjust: bool = True, builtin: bool = False) -> tuple[Knobs, tuple[StagePrediction, ...], list[str], bool]:
    """Step settings down (fixed ladders, cheapest loss of quality first) until they fit.

    Returns:
        The picked knobs, their stage predictions, the choices made (one line each, with
        the reason) and whether the prediction fits both budgets.
    """
    k = replace(knobs, fixed_batch=knobs.fixed_batch or builtin)
    choices: list[str] = []
    if adjust:
        choices += _memory_caps(probe, k, memory_budget_bytes)
    stages = predict(probe, k)
    ok_t, ok_m = _fits(stages, time_budget_s, memory_budget_bytes)
    if not adjust:
        return k, stages, choices, ok_t and ok_m
    for move in _moves(k, builtin):
        if ok_t and ok_m:
            break
        trial = replace(k)
        what = _apply_move(trial, move)
        if what is None:
            continue
        new = predict(probe, trial)
        before_t, after_t = sum(s.seconds for s in stages), sum(s.seconds for s in new)
        helps_t = not ok_t and after_t < before_t
        helps_m = not ok_m and max(s.peak_bytes for s in new) < max(s.peak_bytes for s in stages)
        if not (helps_t or helps_m):
            continue  # a step-down that does not help the budget that is exceeded costs quality for nothing
        k, stages = trial, new
        ok_t, ok_m = _fits(stages, time_budget_s, memory_budget_bytes)
        choices.append(f"{what} (predicted {_fmt_s(before_t)} → {_fmt_s(after_t)}; "
                       f"to fit the {'time' if helps_t else 'memory'} budget)")
    return k, stages, choices, ok_t and ok_m


def default_memory_budget(device: torch.device) -> int:
    """See :attr:`PreflightConfig.memory_budget_gb` (``None``)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(0.9 * free) + int(torch.cuda.memory_allocated(device))
    import psutil

    return int(min(DEFAULT_CPU_MEMORY_GB * GiB, 0.8 * psutil.virtual_memory().available + memory_in_use(device)))


def refusal(result: PreflightResult, knobs: Knobs) -> str:
    """The one-line message of a run that does not fit, with a concrete suggestion."""
    total, peak = result.total_seconds, result.peak_bytes
    parts = []
    if result.time_budget_s is not None and total > result.time_budget_s:
        parts.append(f"predicted time {_fmt_s(total)} exceeds the time budget {_fmt_s(result.time_budget_s)}")
    if result.memory_budget_bytes is not None and peak > result.memory_budget_bytes:
        parts.append(f"predicted peak memory {_fmt_b(peak)} exceeds the memory budget {_fmt_b(result.memory_budget_bytes)}")
    hints = []
    if result.time_budget_s is not None and total > result.time_budget_s:
        hints.append(f"--time-budget {int(math.ceil(total * 1.25 / 60.0)) * 60}")
    if result.memory_budget_bytes is not None and peak > result.memory_budget_bytes:
        hints.append(f"--memory-budget {math.ceil(peak * 1.15 / GiB)}")
    if knobs.batch_size > 1:
        hints.append("a smaller --batch-size")
    hints.append("--set estimate.params=PATTERN to measure a subset of the parameters, or a GPU (--device cuda)")
    return (f"the run does not fit even with the smallest settings the pre-flight may pick ({'; '.join(parts)}); "
            f"try {', or '.join(hints)}")


# ----------------------------------------------------------------------------- the pipeline's stage


def _vocab_and_block(trained: Any) -> tuple[int, int]:
    if trained.loaded.task != "lm":
        return 0, 0
    cfg = getattr(trained.loaded.model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    x = trained.data.train.take(torch.arange(1)) if len(trained.data.train) else None
    block = int(x["input_ids"].shape[1]) if isinstance(x, dict) else 0
    return vocab, block


def _targets(cfg: Any, trained: Any) -> list[Any]:
    from sdcompress.plan import describe_modules

    return describe_modules(trained.loaded.model, cfg.plan.targets, cfg.plan.ignore)


def _curvature(cfg: Any, trained: Any, modules: list[Any] | None = None) -> tuple[int, int, int]:
    """Batches, (module, rank) pairs and kept bytes of the planner's per-module curvature."""
    from sdcompress.plan import CURVATURE_STRATEGIES
    from sdcompress.plan.curvature import rank_grid

    p = cfg.plan
    if not (p.strategy in CURVATURE_STRATEGIES and p.curvature_batches > 0 and (p.strategy != "sd" or p.rank_mode == "auto")):
        return 0, 0, 0
    pairs = kept = 0
    itemsize = next(trained.loaded.model.parameters()).element_size()
    for m in _targets(cfg, trained) if modules is None else modules:
        o, i = m.out_features, m.in_features
        n = len(rank_grid(useful_rank(o, i)))
        pairs += n
        kept += n * o * i * itemsize
    return p.curvature_batches, pairs, kept


def factorised_shapes(plan_cfg: Any, modules: list[Any]) -> tuple[tuple[int, int], ...]:
    """``(out, in)`` of the modules ``compress_`` will factorise by SVD (at most: a plan may keep
    a module dense where a factorisation would not be smaller)."""
    if plan_cfg.strategy in ("magnitude", "uniform-bits") or plan_cfg.rank_mode == "off":
        return ()
    shapes = [(m.out_features, m.in_features) for m in modules]
    if plan_cfg.rank_mode == "manual":
        k = int(plan_cfg.target_rank)
        if plan_cfg.strategy == "uniform-rank":
            return tuple((o, i) for o, i in shapes if k * (o + i) < o * i)
        return tuple((o, i) for o, i in shapes if k <= min(o, i))
    return tuple(shapes)


def planned_fraction(plan_cfg: Any, modules: list[Any], d: int) -> float:
    """The share of the d parameters left after compressing, as far as the settings say before
    planning: a hand-set rank or a params budget; 1 when SD decides (unknown until planned)."""
    total = sum(m.out_features * m.in_features for m in modules)
    if d <= 0 or total == 0:
        return 1.0
    if plan_cfg.rank_mode == "manual":
        k = int(plan_cfg.target_rank)
        after = sum(min(k * (m.out_features + m.in_features), m.out_features * m.in_features)
                    if (m.out_features, m.in_features) in set(factorised_shapes(plan_cfg, [m])) else
                    m.out_features * m.in_features for m in modules)
    elif "params_fraction" in (plan_cfg.budget or {}):
        after = plan_cfg.budget["params_fraction"] * total
    else:
        return 1.0
    return float(min(max((d - total + after) / d, 0.0), 1.0))


def knobs_for(cfg: Any, trained: Any, *, lyapunov: bool) -> Knobs:
    """The cost model's view of a resolved :class:`RunConfig` and the loaded model/data."""
    e, ev, tr = cfg.estimate, cfg.evaluate, cfg.train
    vocab, block = _vocab_and_block(trained)
    n_test, n_train = len(trained.data.test), len(trained.data.train)
    t_cap, r_cap = ev.max_test_examples, ev.max_train_examples
    ctx = stride = 0
    if getattr(ev, "sliding_window", False) and block and trained.loaded.task == "lm":
        ctx = getattr(ev, "context_length", None) or block
        stride = getattr(ev, "stride", None) or max(1, ctx // 2)
    modules = _targets(cfg, trained)
    curv_batches, pairs, curv_bytes = _curvature(cfg, trained, modules)
    d = sum(p.numel() for p in trained.loaded.model.parameters() if p.requires_grad)
    return Knobs(
        target_shapes=tuple((m.out_features, m.in_features) for m in modules),
        svd_shapes=factorised_shapes(cfg.plan, modules), max_tries=cfg.plan.max_tries if cfg.plan.tolerance is not None else 1,
        remeasure_fraction=planned_fraction(cfg.plan, modules, d),
        curvature_batches=curv_batches, curvature_probes=cfg.plan.curvature_probes, curvature_pairs=pairs,
        curvature_bytes=curv_bytes, reorth=e.reorth, lanczos_budget=e.memory_budget,
        batch_size=cfg.data.batch_size, sgd_steps=tr.steps if trained.pending else 0, log_every=tr.log_every,
        sharpness_steps=tr.sharpness_steps, eval_batches=tr.eval_batches, method=e.method, slq_runs=e.slq_runs,
        lanczos_steps=e.lanczos_steps, n_batches=e.n_batches, lyapunov=lyapunov, lyap_m=e.lyapunov_exponents,
        lyap_steps=e.lyapunov_steps, eval_test=min(n_test, t_cap or n_test), eval_train=min(n_train, r_cap or n_train),
        eval_test_cap=t_cap, eval_train_cap=r_cap, eval_batch_size=ev.batch_size, remeasure=ev.remeasure_sd,
        compress=True, lm_tokens_per_example=block, vocab=vocab, n_test_total=n_test, n_train_total=n_train,
        window_context=ctx, window_stride=stride,
        lyap_frames=1 if e.lyapunov_tol is None else 2,
        lyap_warm=2 * e.lyapunov_exponents + 20 if e.lyapunov_warm_start == "jacobian" else 0,
    )


def settings_of(k: Knobs, cfg: Any) -> dict[str, Any]:
    """The picked knobs as ``"section.key": value`` (only what differs from ``cfg``), plus ``"lyapunov"``."""
    e = cfg.estimate
    warmup = e.lyapunov_warmup if k.lyap_steps == e.lyapunov_steps else min(e.lyapunov_warmup, max(1, k.lyap_steps // 5))
    if k.method == "lyapunov" or k.lyapunov:
        warmup = min(warmup, k.lyap_steps - 1)
    values = {
        "data.batch_size": k.batch_size, "train.steps": k.sgd_steps if k.sgd_steps else cfg.train.steps,
        "train.sharpness_steps": k.sharpness_steps, "train.eval_batches": k.eval_batches, "estimate.slq_runs": k.slq_runs,
        "estimate.lanczos_steps": k.lanczos_steps, "estimate.lyapunov_exponents": k.lyap_m,
        "estimate.lyapunov_steps": k.lyap_steps, "estimate.lyapunov_warmup": warmup,
        "evaluate.max_test_examples": k.eval_test_cap, "evaluate.max_train_examples": k.eval_train_cap,
        "estimate.memory_budget": k.lanczos_budget if k.lanczos_budget is not None else e.memory_budget,
        "evaluate.batch_size": k.eval_batch_size, "plan.curvature_batches": k.curvature_batches if k.curvature_pairs
        else cfg.plan.curvature_batches,
    }
    out: dict[str, Any] = {key: v for key, v in values.items() if _get(cfg, key) != v}
    out["lyapunov"] = bool(k.lyapunov)
    return out


def _get(cfg: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def apply_settings(cfg: Any, settings: dict[str, Any]) -> Any:
    """A copy of ``cfg`` with the picked ``"section.key"`` values set (``"lyapunov"`` is not a config field)."""
    import copy

    cfg = copy.deepcopy(cfg)
    for key, value in settings.items():
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    return cfg


def run_preflight(cfg: Any, trained: Any, folder: Path | None, device: torch.device, *,
                  lyapunov: bool) -> tuple[Any, PreflightResult | None]:
    """The pipeline's pre-flight: probe, predict, pick, print; or read ``folder/preflight.json``.

    Args:
        cfg: the resolved :class:`~sdcompress.pipeline.RunConfig`.
        trained: the loaded model and data (:class:`~sdcompress.pipeline.stages.Trained`).
        folder: the run folder (``preflight.json`` is written there), or ``None``.
        device: where the run computes.
        lyapunov: whether the run would track the Lyapunov subspace.

    Returns:
        The config with the picked settings applied, and the result (``None`` when disabled).

    Raises:
        PreflightError: nothing the pre-flight may pick fits (the message suggests a fix).
    """
    pcfg = getattr(cfg, "preflight", None) or PreflightConfig()
    if not pcfg.enabled:
        return cfg, None
    path = None if folder is None else folder / PREFLIGHT_FILE
    if path is not None and path.is_file():  # a resumed run keeps the settings it picked
        result = PreflightResult.load(path)
        logger.info("pre-flight settings from %s: %s", path, result.settings)
        return apply_settings(cfg, result.settings), result
    stream = BatchStream(trained.data.train, cfg.data.batch_size, seed=cfg.data.seed, replacement=cfg.data.replacement)
    batch = move_batch(stream.batch(0), device)
    params = getattr(cfg.estimate, "params", None)
    vocab, block = _vocab_and_block(trained)
    eval_n = cfg.evaluate.batch_size  # the probe's evaluation forward: its logits under 256 MiB
    while eval_n > 1 and 3 * eval_n * block * vocab * 4 > 256 * 2 ** 20:
        eval_n //= 2
    knobs = knobs_for(cfg, trained, lyapunov=lyapunov)
    budget_t = pcfg.time_budget_s
    budget_m = pcfg.memory_budget_bytes(device)
    probe = probe_costs(trained.loaded, batch, params=params, eval_batch_size=eval_n, block=_frame_block(knobs, cfg),
                        memory_budget=budget_m)
    from sdcompress.models import BUILTIN_MODELS

    probe = _subprobes(probe, cfg, trained.loaded, batch, knobs)
    budget_left = None if budget_t is None else max(budget_t - probe.wall_time_s, 0.0)  # the probe spent some
    k, stages, choices, fits = pick_settings(probe, knobs, time_budget_s=budget_left, memory_budget_bytes=budget_m,
                                             adjust=pcfg.adjust, builtin=cfg.model.name in BUILTIN_MODELS)
    result = PreflightResult(probe, settings_of(k, cfg), stages, budget_t, budget_m, tuple(choices), fits)
    logger.info("%s", result.table())
    if not fits:
        raise PreflightError(refusal(result, k))
    if path is not None:
        result.save(path)
    return apply_settings(cfg, result.settings), result


def _frame_block(k: Knobs, cfg: Any) -> int | None:
    """Vectors a Lyapunov step multiplies in one batched call (``None``: no Lyapunov stage)."""
    if not (k.lyapunov or k.method == "lyapunov"):
        return None
    chunk = getattr(cfg.estimate, "chunk_size", None) or k.lyap_frames * k.lyap_m
    return max(1, min(k.lyap_frames * k.lyap_m, chunk))


def _numeric_lr(cfg: Any) -> float:
    """η for the overhead probe's density grid (its cost does not depend on η; ``auto`` is
    resolved only after the SGD phase, so a stand-in is used then)."""
    lr = cfg.train.lr
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else 0.1  # validated by TrainConfig


def _block_sizes(loaded: Any, params: Any) -> tuple[int, ...]:
    from sdcompress.models.functional import FunctionalLoss

    return tuple(FunctionalLoss(loaded.model, params, None).layout.sizes)


def _subprobes(probe: Probe, cfg: Any, loaded: Any, batch: Any, knobs: Knobs) -> Probe:
    """The compression stage's and the estimators' smaller probes (:mod:`~sdcompress.pipeline.subprobes`)."""
    import torch.nn.functional as F

    params = getattr(cfg.estimate, "params", None)
    if knobs.compress:
        from sdcompress.plan import describe_modules

        modules = describe_modules(loaded.model, cfg.plan.targets, cfg.plan.ignore)
        probe = probe_compression(probe, loaded.model, batch, modules, loss_fn=loaded.loss_fn or F.cross_entropy,
                                  curvature=knobs.curvature_batches > 0)
    return probe_overheads(probe, knobs, _block_sizes(loaded, params), cfg.estimate, lr=_numeric_lr(cfg),
                           weight_decay=float(getattr(cfg.train, "weight_decay", 0.0) or 0.0))


def estimate_knobs(cfg: Any) -> Knobs:
    """The cost model's view of the estimate alone (what the re-measure runs again)."""
    e = cfg.estimate
    return Knobs(
        batch_size=cfg.data.batch_size, sgd_steps=0, log_every=1, sharpness_steps=cfg.train.sharpness_steps,
        eval_batches=0, method=e.method, slq_runs=e.slq_runs, lanczos_steps=e.lanczos_steps, n_batches=e.n_batches,
        lyapunov=False, lyap_m=e.lyapunov_exponents, lyap_steps=e.lyapunov_steps, eval_test=0, eval_train=0,
        eval_test_cap=None, eval_train_cap=None, eval_batch_size=1, remeasure=False, compress=False, reorth=e.reorth,
        lanczos_budget=e.memory_budget, lyap_frames=1 if e.lyapunov_tol is None else 2,
        lyap_warm=2 * e.lyapunov_exponents + 20 if e.lyapunov_warm_start == "jacobian" else 0,
    )


#: the attribute of the log record that carries the re-measure's updated prediction
REMEASURE_RECORD = "sdcompress_remeasure"


def remeasure_prediction(cfg: Any, loaded: Any, stream: BatchStream, *, lr: float,
                         weight_decay: float = 0.0) -> StagePrediction | None:
    """Re-probe the compressed model (one gradient, one product, the estimator's overhead at its
    d) just before the SD re-measure, and log the updated prediction of that stage.

    The first table's re-measure row can only assume the dense products (the plan's size is
    not known before planning); this one measures the model the estimator will run on.

    Args:
        cfg: the resolved run config (with the pre-flight's picks applied).
        loaded: the compressed model and its loss.
        stream: the estimate's batch stream (batch 0 is probed).
        lr, weight_decay: the η and wd the re-measure uses.

    Returns:
        The prediction (``None`` when the pre-flight is disabled). Also logged at INFO, with
        the prediction and the probe's own seconds on the record's ``sdcompress_remeasure``.
    """
    pcfg = getattr(cfg, "preflight", None) or PreflightConfig()
    if not pcfg.enabled:
        return None
    device = next(loaded.model.parameters()).device
    params = getattr(cfg.estimate, "params", None)
    k = estimate_knobs(cfg)
    budget_m = pcfg.memory_budget_bytes(device)
    probe = probe_costs(loaded, move_batch(stream.batch(0), device), params=params, block=_frame_block(k, cfg),
                        memory_budget=budget_m)
    probe = probe_overheads(probe, k, _block_sizes(loaded, params), cfg.estimate, lr=lr, weight_decay=weight_decay)
    est = predict(probe, k)[0]
    stage = replace(est, name="re-measure SD", detail=f"re-probed on the compressed model (d = {probe.d:,}): {est.detail}")
    logger.info("pre-flight, re-measure on the compressed model (d = %s): one gradient %.3g s, one product %.3g s; "
                "predicted %s, %s", f"{probe.d:,}", probe.t_grad, probe.t_hvp, _fmt_s(stage.seconds), _fmt_b(stage.peak_bytes),
                extra={REMEASURE_RECORD: {"stage": asdict(stage), "probe_wall_time_s": probe.wall_time_s,
                                          "probe": asdict(probe)}})
    return stage


__all__ = [
    "DEFAULT_CPU_MEMORY_GB", "DEFAULT_TIME_BUDGET_S", "Knobs", "PREFLIGHT_FILE", "PreflightConfig", "PreflightError",
    "PreflightResult", "Probe", "REMEASURE_RECORD", "StagePrediction", "apply_settings", "default_memory_budget",
    "estimate_knobs", "factorised_shapes", "knobs_for", "lanczos_vectors", "memory_in_use", "pick_settings",
    "planned_fraction", "predict", "probe_costs", "refusal", "remeasure_prediction", "run_preflight", "settings_of",
]
