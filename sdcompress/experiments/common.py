"""Shared plumbing of the experiments: configs from recipes, a small seeded SGD loop with
measurement hooks, evaluation, and result files.

The training loop here is the experiments' own harness (not the toolkit's trainer): the
grid and the grokking run need a hook every few steps (sharpness traces, checkpoints),
the exact stopping rule of PAPER.md §7 (train loss ≤ target, checked every epoch) and
tens of runs in minutes on two cores. It is plain ``torch.optim.SGD`` (coupled weight
decay, optional heavy-ball momentum) over a seeded :class:`~sdcompress.data.BatchStream`,
so the step map is w ↦ w − η(∇L_B(w) + wd·w), the map whose Jacobian
(1 − η·wd) I − η H_B the estimators use.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from sdcompress.config import check_step_size
from sdcompress.data import ArrayDataset, BatchStream, DatasetBundle
from sdcompress.errors import ConfigError, DivergenceError, SdcompressError
from sdcompress.io import write_json_atomic, write_text_atomic
from sdcompress.models import model_loss

logger = logging.getLogger(__name__)
T = TypeVar("T")
RECIPES_DIR = Path("recipes") / "experiments"


# ------------------------------------------------------------------ data and evaluation


def bundle_as(bundle: DatasetBundle, dtype: torch.dtype) -> DatasetBundle:
    """The same bundle with floating tensors cast to ``dtype`` (integer tensors kept)."""

    def cast(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset({k: v.to(dtype) if v.is_floating_point() else v for k, v in ds.tensors.items()}, ds.task)

    return DatasetBundle(bundle.name, cast(bundle.train), cast(bundle.test), dict(bundle.info))


@torch.no_grad()
def classification_metrics(model: nn.Module, data: ArrayDataset, chunk: int = 4096) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` over a whole classification split."""
    x, y = data.tensors["inputs"], data.tensors["targets"]
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        logits = model(x[i : i + chunk])
        total_loss += float(nn.functional.cross_entropy(logits, y[i : i + chunk], reduction="sum"))
        correct += int((logits.argmax(-1) == y[i : i + chunk]).sum())
    return {"loss": total_loss / len(y), "acc": correct / len(y)}


def gaps(model: nn.Module, bundle: DatasetBundle) -> dict[str, float]:
    """Train/test loss and accuracy and the gaps |train − test| (PAPER.md §4)."""
    tr = classification_metrics(model, bundle.train)
    te = classification_metrics(model, bundle.test)
    return {
        "train_loss": tr["loss"],
        "test_loss": te["loss"],
        "train_acc": tr["acc"],
        "test_acc": te["acc"],
        "loss_gap": abs(tr["loss"] - te["loss"]),
        "acc_gap": abs(tr["acc"] - te["acc"]),
    }


# ------------------------------------------------------------------ training


@dataclass
class SGDSettings:
    """Constant-step SGD (``torch.optim.SGD`` semantics).

    Attributes:
        lr: step size η.
        batch_size: examples per minibatch (≥ the train size means full-batch GD).
        weight_decay: coupled L2 coefficient wd.
        momentum: heavy-ball momentum (0: plain SGD).
        seed: seed of the minibatch stream ω.
        max_steps: hard cap on steps.
        target_train_loss: stop once the full train loss is ≤ this (checked every
            ``check_every`` steps); ``None`` never stops early.
        check_every: steps between checks of the stopping rule (0: once per epoch).
    """

    lr: float = 0.1
    batch_size: int = 64
    weight_decay: float = 0.0
    momentum: float = 0.0
    seed: int = 0
    max_steps: int = 10_000
    target_train_loss: float | None = None
    check_every: int = 0


