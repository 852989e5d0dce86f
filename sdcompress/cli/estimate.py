"""``sdcompress estimate MODEL --dataset D --lr ETA --method M --output-dir OUT``.

Estimates the sharpness exponents and SD of a model (PAPER.md §2–§3) and writes
``OUT/estimates.json`` (:meth:`SDEstimate.save`; plus the Lyapunov subspace as
safetensors for ``--method lyapunov``) and plots: ``exponents.png`` (sorted exponents,
running sum, j* and SD) and, for density methods, ``density.png`` (the spectral density
of H and of the exponents).

The model: a built-in name gives the cached model trained at the edge of stability
(:func:`sdcompress.train.pretrained_builtin`, trained now if not cached, with η and wd
of that training as defaults); ``--from-run DIR`` reuses the folder of
``sdcompress train`` (its model, dataset, η, wd and batch size are the defaults); any
other name or folder is loaded as is. Every input is validated before OUT is created.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdcompress.errors import ConfigError
from sdcompress.estimator.config import METHODS
from sdcompress.train.log import LOG_FILE, MODEL_DIR

logger = logging.getLogger(__name__)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress estimate``."""
    parser.add_argument("model", nargs="?", default=None,
                        help="built-in (tiny-gpt2, mlp, modular-mlp: the cached EoS-trained model), a save_pretrained folder, "
                             "or a hub name; omit with --from-run")
    parser.add_argument("--from-run", default=None, metavar="DIR",
                        help="folder written by 'sdcompress train': use its model, dataset, η, wd and batch size")
    parser.add_argument("--dataset", default=None, help="built-in (pydoc, digits, modular), local file or hub name; default: the model's")
    parser.add_argument("--lr", type=float, default=None, help="step size η of the SGD map; default: the training run's η (required otherwise)")
    parser.add_argument("--weight-decay", type=float, default=None, help="coupled weight decay wd of the SGD map; default: the training run's (0 otherwise)")
    parser.add_argument("--method", choices=METHODS, default="ps", help="estimator: dense Hessians, SLQ histogram, kernel density, pseudo-spectrum, or Lyapunov")
    parser.add_argument("--output-dir", required=True, metavar="OUT", help="folder for estimates.json and the plots")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch size; default: the training run's (16 otherwise)")
    parser.add_argument("--params", nargs="+", default=None, metavar="PATTERN",
                        help="restrict to these parameters: exact names, module names, or 're:<regex>'")
    parser.add_argument("--n-batches", type=int, default=20, help="minibatches of dense Hessians (exact)")
    parser.add_argument("--slq-runs", type=int, default=32, help="SLQ runs, one fresh minibatch and probe each (slq, kde, ps)")
    parser.add_argument("--lanczos-steps", type=int, default=80, help="Lanczos steps per SLQ run")
    parser.add_argument("--lyapunov-exponents", type=int, default=16, help="tangent vectors m tracked (lyapunov)")
    parser.add_argument("--lyapunov-steps", type=int, default=100, help="SGD steps followed, warm-up included (lyapunov)")
    parser.add_argument("--dtype", choices=("model", "float64"), default="model", help="compute in the model's dtype or on a float64 copy")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per block for language-modelling datasets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the minibatch stream ω and of the probes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to compute (auto: CUDA when available)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


#: config field -> option of ``sdcompress estimate``
ESTIMATE_OPTIONS = {
    "lr": "--lr", "weight_decay": "--weight-decay", "data.batch_size": "--batch-size", "data.block_size": "--block-size",
    "data.seed": "--seed", "estimate.seed": "--seed", "estimate.method": "--method", "estimate.n_batches": "--n-batches",
    "estimate.slq_runs": "--slq-runs", "estimate.lanczos_steps": "--lanczos-steps",
    "estimate.lyapunov_exponents": "--lyapunov-exponents", "estimate.lyapunov_steps": "--lyapunov-steps",
    "estimate.params": "--params", "estimate.dtype": "--dtype", "device": "--device",
}


def _check_args(args: argparse.Namespace) -> None:
    from sdcompress.cli.options import under_options
    from sdcompress.config import DataConfig, check_step_size

    if args.model is None and args.from_run is None:
        raise ConfigError("give a MODEL (built-in, folder or hub name) or --from-run DIR")
    if args.model is not None and args.from_run is not None:
        raise ConfigError(f"give either MODEL ({args.model!r}) or --from-run ({args.from_run!r}), not both")
    with under_options(ESTIMATE_OPTIONS):
        check_step_size(1.0 if args.lr is None else args.lr, 0.0 if args.weight_decay is None else args.weight_decay)
        DataConfig(batch_size=16 if args.batch_size is None else args.batch_size, block_size=args.block_size, seed=args.seed)
    if args.from_run is not None and not (Path(args.from_run) / LOG_FILE).is_file():
        raise ConfigError(f"--from-run {args.from_run!r} holds no train_log.json: pass a folder written by 'sdcompress train'")


