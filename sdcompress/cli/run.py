"""``sdcompress MODEL [options]``: the main job (train at EoS → estimate → plan → compress →
evaluate → report), with a summary table at the end.

Every option maps onto a field of :class:`sdcompress.pipeline.RunConfig`; options left
out keep the config's defaults (a recipe run with ``sdcompress recipe`` sets them all).
The run folder defaults to ``runs/<model>-<YYYYmmdd-HHMMSS>``; rerunning with the same
``--output-dir`` and options resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from typing import Any

from sdcompress.cli.options import step_size

logger = logging.getLogger(__name__)

#: default SGD steps from the checkpoint of a model that is not built in
NON_BUILTIN_STEPS = 100
#: the main job's estimator settings: lighter than EstimateConfig's defaults (32 SLQ runs ×
#: 80 Lanczos steps, Lyapunov 16 × 100 steps) so that `sdcompress tiny-gpt2` finishes in
#: minutes on 2 CPU cores; SD and the re-measured SD use the same settings, so they compare.
MAIN_JOB_ESTIMATE = {"slq_runs": 16, "lanczos_steps": 40, "lyapunov_exponents": 16, "lyapunov_steps": 50, "lyapunov_warmup": 10}


def rank_arg(text: str) -> int | str:
    """``auto``, ``off`` or a positive integer."""
    if text in ("auto", "off"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'off' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a rank must be ≥ 1, got {value}")
    return value


def prune_arg(text: str) -> float | str:
    """``auto``, ``off`` or a kept fraction in (0, 1]."""
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'off' or the fraction of weights kept, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the kept fraction must be in (0, 1], got {value}")
    return value


def bits_arg(text: str) -> int | str:
    """``auto``, ``off``, 8 or 4."""
    if text in ("auto", "off"):
        return text
    if text in ("8", "4"):
        return int(text)
    raise argparse.ArgumentTypeError(f"bits {text!r} is not supported; use 8, 4, auto or off")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the main job."""
    from sdcompress.models import BUILTIN_MODELS
    from sdcompress.estimator.config import METHODS
    from sdcompress.plan import STRATEGIES

    parser.add_argument("model", metavar="MODEL",
                        help=f"built-in ({', '.join(BUILTIN_MODELS)}), a save_pretrained folder, or a hub name such as gpt2")
    g = parser.add_argument_group("compression")
    g.add_argument("--target-rank", type=rank_arg, default=None,
                   help="SVD rank per module: 'auto' (smallest rank with k(out+in−k) ≥ the module's share of SD), 'off', "
                   "or N; default: auto, or off when --prune is given")
    g.add_argument("--prune", type=prune_arg, default="off",
                   help="pruning: 'auto' (keep the module's share of SD), 'off', or the fraction kept (instead of low rank)")
    g.add_argument("--bits", type=bits_arg, default="off",
                   help="weight-only quantization: 'auto' (4 bits where the attractor is thinnest), 'off', 8 or 4")
    g.add_argument("--tolerance", type=float, default=None,
                   help="closed loop: raise ranks/kept weights/bits until the test loss is within T nats of the original")
    g.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                   help="size budget: fraction of the target weights' parameters kept (the SD floor still wins)")
    g.add_argument("--strategy", choices=STRATEGIES, default="sd", help="the SD-guided planner or a baseline")
    g.add_argument("--targets", nargs="+", default=None, metavar="PATTERN",
                   help="modules to compress (names or 're:regex'); default: layers inside the blocks, not embeddings/head")
    g.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="modules to leave alone")
    d = parser.add_argument_group("data and training")
    d.add_argument("--dataset", default=None, help="dataset (built-in, local file, or hub name); default: the model's own")
    d.add_argument("--lr", type=step_size, default=None, metavar="ETA",
                   help="constant SGD step size η, or auto: 2/λ_max of the first batch at the start (default: the built-in's EoS η; auto for other models)")
    d.add_argument("--weight-decay", type=float, default=None, help="weight decay of the SGD map (default: the training config's)")
    d.add_argument("--steps", type=int, default=None,
                   help=f"training steps (default: EoS training of built-ins; {NON_BUILTIN_STEPS} constant-η SGD steps from the "
                   "checkpoint of other models, whose --lr should be near 2/λ_max)")
    d.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: the data config's)")
    e = parser.add_argument_group("estimate and evaluation")
    e.add_argument("--method", default=None, choices=METHODS,
                   help="SD estimator (default: the estimate config's, ps). The main job uses "
                   + ", ".join(f"{k}={v}" for k, v in MAIN_JOB_ESTIMATE.items())
                   + " (lighter than the config defaults; raise them with --set estimate.KEY=VALUE)")
    e.add_argument("--eval-tolerance", type=float, default=None,
                   help="verdict tolerance in nats when --tolerance is not given (default: the evaluate config's)")
    o = parser.add_argument_group("run")
    o.add_argument("--output-dir", default=None, metavar="OUT", help="run folder (default: runs/<model>-<timestamp>)")
    o.add_argument("--dry-run", action="store_true", help="stop after writing plan.json")
    o.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    o.add_argument("--allow-untrained", action="store_true",
                   help="go on when training ends at chance level or --steps is 0 (refused otherwise); the report says so")
    o.add_argument("--seed", type=int, default=None, help="seed of every stage (init, batches ω, probes); default: each config's")
    o.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run")
    f = parser.add_argument_group("pre-flight (times a gradient and a Hessian-vector product, predicts every stage, "
                                  "picks settings that fit, or refuses)")
    f.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="time the whole run may take (default: 1800 s; 0: no limit)")
    f.add_argument("--memory-budget", type=float, default=None, metavar="GiB",
                   help="peak memory the run may use (default: min(8 GiB, 80%% of available RAM) on CPU, "
                   "90%% of free GPU memory on CUDA)")
    f.add_argument("--no-preflight", action="store_true", help="run the settings as given, without the pre-flight")
    f.add_argument("--no-adjust", action="store_true",
                   help="pre-flight predicts and refuses what does not fit, but changes no setting")
    o.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="set any RunConfig field, type-checked (e.g. estimate.slq_runs=8, train.steps=200); repeatable")


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`RunConfig` these options describe.

    Every section is built (and so validated) from the options inside
    :func:`~sdcompress.cli.options.under_options`: a bad value is reported under the
    option that was typed (``--lr 0`` says ``--lr``). ``--set`` overrides apply last and
    are reported as ``--set`` errors.

    Raises:
        ConfigError: a bad option or override, naming it, the value and the fix.
    """
    from sdcompress.cli.options import RUN_OPTIONS, under_options
    from sdcompress.config import ModelConfig
    from sdcompress.estimator import EstimateConfig
    from sdcompress.evaluate import EvalConfig
    from sdcompress.models import BUILTIN_MODELS
    from sdcompress.pipeline import OutputConfig, RunConfig
    from sdcompress.plan import PlanConfig
    from sdcompress.train import default_data_config, default_train_config

    def given(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    with under_options(RUN_OPTIONS):
        model = ModelConfig(name=args.model)
        # built-ins start from their documented EoS settings; others from the generic defaults
        data = replace(default_data_config(args.model), **given(name=args.dataset, batch_size=args.batch_size))
        train = default_train_config(args.model)
        if args.model not in BUILTIN_MODELS:
            train = replace(train, steps=NON_BUILTIN_STEPS)  # a short constant-η phase from the checkpoint
        train = replace(train, **given(lr=args.lr, weight_decay=args.weight_decay, steps=args.steps))
        estimate = EstimateConfig(**MAIN_JOB_ESTIMATE, **given(method=args.method))
        target_rank = args.target_rank if args.target_rank is not None else ("off" if args.prune != "off" else "auto")
        plan = PlanConfig(
            target_rank=target_rank, prune=args.prune, bits=args.bits, tolerance=args.tolerance,
            targets=args.targets, ignore=list(args.ignore), strategy=args.strategy,
            budget={} if args.budget is None else {"params_fraction": args.budget},
        )
        evaluate = EvalConfig(**given(tolerance=args.eval_tolerance))
        output = OutputConfig(dir=args.output_dir, overwrite=args.overwrite)
        cfg = RunConfig(model=model, data=data, train=train, estimate=estimate, plan=plan, evaluate=evaluate,
                        output=output, seed=args.seed, device=args.device, dry_run=args.dry_run,
                        allow_untrained=bool(getattr(args, "allow_untrained", False)))
    _preflight_args(cfg, args)
    if args.overrides:
        from sdcompress.recipe import apply_overrides, from_dict, to_dict

        cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), args.overrides, RunConfig), source="--set")
    return cfg


def _preflight_args(cfg: Any, args: argparse.Namespace) -> None:
    """Budgets and switches of the pre-flight (``cfg.preflight``)."""
    from sdcompress.errors import ConfigError
    from sdcompress.pipeline.preflight import PreflightConfig

    budget = getattr(args, "time_budget", None)
    memory = getattr(args, "memory_budget", None)
    if budget is not None and budget < 0:
        raise ConfigError(f"--time-budget must be ≥ 0 seconds (0: no limit), got {budget:g}")
    if memory is not None and memory <= 0:
        raise ConfigError(f"--memory-budget must be > 0 GiB, got {memory:g}; leave it out for the default")
    pre = cfg.preflight
    cfg.preflight = PreflightConfig(
        enabled=pre.enabled and not getattr(args, "no_preflight", False),
        time_budget_s=pre.time_budget_s if budget is None else (None if budget == 0 else budget),
        memory_budget_gb=pre.memory_budget_gb if memory is None else memory,
        adjust=pre.adjust and not getattr(args, "no_adjust", False),
    )


def print_summary(report: Any, folder: str) -> None:
    """The end-of-run table (stdout)."""
    print()
    print(report.table())
    print(f"\nrun folder: {folder}  (report.md, report.json, plan.json, model/)")
    print(f"load the compressed model with: sdcompress.load_model({str(folder) + '/model'!r})")


def run(args: argparse.Namespace) -> int:
    """Build the config, run the pipeline, print the summary."""
    from sdcompress.pipeline import run_pipeline

    cfg = config_from_args(args)
    report = run_pipeline(cfg)
    folder = report.config.get("output", {}).get("dir", "")
    if args.dry_run:
        if not args.quiet:
            print(f"dry run: plan written to {folder}/plan.json; predicted parameters {report.params_before:,} → "
                  f"{report.params_after:,}, bytes {report.bytes_before:,} → {report.bytes_after:,}")
            for note in report.plan.get("notes", []):
                print(f"  note: {note}")
        return 0
    if not args.quiet:
        print_summary(report, folder)
    return 0