Hook = Callable[[int, nn.Module], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """What :func:`fit_sgd` did: steps taken, whether the target was reached, wall time."""

    steps: int
    reached_target: bool
    wall_time_s: float
    final_train_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def make_stream(train: ArrayDataset, batch_size: int, seed: int) -> BatchStream:
    """The seeded minibatch stream; a batch size ≥ the split is full-batch GD."""
    return BatchStream(train, min(batch_size, len(train)), seed=seed)


def fit_sgd(
    model: nn.Module,
    train: ArrayDataset,
    s: SGDSettings,
    *,
    hook: Hook | None = None,
    hook_steps: Sequence[int] = (),
    loss_fn: LossFn | None = nn.functional.cross_entropy,
) -> FitResult:
    """Train ``model`` in place with constant-η SGD on the split ``train``.

    Args:
        model: the model (its parameters' dtype sets the arithmetic); classification
            models take ``(inputs, targets)`` batches, language models dict batches.
        train: the training split; minibatches come from ``BatchStream(train, batch_size, seed)``.
        s: the settings.
        hook: called as ``hook(step, model)`` at each step listed in ``hook_steps``
            (step = number of updates done so far; 0 is before training).
        hook_steps: when to call the hook.
        loss_fn: loss on (logits, targets) for classification (unused for dict batches).

    Returns:
        A :class:`FitResult`.

    Raises:
        ConfigError: η ≤ 0, negative weight decay or momentum outside [0, 1).
        DivergenceError: the minibatch loss became non-finite.
    """
    check_step_size(s.lr, s.weight_decay)
    if not 0 <= s.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {s.momentum}")
    stream = make_stream(train, s.batch_size, s.seed)
    check_every = s.check_every or stream.steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    hooks = set(hook_steps)
    start = time.perf_counter()
    reached, train_loss, step = False, float("nan"), 0
    while True:
        if hook is not None and step in hooks:
            hook(step, model)
        if s.target_train_loss is not None and (step and step % check_every == 0 or step == s.max_steps):
            with torch.no_grad():
                train_loss = float(model_loss(model, train.all(), loss_fn))
            if train_loss <= s.target_train_loss:
                reached = True
                break
        if step >= s.max_steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = model_loss(model, stream.batch(step), loss_fn)
        if not math.isfinite(float(loss.detach())):
            raise DivergenceError(f"minibatch loss became {float(loss.detach())} at step {step} with lr={s.lr}; try a smaller learning rate")
        loss.backward()
        opt.step()
        step += 1
    return FitResult(step, reached, time.perf_counter() - start, train_loss)


def eval_stream(train: ArrayDataset, batch_size: int, seed: int) -> BatchStream:
    """The minibatches of curvature estimates: the training batch size, from a stream
    whose seed differs from training's (fresh draws of ω; minibatch i for exact
    estimate i and SLQ run i)."""
    return make_stream(train, batch_size, seed + 10_007)


def load_checkpoint(folder: str | Path, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A model written by ``save_pretrained`` of the toolkit's own modules, in ``dtype``.

    The model is built in ``dtype`` before the weights are copied in, so float64 weights
    stay float64 (loading into a float32 module first would round them).
    """
    import json

    from safetensors.torch import load_file

    from sdcompress.models import load_model
    from sdcompress.models.builtin import MODEL_CONFIG_FILE, WEIGHTS_FILE

    folder = Path(folder)
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    kind = config.pop("sdcompress_model")
    model = load_model(kind, **config).model.to(dtype)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model


# ------------------------------------------------------------------ configs and outputs


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """An experiment config from its YAML recipe (strict keys) plus ``--set`` overrides.

    Without a path the dataclass defaults are used (overrides still apply).
    """
    from sdcompress.recipe import apply_overrides, from_dict, load_recipe

    if path is not None:
        return load_recipe(path, overrides, cls=cls)
    return from_dict(cls, apply_overrides({}, overrides, cls), source="--set")


def write_rows_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows of scalars as CSV (columns: the union of keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols and not isinstance(r[k], (list, dict)))
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
    return write_text_atomic(path, buf.getvalue())


def write_outputs(out_dir: Path, name: str, payload: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None = None) -> None:
    """``<name>.json`` (everything) and, when given, ``<name>.csv`` (one row per run)."""
    write_json_atomic(out_dir / f"{name}.json", payload)
    if rows is not None:
        write_rows_csv(out_dir / f"{name}.csv", rows)


def experiment_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Arguments every experiment takes."""
    p = argparse.ArgumentParser(prog=f"python -m sdcompress.experiments.{name}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=str(RECIPES_DIR / f"{name}.yaml"), help="YAML recipe of the experiment ('' for the built-in defaults)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds): the code path, not the result")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--output-dir", default=None, help="where results go (default: the recipe's output_dir)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps runs bit-reproducible and shares the machine)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def resolve_output_dir(args: argparse.Namespace, configured: str, name: str) -> Path:
    """``--output-dir`` if given; else ``runs/experiments/<name>-quick`` for ``--quick``
    (never mixed with committed results); else the recipe's ``output_dir``."""
    if args.output_dir:
        return Path(args.output_dir)
    return Path("runs") / "experiments" / f"{name}-quick" if args.quick else Path(configured)


def setup_cli(args: argparse.Namespace) -> None:
    """Logging and threads for an experiment run from the command line."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))


def experiment_main(
    name: str,
    description: str,
    config_cls: type[T],
    run_fn: Callable[[T, Path], dict[str, Any]],
    argv: list[str] | None = None,
    *,
    folder: str | None = None,
    headline: Callable[[dict[str, Any]], Any] | None = None,
) -> int:
    """The command-line entry every experiment shares: parse, load the recipe (``--quick``
    shrinks it), run into the output folder, log where the results went.

    Args:
        name: the experiment's module name (its recipe is ``recipes/experiments/<name>.yaml``).
        description: the ``--help`` text.
        config_cls: the experiment's config dataclass (with ``quick()`` and ``output_dir``).
        run_fn: ``run(config, out_dir) -> payload`` with ``payload["wall_time_s"]``.
        argv: arguments (default: ``sys.argv``).
        folder: name of the quick-run folder (default: ``name``).
        headline: what of the payload to log next to the time.

    Returns:
        The exit code: 0, or 2 for a user error (a bad recipe, option or value: one line on
        stderr naming it; ``-v`` re-raises it with its traceback).
    """
    args = experiment_parser(name, description).parse_args(argv)
    setup_cli(args)
    try:
        cfg = load_config(config_cls, args.config or None, args.overrides)
        if args.quick:
            cfg = cfg.quick()  # type: ignore[attr-defined]
        out = resolve_output_dir(args, cfg.output_dir, folder or name)  # type: ignore[attr-defined]
        payload = run_fn(cfg, out)
    except SdcompressError as exc:
        if args.verbose:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    extra = f"; {headline(payload)}" if headline else ""
    logger.info("wrote %s in %.0f s%s", out, payload["wall_time_s"], extra)
    return 0