def _load(args: argparse.Namespace, config: Any, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(loaded model, dataset bundle, training facts: lr, weight_decay, batch_size).

    A MODEL is loaded the way the main job loads it (:func:`sdcompress.pipeline.stages.load_trained`:
    a built-in is the cached EoS-trained model, anything else is loaded as is); ``--from-run``
    reads the folder of ``sdcompress train``.
    """
    from sdcompress.config import DataConfig, ModelConfig
    from sdcompress.models import BUILTIN_MODELS, active_dropout, load_model
    from sdcompress.pipeline import RunConfig
    from sdcompress.pipeline.stages import load_trained
    from sdcompress.train import default_data_config, default_train_config, load_training_data, read_train_log

    if args.from_run is not None:
        result = read_train_log(args.from_run)
        loaded = load_model(str(Path(args.from_run) / MODEL_DIR))
        data_cfg = replace(result.data_config, name=args.dataset or result.dataset, block_size=args.block_size)
        data = load_training_data(result.model, data_cfg, loaded.tokenizer)
        loaded.model.to(device)
        facts = {"lr": result.config.lr, "weight_decay": result.config.weight_decay, "batch_size": result.data_config.batch_size,
                 "source": f"training run {args.from_run}"}
    else:
        builtin = args.model in BUILTIN_MODELS
        data_cfg = default_data_config(args.model) if builtin else DataConfig()
        data_cfg = replace(data_cfg, block_size=args.block_size, **({"name": args.dataset} if args.dataset else {}))
        train_cfg = default_train_config(args.model) if builtin else replace(default_train_config(args.model), steps=0)
        cfg = RunConfig(model=ModelConfig(name=args.model, seed=0 if builtin else args.seed), data=data_cfg, train=train_cfg,
                        estimate=config)
        trained = load_trained(cfg, None, device, check=lambda loaded: None)  # estimate_sd checks m ≤ d itself
        loaded, data = trained.loaded, trained.data
        if builtin:
            log = trained.log
            facts = {"lr": log["config"]["lr"], "weight_decay": log["config"]["weight_decay"],
                     "batch_size": log["data_config"]["batch_size"],
                     "source": f"cached EoS training in {loaded.info.get('trained_in', 'the cache')}"}
        else:
            facts = {"lr": None, "weight_decay": 0.0, "batch_size": 16, "source": "loaded as is (no training run)"}
            logger.warning("%s is not a built-in: estimating at its current weights (no EoS training here)", args.model)
    if active_dropout(loaded.model):
        logger.warning("switching the model to eval mode: its dropout would make the loss random (curvature is undefined)")
    loaded.model.eval()
    return loaded, data, facts


def run(args: argparse.Namespace) -> int:
    """Validate, load, estimate, write estimates.json and plots, print the summary."""
    from sdcompress.data import BatchStream
    from sdcompress.estimator import EstimateConfig, estimate_sd
    from sdcompress.estimator.plots import plot_estimate
    from sdcompress.cli.options import under_options
    from sdcompress.io import check_output_dir
    from sdcompress.pipeline.config import resolve_device

    _check_args(args)
    with under_options(ESTIMATE_OPTIONS):
        config = EstimateConfig(
            method=args.method, n_batches=args.n_batches, slq_runs=args.slq_runs, lanczos_steps=args.lanczos_steps,
            lyapunov_exponents=args.lyapunov_exponents, lyapunov_steps=args.lyapunov_steps,
            lyapunov_warmup=min(20, max(0, args.lyapunov_steps // 5)) if isinstance(args.lyapunov_steps, int) else 0,
            dtype=args.dtype, seed=args.seed, params=list(args.params) if args.params else None,
        )
        device = resolve_device(args.device)
    out = check_output_dir(args.output_dir, overwrite=args.overwrite)
    loaded, data, facts = _load(args, config, device)
    lr = args.lr if args.lr is not None else facts["lr"]
    if lr is None:
        raise ConfigError(f"--lr is required for {args.model!r} (no training run gives a default): pass the step size η it is trained with")
    wd = args.weight_decay if args.weight_decay is not None else facts["weight_decay"]
    batch_size = args.batch_size if args.batch_size is not None else facts["batch_size"]
    stream = BatchStream(data.train, batch_size, seed=args.seed)
    logger.info("model from %s; η = %g, wd = %g, batch size %d", facts["source"], lr, wd, batch_size)
    with under_options(ESTIMATE_OPTIONS):
        est = estimate_sd(loaded.model, stream, lr=lr, weight_decay=wd, loss_fn=loaded.loss_fn, config=config)
    est = replace(est, extras={**est.extras, "model": args.model or args.from_run, "dataset": data.name, "batch_size": batch_size,
                               "model_source": facts["source"]})
    out.mkdir(parents=True, exist_ok=True)
    path = est.save(out)
    plots = plot_estimate(est, out)
    if not args.quiet:
        print(est.summary())
        print(f"wrote {path} and {', '.join(p.name for p in plots)}")
    return 0
