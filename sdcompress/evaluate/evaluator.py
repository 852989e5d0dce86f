"""``evaluate(loaded, data, ...)``: test loss, perplexity or accuracy, train/test gap, and SD
re-measured with the same batches ω and step size η.

Losses are means over examples (classification) or over predicted tokens (language
modelling: each block of T tokens predicts T − 1, and every block has the same length,
so the mean of per-block means weighted by block count is the token mean). The train
loss is measured on the first ``max_train_examples`` training examples (a fixed subset,
so before/after compare), the test loss on the test split (or its first
``max_test_examples``). The gap is ``test_loss − train_loss``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from sdcompress.config import FieldError, Validated, is_number, need_int
from sdcompress.data.core import ArrayDataset, DatasetBundle, batch_size_of, move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError
from sdcompress.estimator.result import SDEstimate
from sdcompress.io import write_json_atomic
from sdcompress.models.functional import check_deterministic, model_loss
from sdcompress.models.loader import LoadedModel
from sdcompress.progress import progress

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig(Validated):
    """Settings of the evaluation.

    Attributes:
        tolerance: verdict tolerance: the test loss may rise by at most this (nats).
            The closed loop's ``plan.tolerance`` replaces it when set.
        batch_size: examples per forward pass while measuring losses.
        max_test_examples: cap on test examples (``None``: the whole test split).
        max_train_examples: train examples used for the train loss and the gap.
        remeasure_sd: re-measure SD on the compressed model (same ω, η, estimator).
        sliding_window: language models also get the sliding-window loss and perplexity of
            the test text (:mod:`sdcompress.evaluate.perplexity`: each token scored once,
            with up to ``context_length − stride`` tokens of left context).
        context_length: tokens per window (``None``: the data's block length).
        stride: tokens between window starts (``None``: half the context length).
    """

    SECTION: ClassVar[str] = "evaluate"

    tolerance: float = 0.05
    batch_size: int = 64
    max_test_examples: int | None = None
    max_train_examples: int | None = 2048
    remeasure_sd: bool = True
    sliding_window: bool = True
    context_length: int | None = None
    stride: int | None = None

    def validate(self) -> "EvalConfig":
        """Check every field; returns ``self`` (run on construction).

        Raises:
            FieldError: naming the field (``evaluate.NAME``), the value and the fix.
        """
        s = self.SECTION
        if not is_number(self.tolerance) or not self.tolerance > 0:
            raise FieldError(s, "tolerance", "a finite number > 0 (nats of test loss)", self.tolerance, "e.g. 0.05")
        need_int(s, "batch_size", self.batch_size, 1, "examples per forward pass, e.g. 64")
        for name in ("max_test_examples", "max_train_examples"):
            v = getattr(self, name)
            if v is not None:
                need_int(s, name, v, 1, "or null for no cap" if name == "max_test_examples" else "")
        if not isinstance(self.remeasure_sd, bool):
            raise FieldError(s, "remeasure_sd", "true or false", self.remeasure_sd)
        for name, low in (("context_length", 2), ("stride", 1)):
            v = getattr(self, name)
            if v is not None:
                need_int(s, name, v, low, "tokens, or null for the default")
        if self.context_length is not None and self.stride is not None and self.stride > self.context_length:
            raise FieldError(s, "stride", f"at most context_length ({self.context_length})", self.stride,
                             "e.g. stride = context_length / 2")
        if not isinstance(self.sliding_window, bool):
            raise FieldError(s, "sliding_window", "true or false", self.sliding_window)
        return self


@dataclass(frozen=True)
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        task: ``"lm"`` or ``"classification"``.
        test_loss, train_loss: mean losses (nats).
        gap: ``test_loss − train_loss``.
        perplexity: ``exp(test_loss)`` for language models (blockwise: each block's first
            token unscored, the others with the block's left context).
        window_loss, window_perplexity: the sliding-window test loss (nats per token) and
            its exponential (``None`` unless a language model with ``sliding_window``).
        context_length, stride: the windows they were measured with.
        window_tokens: tokens scored.
        test_accuracy, train_accuracy: for classifiers.
        n_test, n_train: examples measured.
        sd: SD re-measured (``None`` when not asked).
        d: parameters SD was measured over (float parameters of the model as it is now).
        estimate: the SD estimate as a dict (``SDEstimate.to_dict``), or ``None``.
        wall_time_s: seconds spent.
    """

    task: str
    test_loss: float
    train_loss: float
    gap: float
    n_test: int
    n_train: int
    perplexity: float | None = None
    test_accuracy: float | None = None
    train_accuracy: float | None = None
    sd: float | None = None
    d: int | None = None
    estimate: dict[str, Any] | None = field(default=None, repr=False)
    wall_time_s: float = 0.0
    window_loss: float | None = None
    window_perplexity: float | None = None
    context_length: int | None = None
    stride: int | None = None
    window_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalReport":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for k in ("test_loss", "train_loss", "gap", "perplexity", "window_loss", "window_perplexity"):
            if isinstance(kw.get(k), str):  # nan / inf stored as strings
                kw[k] = float(kw[k])
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "EvalReport":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        extra = f", perplexity {self.perplexity:.2f}" if self.perplexity is not None else ""
        if self.test_accuracy is not None:
            extra += f", test accuracy {self.test_accuracy:.3f}"
        if self.window_loss is not None:
            extra += (f"; sliding window (context {self.context_length}, stride {self.stride}): loss {self.window_loss:.4f}, "
                      f"perplexity {self.window_perplexity:.2f}")
        sd = f", SD {self.sd:.1f} of d = {self.d}" if self.sd is not None else ""
        return f"test loss {self.test_loss:.4f}{extra}, train loss {self.train_loss:.4f} (gap {self.gap:+.4f}){sd}"


def _device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def dataset_metrics(loaded: LoadedModel, data: ArrayDataset, *, batch_size: int = 64, limit: int | None = None,
                    desc: str = "loss") -> tuple[float, float | None, int]:
    """Mean loss, accuracy (classification) and example count over ``data[:limit]``.

    Args:
        loaded: the model and its loss.
        data: a split.
        batch_size: examples per forward pass.
        limit: only the first ``limit`` examples.
    """
    n = len(data) if limit is None else min(limit, len(data))
    device = _device(loaded.model)
    total, correct, seen = 0.0, 0, 0
    for start in progress(range(0, n, batch_size), desc=desc):
        idx = torch.arange(start, min(start + batch_size, n))
        batch = move_batch(data.take(idx), device)
        size = batch_size_of(batch)
        if loaded.task == "classification":
            inputs, targets = batch
            logits = loaded.model(inputs)
            total += float(loaded.loss_fn(logits, targets)) * size
            correct += int((logits.argmax(-1) == targets).sum())
        else:
            total += float(model_loss(loaded.model, batch, loaded.loss_fn)) * size
        seen += size
    if seen == 0:
        raise ConfigError("the split is empty: nothing to evaluate")
    acc = correct / seen if loaded.task == "classification" else None
    return total / seen, acc, seen


def evaluate(
    loaded: LoadedModel,
    data: DatasetBundle,
    *,
    stream: BatchStream | None = None,
    lr: float | None = None,
    weight_decay: float = 0.0,
    estimate_config: Any | None = None,
    method: str | None = None,
    params: str | list[str] | None = None,
    config: EvalConfig | None = None,
) -> EvalReport:
    """Test loss, perplexity/accuracy, train loss, gap, and SD re-measured.

    Args:
        loaded: the (compressed or original) model.
        data: the dataset bundle (train and test splits).
        stream: the seeded minibatch stream ω used by the SD estimate (needed for SD).
        lr: η of the step map (needed for SD).
        weight_decay: wd of the step map.
        estimate_config: the ``EstimateConfig`` used before compressing (same settings after).
        method: estimator method (default: the config's).
        params: parameter patterns SD is measured over (``None``: every float parameter).
        config: evaluation settings.

    Returns:
        An :class:`EvalReport`.

    Raises:
        ConfigError: SD asked for without ``stream`` or ``lr``.
        ModelError: the model is random (active dropout).
    """
    config = config or EvalConfig()
    start = time.perf_counter()
    check_deterministic(loaded.model)
    test_loss, test_acc, n_test = dataset_metrics(loaded, data.test, batch_size=config.batch_size,
                                                  limit=config.max_test_examples, desc="test loss")
    train_loss, train_acc, n_train = dataset_metrics(loaded, data.train, batch_size=config.batch_size,
                                                     limit=config.max_train_examples, desc="train loss")
    sd = d = est_dict = None
    if config.remeasure_sd:
        if stream is None or lr is None:
            raise ConfigError("re-measuring SD needs the batch stream and lr; pass them or set remeasure_sd=False")
        est = measure_sd(loaded, stream, lr=lr, weight_decay=weight_decay, estimate_config=estimate_config,
                         method=method, params=params)
        sd, d, est_dict = float(est.sd), int(est.d), est.to_dict()
    ppl = math.exp(test_loss) if loaded.task == "lm" and test_loss < 700 else (float("inf") if loaded.task == "lm" else None)
    window: dict[str, Any] = {}
    if loaded.task == "lm" and config.sliding_window:
        window = test_window_perplexity(loaded, data.test, config)
    report = EvalReport(
        task=loaded.task, test_loss=test_loss, train_loss=train_loss, gap=test_loss - train_loss,
        n_test=n_test, n_train=n_train, perplexity=ppl, test_accuracy=test_acc, train_accuracy=train_acc,
        sd=sd, d=d, estimate=est_dict, wall_time_s=time.perf_counter() - start, **window,
    )
    logger.info("evaluation: %s", report.summary())
    return report


def test_window_perplexity(loaded: LoadedModel, test: ArrayDataset, config: EvalConfig) -> dict[str, Any]:
    """Sliding-window loss and perplexity of the test text (the first ``max_test_examples``
    blocks, which are consecutive pieces of one token stream), as :class:`EvalReport` fields.

    Raises:
        ConfigError: a context length longer than the model takes, or a stride above it.
    """
    from sdcompress.evaluate.perplexity import sliding_window_perplexity

    n = len(test) if config.max_test_examples is None else min(config.max_test_examples, len(test))
    blocks = test.take(torch.arange(n))
    ids = blocks["input_ids"] if isinstance(blocks, dict) else blocks[0]
    context = config.context_length or int(ids.shape[1])
    stride = config.stride or max(1, context // 2)
    if stride > context:
        raise ConfigError(f"evaluate.stride ({stride}) must not exceed the context length ({context})")
    loss, ppl, count = sliding_window_perplexity(loaded.model, ids.reshape(-1), context=context, stride=stride,
                                                 batch_size=config.batch_size)
    return {"window_loss": loss, "window_perplexity": ppl, "context_length": context, "stride": stride,
            "window_tokens": count}


def measure_sd(
    loaded: LoadedModel,
    stream: BatchStream,
    *,
    lr: float,
    weight_decay: float = 0.0,
    estimate_config: Any | None = None,
    method: str | None = None,
    params: str | list[str] | None = None,
) -> SDEstimate:
    """SD of the model as it is now, with the same ω (``stream``), η and estimator settings."""
    from sdcompress.estimator import estimate_sd

    kwargs: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay, params=params, loss_fn=loaded.loss_fn,
                                  config=estimate_config)
    if method is not None:
        kwargs["method"] = method
    return estimate_sd(loaded.model, stream, **kwargs)


__all__ = ["EvalConfig", "EvalReport", "dataset_metrics", "evaluate", "measure_sd", "test_window_perplexity"]
