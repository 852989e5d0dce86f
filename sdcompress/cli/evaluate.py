"""``sdcompress evaluate MODEL --lr ETA``: test loss, perplexity or accuracy, train/test gap and SD
of a model (a compressed folder, a save_pretrained folder or a built-in), optionally with a
verdict against a reference evaluation (``--before evaluation_before.json``)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress evaluate``."""
    from sdcompress.estimator.config import METHODS
    parser.add_argument("model", metavar="MODEL", help="compressed folder (model/ of a run), save_pretrained folder, or built-in name")
    parser.add_argument("--dataset", default=None, help="dataset (default: the built-in model's own; required for other models)")
    parser.add_argument("--lr", type=float, default=None, metavar="ETA", help="η of the SGD map for SD (required unless --no-sd)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the SGD map")
    parser.add_argument("--batch-size", type=int, default=16, help="minibatch size of the stream ω used for SD")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per block (language models)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the minibatch stream ω and the estimator")
    parser.add_argument("--method", default="ps", choices=METHODS, help="SD estimator")
    parser.add_argument("--no-sd", action="store_true", help="losses only; do not re-measure SD")
    parser.add_argument("--max-test-examples", type=int, default=None, help="cap on test examples")
    parser.add_argument("--before", default=None, metavar="JSON",
                        help="an evaluation of the original model (evaluation_before.json) to give a verdict against")
    parser.add_argument("--tolerance", type=float, default=0.05, help="verdict tolerance in nats of test loss")
    parser.add_argument("--output", default=None, metavar="JSON", help="write the evaluation here")


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print (and write) the evaluation and the verdict."""
    from pathlib import Path

    from sdcompress.api import load_model
    from sdcompress.cli.options import under_options
    from sdcompress.config import DataConfig, check_step_size
    from sdcompress.data import BatchStream, load_data
    from sdcompress.errors import ConfigError
    from sdcompress.estimator import EstimateConfig
    from sdcompress.evaluate import EvalConfig, EvalReport, evaluate, verdict
    from sdcompress.models import DEFAULT_DATASET

    if not args.no_sd and args.lr is None:
        raise ConfigError("re-measuring SD needs the step size: pass --lr ETA (the η the model was trained with) or --no-sd")
    options = {"evaluate.tolerance": "--tolerance", "evaluate.max_test_examples": "--max-test-examples", "lr": "--lr",
               "weight_decay": "--weight-decay", "data.batch_size": "--batch-size", "data.block_size": "--block-size",
               "data.seed": "--seed", "estimate.seed": "--seed", "estimate.method": "--method"}
    with under_options(options):
        cfg = EvalConfig(tolerance=args.tolerance, max_test_examples=args.max_test_examples, remeasure_sd=not args.no_sd)
        DataConfig(batch_size=args.batch_size, block_size=args.block_size, seed=args.seed)
        estimate_config = EstimateConfig(method=args.method, seed=args.seed)
        if not args.no_sd:
            check_step_size(args.lr, args.weight_decay)
    loaded = load_model(args.model, seed=args.seed)
    source = loaded.info.get("compression", {}).get("extra", {}) if isinstance(loaded.info.get("compression"), dict) else {}
    name = args.dataset or source.get("dataset") or DEFAULT_DATASET.get(Path(args.model).name)
    if name is None:
        raise ConfigError(f"no dataset known for {args.model!r}: pass --dataset")
    data = load_data(name, block_size=args.block_size, seed=args.seed, tokenizer=loaded.tokenizer)
    stream = BatchStream(data.train, args.batch_size, seed=args.seed)
    rep = evaluate(loaded, data, stream=stream, lr=args.lr, weight_decay=args.weight_decay,
                   estimate_config=estimate_config, config=cfg)
    if args.output:
        rep.save(args.output)
    if not args.quiet:
        print(rep.summary())
    if args.before:
        try:
            before = EvalReport.from_dict(json.loads(Path(args.before).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"cannot read the reference evaluation {args.before!r}: {exc}") from exc
        v = verdict(before.test_loss, rep.test_loss, args.tolerance, gap_before=before.gap, gap_after=rep.gap,
                    sd_before=before.sd, sd_after=rep.sd, d_before=before.d, d_after=rep.d)
        if not args.quiet:
            print(v.message)
    return 0
