"""Sharpness of the minibatch loss, losses on fixed subsets, and the edge-of-stability verdict.

Sharpness here is λ_max(H_B), the largest *algebraic* eigenvalue of the Hessian of the
minibatch loss (never the largest |λ|: at a saddle the most negative eigenvalue can be the
largest in magnitude). It comes from Lanczos with full reorthogonalisation on
Hessian-vector products (:func:`sdcompress.linalg.top_eigenpairs`).

EoS criterion. SGD with coupled weight decay, w ↦ w − η(∇L_B(w) + wd·w), has the step
Jacobian (1 − η·wd) I − η H_B; a direction is linearly unstable when its eigenvalue drops
below −1, i.e. when α + wd > 2/η. With heavy-ball momentum μ (``torch.optim.SGD``, no
dampening) the quadratic model is stable while η(α + wd) < 2(1 + μ). We therefore compare
λ_max(H_B) + wd with the threshold 2(1 + μ)/η (= 2/η without momentum; equivalently
λ_max(H_B) against 2(1 + μ)/η − wd, the ``stability_threshold`` of the log). A logged
point counts as "at EoS" when λ_max(H_B) + wd ≥ (1 − tol) · 2(1 + μ)/η; the run is at EoS
when most (more than half) of the logged points in the last ``eos_window`` of the log are.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sdcompress.data.core import ArrayDataset, Batch, move_batch
from sdcompress.linalg import HessianOperator, top_eigenpairs
from sdcompress.models.functional import FunctionalLoss
from sdcompress.models.loader import LoadedModel

#: "most" logged points of the window: strictly more than this fraction.
EOS_MIN_FRACTION = 0.5


@dataclass(frozen=True)
class Sharpness:
    """λ_max(H_B) and how well Lanczos resolved it.

    Attributes:
        value: largest algebraic eigenvalue (Ritz value) of the minibatch Hessian.
        residual: ‖H v − λ v‖ of its Ritz vector (small means converged).
        n_hvp: Hessian-vector products spent.
    """

    value: float
    residual: float
    n_hvp: int


def model_device(loaded: LoadedModel) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    p = next(loaded.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def sharpness(loaded: LoadedModel, batch: Batch, *, steps: int = 20, seed: int = 0) -> Sharpness:
    """λ_max(H_B(w)) at the model's current parameters w, over all trainable parameters.

    Definition: H_B = ∇²_w L_B(w) with L_B the mean loss on ``batch``; λ_max is its largest
    algebraic eigenvalue. Lanczos (``steps`` iterations, full reorthogonalisation) from a
    start vector drawn from its own seeded generator, so no global RNG stream moves.

    Args:
        loaded: the model and its loss.
        batch: the minibatch B (moved to the model's device here).
        steps: Lanczos steps (clipped to d; with steps ≥ d the result is exact to rounding).
        seed: seed of the Lanczos start vector.

    Returns:
        The Ritz value, its residual norm and the number of Hessian-vector products.
    """
    batch = move_batch(batch, model_device(loaded))
    loss = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
    # value and residual only: no Ritz vector, so no replay when the basis does not fit (O(d) memory)
    pairs = top_eigenpairs(HessianOperator(loss, batch), 1, steps=steps, seed=seed, vectors=False)
    return Sharpness(float(pairs.values[0]), float(pairs.residuals[0]), int(pairs.n_matvecs))


def fixed_subset(data: ArrayDataset, n: int) -> list[int]:
    """Row indices of a fixed evaluation subset: ``n`` rows evenly spread over ``data``.

    Deterministic and RNG-free (no global or seeded generator is touched), spread over the
    whole split because built-in corpora are stored in topic order.
    """
    n = min(n, len(data))
    stride = len(data) / n
    return [int(i * stride) for i in range(n)]


@torch.no_grad()
def evaluate(loaded: LoadedModel, data: ArrayDataset, rows: Sequence[int], batch_size: int) -> tuple[float, float | None]:
    """Mean loss and accuracy of the model on ``data[rows]`` (in chunks of ``batch_size``).

    Accuracy is top-1 for classification and next-token accuracy for language modelling
    (positions whose label is -100 are ignored). The model's train/eval mode is left as is.

    Returns:
        ``(loss, accuracy)``; accuracy is ``None`` when the batch format has no labels.
    """
    device = model_device(loaded)
    total_loss, n_seen, correct, n_pred = 0.0, 0, 0, 0
    for start in range(0, len(rows), batch_size):
        idx = torch.tensor(rows[start : start + batch_size])
        batch = move_batch(data.take(idx), device)
        if isinstance(batch, Mapping):
            out = loaded.model(**batch)
            loss = out.loss if hasattr(out, "loss") else out["loss"]
            logits = out.logits if hasattr(out, "logits") else None
            labels = batch.get("labels")
            if logits is not None and labels is not None:
                pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]  # (B, T-1): the model shifts labels
                mask = target != -100
                correct += int((pred[mask] == target[mask]).sum())
                n_pred += int(mask.sum())
        else:
            inputs, targets = batch
            logits = loaded.model(inputs)
            loss = loaded.loss_fn(logits, targets)
            if logits.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point():
                correct += int((logits.argmax(-1) == targets).sum())
                n_pred += len(targets)
        k = len(idx)
        total_loss += float(loss) * k
        n_seen += k
    return total_loss / n_seen, (correct / n_pred if n_pred else None)


@dataclass(frozen=True)
class EoSVerdict:
    """Whether a run sits at the edge of stability, with the numbers that decided it.

    Ratios are (λ_max(H_B) + wd) / (2(1 + μ)/η): 1 is the linear-stability threshold.

    Attributes:
        at_eos: more than half of the window's points have ratio ≥ 1 − tolerance.
        window_steps: (first, last) logged step of the window.
        n_points: logged points in the window.
        n_at_eos: of those, how many are at EoS.
        threshold: (1 − tolerance) · 2(1 + μ)/η, the bar for λ_max + wd.
        two_over_lr: 2/η.
        weight_decay: wd (added to λ_max in the comparison).
        momentum: μ (the threshold is 2(1 + μ)/η).
        median_ratio, min_ratio, max_ratio: ratio statistics over the window.
        initial_ratio: ratio at the first logged point.
        first_crossing_step: first logged step at EoS (``None`` if never).
        progressive_sharpening: started below the bar and rose to it.
        loss_start, loss_end: mean train loss over the first and last half of the window.
        loss_falling: ``loss_end < loss_start``.
        message: one-sentence summary.
    """

    at_eos: bool
    window_steps: tuple[int, int]
    n_points: int
    n_at_eos: int
    threshold: float
    two_over_lr: float
    weight_decay: float
    momentum: float
    median_ratio: float
    min_ratio: float
    max_ratio: float
    initial_ratio: float
    first_crossing_step: int | None
    progressive_sharpening: bool
    loss_start: float
    loss_end: float
    loss_falling: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EoSVerdict":
        d = dict(d)
        d["window_steps"] = tuple(d["window_steps"])
        return cls(**d)


def eos_verdict(
    records: Sequence[Mapping[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    window: float = 0.5,
    tolerance: float = 0.2,
) -> EoSVerdict:
    """Decide whether the logged run sits at the edge of stability.

    Args:
        records: log records with ``step``, ``sharpness`` and ``train_loss``, in step order.
        lr: step size η.
        weight_decay: wd; the comparison is λ_max + wd against 2(1 + μ)/η (module docstring).
        momentum: heavy-ball μ.
        window: fraction of the records, at the end, to judge (at least one record).
        tolerance: a point is at EoS when λ_max + wd ≥ (1 − tolerance) · 2/η.

    Returns:
        The verdict. With no records, ``at_eos`` is false and the message says so.
    """
    two = 2.0 / lr
    limit = two * (1.0 + momentum)
    bar = (1.0 - tolerance) * limit
    if not records:
        nan = float("nan")
        return EoSVerdict(False, (0, 0), 0, 0, bar, two, weight_decay, momentum, nan, nan, nan, nan, None, False, nan, nan, False,
                          "no logged points: nothing to judge")
    ratios = [(r["sharpness"] + weight_decay) / limit for r in records]
    n_win = max(1, math.ceil(window * len(records)))
    win, win_ratios = records[-n_win:], ratios[-n_win:]
    hits = sum(q >= 1.0 - tolerance for q in win_ratios)
    at_eos = hits > EOS_MIN_FRACTION * n_win
    crossing = next((r["step"] for r, q in zip(records, ratios) if q >= 1.0 - tolerance), None)
    sharpening = ratios[0] < 1.0 - tolerance and crossing is not None
    losses = [float(r["train_loss"]) for r in win]
    half = max(1, len(losses) // 2)
    loss_start, loss_end = statistics.fmean(losses[:half]), statistics.fmean(losses[-half:])
    falling = loss_end < loss_start
    med = statistics.median(win_ratios)
    name = "2/η" if momentum == 0 else "2(1+μ)/η"
    where = f"λ_max + wd ≥ {1 - tolerance:.2f}·{name} at {hits} of {n_win} logged points in steps {win[0]['step']}–{win[-1]['step']}"
    head = "at the edge of stability" if at_eos else "not at the edge of stability"
    how = (
        f"progressive sharpening from {ratios[0]:.2f}·{name} reached the bar at step {crossing}" if sharpening
        else f"started at {ratios[0]:.2f}·{name}" + (" (above the bar: the first steps catapult)" if ratios[0] >= 1 - tolerance else "")
    )
    if len(win) >= 2:
        trend = f"train loss {'still falling' if falling else 'not falling'} ({loss_start:.4g} → {loss_end:.4g})"
    elif len(records) >= 2:  # one point in the window has no trend: say what the whole run did
        first, last = float(records[0]["train_loss"]), float(records[-1]["train_loss"])
        trend = f"train loss {first:.4g} → {last:.4g} over the run (one logged point in the window: no trend there)"
    else:
        trend = "one logged point: no trend"
    message = f"{head}: {where} (median (λ_max + wd)/({name}) = {med:.2f}, {name} = {limit:.4g}); {how}; {trend}"
    return EoSVerdict(
        at_eos=at_eos,
        window_steps=(int(win[0]["step"]), int(win[-1]["step"])),
        n_points=n_win,
        n_at_eos=hits,
        threshold=bar,
        two_over_lr=two,
        weight_decay=weight_decay,
        momentum=momentum,
        median_ratio=med,
        min_ratio=min(win_ratios),
        max_ratio=max(win_ratios),
        initial_ratio=ratios[0],
        first_crossing_step=crossing,
        progressive_sharpening=sharpening,
        loss_start=loss_start,
        loss_end=loss_end,
        loss_falling=falling,
        message=message,
    )
