"""``sdcompress compress MODEL --plan plan.json --output-dir OUT``: apply a plan and save.

The plan is read and checked first and the output folder is checked next, so bad input
stops before anything is loaded or written. The compressed model is written to OUT
(all or nothing) and reloads with ``sdcompress.load_model(OUT)``.
"""

from __future__ import annotations

import argparse
import logging

from sdcompress.compress import compress_, save_compressed
from sdcompress.io import check_output_dir
from sdcompress.models import BUILTIN_MODELS, load_model
from sdcompress.plan.schema import Plan

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress compress``."""
    parser.add_argument(
        "model",
        metavar="MODEL_DIR",
        help=f"model folder written by save_pretrained, a built-in name ({', '.join(BUILTIN_MODELS)}) or a hub name",
    )
    parser.add_argument("--plan", required=True, metavar="PLAN_JSON", help="plan.json written by 'sdcompress plan'")
    parser.add_argument("--output-dir", required=True, metavar="OUT", help="folder to write the compressed model to")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already holds files")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of built-in models")


def run(args: argparse.Namespace) -> int:
    """Load the plan, the model; compress; save; print the report table."""
    plan = Plan.load(args.plan)
    out = check_output_dir(args.output_dir, overwrite=args.overwrite)
    loaded = load_model(args.model, seed=args.seed)
    logger.info("%s", plan.summary())
    report = compress_(loaded.model, plan)
    save_compressed(
        loaded.model,
        out,
        plan,
        report,
        extra={"source_model": args.model, "plan_file": str(args.plan)},
        tokenizer=loaded.tokenizer,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(report.table())
        print(f"saved the compressed model to {out} (load it with sdcompress.load_model)")
    return 0
