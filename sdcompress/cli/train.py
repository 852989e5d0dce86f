"""``sdcompress train MODEL --dataset D --lr ETA --steps N --output-dir OUT``.

Trains with constant-step SGD, logs λ_max(H_B) against 2/η, and writes
``OUT/train_log.json``, ``OUT/train_log.png``, ``OUT/model/`` and
``OUT/checkpoint.safetensors``. Every input is validated before ``OUT`` is created, so
bad input leaves no folder behind. Rerunning the same command on the same ``OUT``
resumes from the last checkpoint (or rewrites a finished run identically).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from sdcompress.cli.options import step_size
from sdcompress.errors import ConfigError, DivergenceError, OutputExistsError
from sdcompress.train.checkpoint import CHECKPOINT_FILE
from sdcompress.train.log import LOG_FILE, MODEL_DIR, PLOT_FILE

logger = logging.getLogger(__name__)

#: Files this command writes into OUT (and --overwrite removes; nothing else is touched).
OWN_FILES = (LOG_FILE, PLOT_FILE, CHECKPOINT_FILE, MODEL_DIR)


def _per_model(key: str, part: int = 0) -> str:
    """``"tiny-gpt2 0.3, mlp 0.2, ..."``: a setting's built-in defaults, for help strings."""
    from sdcompress.train.config import BUILTIN_DEFAULTS, TrainConfig

    def value(settings: dict) -> object:
        return settings.get(key, getattr(TrainConfig(), key, None))

    return ", ".join(f"{name} {value(cfg[part]):g}" for name, cfg in BUILTIN_DEFAULTS.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress train``."""
    parser.add_argument("model", help="built-in model (tiny-gpt2, mlp, modular-mlp), a save_pretrained folder, or a hub name")
    parser.add_argument("--dataset", default=None,
                        help="built-in (pydoc, digits, modular), a local text/JSON/CSV/Parquet file, or a hub name; "
                             "default: the built-in model's own (tiny-gpt2: pydoc, mlp: digits, modular-mlp: modular)")
    parser.add_argument("--output-dir", required=True, help="folder for train_log.json, train_log.png, model/ and the checkpoint")
    parser.add_argument("--lr", type=step_size, default=None,
                        help=f"constant step size η, or auto (2/λ_max of the first batch at the start); default: the model's EoS "
                             f"default ({_per_model('lr')}), auto for other models")
    parser.add_argument("--steps", type=int, default=None, help=f"SGD steps; default: the model's ({_per_model('steps')})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"minibatch size; default: the model's ({_per_model('batch_size', 1)})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"coupled weight decay wd; default: the model's ({_per_model('weight_decay')}); without it SD ≈ d (PAPER.md §7)")
    parser.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum μ in [0, 1)")
    parser.add_argument("--log-every", type=int, default=None, help=f"log losses and λ_max every N steps; default: the model's ({_per_model('log_every')})")
    parser.add_argument("--sharpness-steps", type=int, default=20, help="Lanczos steps for λ_max of the minibatch Hessian")
    parser.add_argument("--checkpoint-every", type=int, default=None, help=f"checkpoint every N steps (and at the end); default: the model's ({_per_model('checkpoint_every')})")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per block for language-modelling datasets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the minibatch stream ω, of seeded splits and of a built-in model's initialisation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (auto: CUDA when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run of different settings in --output-dir (only this command's files are removed)")


#: config field -> option of ``sdcompress train``
TRAIN_OPTIONS = {
    "model.name": "MODEL", "train.lr": "--lr", "train.steps": "--steps", "train.weight_decay": "--weight-decay",
    "train.momentum": "--momentum", "train.log_every": "--log-every", "train.sharpness_steps": "--sharpness-steps",
    "train.checkpoint_every": "--checkpoint-every", "data.name": "--dataset", "data.batch_size": "--batch-size",
    "data.block_size": "--block-size", "data.seed": "--seed", "device": "--device",
}


def _configs(args: argparse.Namespace):  # -> (TrainConfig, DataConfig)
    """Both configs, each validated on construction; errors name the option typed.

    Raises:
        ConfigError: a bad option value.
    """
    from sdcompress.cli.options import under_options
    from sdcompress.train import default_data_config, default_train_config

    overrides = {"lr": args.lr, "steps": args.steps, "weight_decay": args.weight_decay, "log_every": args.log_every,
                 "checkpoint_every": args.checkpoint_every}
    with under_options(TRAIN_OPTIONS):
        train = replace(default_train_config(args.model), momentum=args.momentum, sharpness_steps=args.sharpness_steps,
                        **{k: v for k, v in overrides.items() if v is not None})
        data = replace(default_data_config(args.model), seed=args.seed, block_size=args.block_size,
                       **{k: v for k, v in {"name": args.dataset, "batch_size": args.batch_size}.items() if v is not None})
    return train, data


def _check_output(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse a folder holding another run; with ``overwrite``, remove this command's files."""
    import json

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {str(out)!r} is a file; pass a folder")
    log = out / LOG_FILE
    if not log.exists():
        return
    try:
        same = json.loads(log.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        same = False
    if same and not overwrite:
        logger.info("%s holds this same run: resuming from its checkpoint", out)
        return
    if not overwrite:
        raise OutputExistsError(f"output folder {str(out)!r} already holds a training run with other settings; "
                                "pass --overwrite or choose another --output-dir")
    for name in OWN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    """Validate everything, then train, write OUT, and print where the run stands."""
    from sdcompress.data import BatchStream
    from sdcompress.models import BUILTIN_MODELS, load_model
    from sdcompress.pipeline.config import resolve_device
    from sdcompress.train import builtin_for_data, load_training_data, train_sgd
    from sdcompress.train.sgd import run_fingerprint

    train_cfg, data_cfg = _configs(args)
    device = resolve_device(args.device)
    if args.model in BUILTIN_MODELS:
        data = load_training_data(args.model, data_cfg)
        loaded = builtin_for_data(args.model, data, seed=args.seed)
    else:
        loaded = load_model(args.model)
        data = load_training_data(args.model, data_cfg, tokenizer=loaded.tokenizer)
    data_cfg = replace(data_cfg, name=data.name)
    if loaded.task != data.task:
        raise ConfigError(f"model {args.model!r} is a {loaded.task!r} model but dataset {data.name!r} is {data.task!r}; pick a matching --dataset")
    stream = BatchStream(data.train, data_cfg.batch_size, seed=data_cfg.seed, replacement=data_cfg.replacement)
    loaded.model.to(device)
    out = Path(args.output_dir).expanduser()
    created = not out.exists()
    _check_output(out, run_fingerprint(loaded, data, train_cfg, data_cfg), args.overwrite)

    # inputs are valid: only now may OUT appear
    try:
        result = train_sgd(loaded, data, train_cfg, data_config=data_cfg, stream=stream, output_dir=out, resume=not args.overwrite)
    except DivergenceError:
        if created:  # a diverged run's checkpoint is no use to anyone
            shutil.rmtree(out, ignore_errors=True)
        raise
    v, last = result.verdict, result.log[-1]
    acc = "" if last["test_accuracy"] is None else f" · test accuracy {last['test_accuracy']:.3f}"
    print(f"{result.model} on {result.dataset}: {result.steps} SGD steps, η = {result.config.lr:g}, wd = {train_cfg.weight_decay:g}, "
          f"momentum {train_cfg.momentum:g}, batch {data_cfg.batch_size} ({result.n_params:,} parameters)"
          + (f", resumed from step {result.resumed_from}" if result.resumed_from else ""))
    limit = last["stability_threshold"] + train_cfg.weight_decay  # 2(1 + μ)/η
    print(f"final λ_max(H_B) = {last['sharpness']:.4g} vs 2/η = {last['two_over_lr']:.4g} "
          f"((λ_max + wd)/{'(2/η)' if train_cfg.momentum == 0 else '(2(1+μ)/η)'} = {(last['sharpness'] + train_cfg.weight_decay) / limit:.2f})")
    print(v.message)
    print(f"train loss {last['train_loss']:.4f} · test loss {last['test_loss']:.4f}{acc}")
    print(f"wrote {result.log_path}, {result.plot_path}, {result.model_dir}/")
    return 0
