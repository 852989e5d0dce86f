"""``sdcompress plan RUN_OR_ESTIMATES --output plan.json``: write a compression plan from saved
estimates (nothing is changed; apply it with ``sdcompress compress``).

RUN_OR_ESTIMATES is a run folder (its ``estimates.json``, ``lyapunov/`` and ``trained/``
are used: the names are the pipeline's, :mod:`sdcompress.pipeline.folder`), a folder holding ``estimates.json``, or an ``estimates.json`` file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sdcompress.cli.options import RUN_OPTIONS, under_options
from sdcompress.cli.run import bits_arg, prune_arg, rank_arg
from sdcompress.pipeline.folder import ESTIMATES_FILE, LYAPUNOV_DIR, TRAINED_DIR

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress plan``."""
    from sdcompress.plan import STRATEGIES

    parser.add_argument("source", metavar="RUN_OR_ESTIMATES", help="run folder, folder with estimates.json, or an estimates.json file")
    parser.add_argument("--model", default=None, help="the model the estimates are of (default: RUN/trained)")
    parser.add_argument("--lyapunov", default=None, metavar="DIR",
                        help="folder of a Lyapunov estimate with its subspace (default: RUN/lyapunov when present)")
    parser.add_argument("--output", required=True, metavar="PLAN_JSON", help="where to write the plan")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plan file")
    parser.add_argument("--target-rank", type=rank_arg, default="auto", help="'auto', 'off' or a rank")
    parser.add_argument("--prune", type=prune_arg, default="off", help="'auto', 'off' or the kept fraction")
    parser.add_argument("--bits", type=bits_arg, default="off", help="'auto', 'off', 8 or 4")
    parser.add_argument("--budget", type=float, default=None, metavar="FRACTION", help="fraction of target weight parameters kept")
    parser.add_argument("--strategy", choices=STRATEGIES, default="sd", help="the SD-guided planner or a baseline")
    parser.add_argument("--targets", nargs="+", default=None, metavar="PATTERN", help="modules to compress (names or 're:regex')")
    parser.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="modules to leave alone")
    parser.add_argument("--below-floor", action="store_true", help="let --budget push modules below the SD floor")
    parser.add_argument("--dataset", default=None, help="dataset for the Fisher baseline's gradients (default: the model's own)")
    parser.add_argument("--batch-size", type=int, default=16, help="minibatch size for the Fisher baseline")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Fisher batches and of built-in initialisation")


def _estimates(source: Path):
    from sdcompress.errors import ConfigError
    from sdcompress.estimator.result import SDEstimate

    folder, name = (source.parent, source.name) if source.is_file() else (source, ESTIMATES_FILE)
    if not (folder / name).is_file():
        raise ConfigError(f"{str(source)!r} holds no estimates.json; pass a run folder or an estimates file written by 'sdcompress estimate'")
    try:
        return SDEstimate.load(folder, name), folder
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / name} is not a valid estimate ({exc}); re-run the estimate") from exc


def run(args: argparse.Namespace) -> int:
    """Read the estimates and the model's shapes, plan, write plan.json."""
    from sdcompress.api import load_model, plan_model
    from sdcompress.data import BatchStream, load_data
    from sdcompress.errors import ConfigError, OutputExistsError
    from sdcompress.estimator.result import SDEstimate
    from sdcompress.models import DEFAULT_DATASET
    from sdcompress.plan import CURVATURE_STRATEGIES, PlanConfig

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{str(out)!r} already exists; pass --overwrite or choose another --output")
    with under_options({**RUN_OPTIONS, "plan.seed": "--seed"}):
        cfg = PlanConfig(target_rank=args.target_rank, prune=args.prune, bits=args.bits, strategy=args.strategy,
                         targets=args.targets, ignore=list(args.ignore), below_floor=args.below_floor, seed=args.seed,
                         budget={} if args.budget is None else {"params_fraction": args.budget})
    est, folder = _estimates(Path(args.source))
    model = args.model or (str(folder / TRAINED_DIR) if (folder / TRAINED_DIR).is_dir() else None)
    if model is None:
        raise ConfigError(f"no model to read module shapes from: pass --model (the model {args.source!r} was estimated on)")
    lyap_dir = Path(args.lyapunov) if args.lyapunov else folder / LYAPUNOV_DIR
    sub = None
    if est.subspace is None and (lyap_dir / ESTIMATES_FILE).is_file():
        sub = SDEstimate.load(lyap_dir)
    elif args.lyapunov:
        raise ConfigError(f"{args.lyapunov!r} holds no Lyapunov estimate (estimates.json with a subspace)")
    loaded = load_model(model, seed=args.seed)
    if est.d != sum(p.numel() for p in loaded.model.parameters() if p.requires_grad) and est.params is None:
        raise ConfigError(f"the estimate is over d = {est.d} parameters but {model!r} has a different count: "
                          "pass the model the estimate was made on (--model)")
    batches = None
    if cfg.strategy == "fisher" or cfg.strategy in CURVATURE_STRATEGIES and (cfg.strategy != "sd" or cfg.rank_mode == "auto"):
        name = args.dataset or DEFAULT_DATASET.get(Path(model).name) or DEFAULT_DATASET.get(getattr(loaded, "name", ""))
        if name is None and cfg.strategy != "sd":
            raise ConfigError(f"the {cfg.strategy!r} baseline needs data: pass --dataset")
        if name is not None:  # the SD plan without data keeps per-module floors (its notes say so)
            data = load_data(name, seed=args.seed, tokenizer=loaded.tokenizer)
            batches = BatchStream(data.train, args.batch_size, seed=args.seed).take(max(cfg.fisher_batches, cfg.curvature_batches))
    plan = plan_model(loaded, est, cfg, subspace=sub, batches=batches)
    plan.save(out)
    if not args.quiet:
        print(plan.summary())
        for note in plan.notes:
            print(f"  note: {note}")
        print(f"wrote {out}")
    return 0
