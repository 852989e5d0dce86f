"""Did training produce a network worth measuring? A pure check on the training log.

A network that never trained (``steps == 0``) or that ended at chance level is "dead":
its loss surface is flat where it sits (with ``--lr 20`` the MLP's ReLUs all die, every
gradient is zero, λ_max = 0 and SD = 0), so SD, the plan and the verdict "generalization
preserved" are all vacuous. The main job refuses such a network unless asked not to.

Chance level, for a problem with K outputs (classes, or vocabulary entries of a
language model): the uniform predictor's cross-entropy is ln K and its accuracy 1/K.
Training is at chance when its final **train** loss is within ``rel_tol`` (1%) of ln K or
above it, or its train accuracy is at most ``acc_factor`` × 1/K. The train split is used,
not the test split: a network that memorised its training set and has not (yet)
generalised (grokking's plateau) has trained, and is measurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: relative distance to ln K within which a final train loss counts as chance level
CHANCE_LOSS_REL_TOL = 0.01
#: a train accuracy at most this multiple of 1/K counts as chance level
CHANCE_ACCURACY_FACTOR = 1.1


@dataclass(frozen=True)
class TrainingQuality:
    """The verdict on a finished training.

    Attributes:
        untrained: no training, or training that ended at chance level.
        reason: why (empty when ``untrained`` is false).
        chance_loss: ln K, the uniform predictor's loss (``None`` when K is unknown).
        train_loss, train_accuracy: the final values the verdict was made from.
        steps: SGD steps taken.
    """

    untrained: bool
    reason: str
    chance_loss: float | None
    train_loss: float | None
    train_accuracy: float | None
    steps: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"untrained": self.untrained, "reason": self.reason, "chance_loss": self.chance_loss,
                "train_loss": self.train_loss, "train_accuracy": self.train_accuracy, "steps": self.steps}


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def assess_training(
    *,
    steps: int | None,
    train_loss: float | None,
    train_accuracy: float | None,
    n_outputs: int | None,
    rel_tol: float = CHANCE_LOSS_REL_TOL,
    acc_factor: float = CHANCE_ACCURACY_FACTOR,
) -> TrainingQuality:
    """Decide whether a training run left the network untrained (module docstring).

    Args:
        steps: SGD steps taken (0: no training at all).
        train_loss: final mean cross-entropy on the train subset (nats).
        train_accuracy: final train accuracy (``None`` for language models).
        n_outputs: K, the number of classes or the vocabulary size (``None``: unknown,
            only the step count is checked).
        rel_tol: loss within this relative distance of ln K (or above) is chance level.
        acc_factor: accuracy at most ``acc_factor / K`` is chance level.

    Returns:
        The :class:`TrainingQuality` verdict.
    """
    loss, acc = _finite(train_loss), _finite(train_accuracy)
    k = int(n_outputs) if n_outputs is not None and int(n_outputs) >= 2 else None
    chance = math.log(k) if k is not None else None
    reason = ""
    if steps is not None and int(steps) <= 0:
        reason = "no training was done (0 SGD steps): the network is at its random initialisation"
    elif loss is not None and not math.isfinite(loss):
        reason = f"training ended with a non-finite train loss ({loss})"
    elif chance is not None and loss is not None and loss >= chance * (1 - rel_tol):
        reason = (f"training ended at chance level: train loss {loss:.4f} is within {rel_tol:.0%} of (or above) "
                  f"ln {k} = {chance:.4f}, the loss of a uniform guess over {k} outputs")
    elif k is not None and acc is not None and acc <= acc_factor / k:
        reason = f"training ended at chance level: train accuracy {acc:.3f} ≤ {acc_factor:g}/{k} (chance is {1 / k:.3f})"
    return TrainingQuality(bool(reason), reason, chance, loss, acc, None if steps is None else int(steps))


def assess_train_log(log: dict[str, Any], n_outputs: int | None) -> TrainingQuality:
    """:func:`assess_training` on a ``train_log.json`` (``TrainResult.to_dict()``).

    The final train loss and accuracy are the last log record's (``final`` holds the
    train loss too; the accuracy is only in the records).
    """
    records = log.get("log") or []
    last = records[-1] if records else {}
    final = log.get("final") or {}
    loss = final.get("train_loss", last.get("train_loss"))
    return assess_training(steps=log.get("steps"), train_loss=loss, train_accuracy=last.get("train_accuracy"),
                           n_outputs=n_outputs)


__all__ = ["CHANCE_ACCURACY_FACTOR", "CHANCE_LOSS_REL_TOL", "TrainingQuality", "assess_train_log", "assess_training"]
