"""``sdcompress recipe FILE [--set section.key=value ...]``: run a YAML recipe.

Single process::

    sdcompress recipe recipes/tiny-gpt2.yaml --set train.steps=100

Data parallel (every Hessian-vector product sharded over the processes, all-reduced)::

    torchrun --standalone --nproc_per_node 2 -m sdcompress recipe recipes/digits-mlp.yaml
    accelerate launch --multi_gpu --num_processes 2 -m sdcompress recipe recipes/digits-mlp.yaml

(``accelerate launch`` without ``--multi_gpu`` and with no ``accelerate config`` file
starts a single process; ``--multi_gpu`` is the flag that makes it start N, and it works
on CPU-only machines too, over gloo.)
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  sdcompress recipe recipes/tiny-gpt2.yaml
  sdcompress recipe recipes/digits-mlp.yaml --set train.steps=200 --set plan.target_rank=8
  sdcompress recipe recipes/gpt2-wikitext2.yaml --check        # validate, print the resolved recipe
  torchrun --standalone --nproc_per_node 2 -m sdcompress recipe recipes/digits-mlp.yaml
  accelerate launch --multi_gpu --num_processes 2 -m sdcompress recipe recipes/digits-mlp.yaml

exit codes: 0 success; 2 bad input (one line naming the file, key and fix; -v for a traceback); 130 interrupted
(rerun the same command to resume).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``recipe`` subcommand's options."""
    parser.epilog = EXAMPLES
    parser.formatter_class = _Formatter
    parser.add_argument("recipe", metavar="FILE", help="YAML recipe (see recipes/); presets are looked up in configs/")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one field after presets and the file, read by the field's type; repeatable "
        "(e.g. --set train.steps=50 --set plan.target_rank=auto --set model.options.n_layer=1)",
    )
    parser.add_argument(
        "--preset", dest="presets", action="append", default=[], metavar="NAME",
        help="extra preset from configs/NAME.yaml layered over the recipe, below --set; repeatable "
        "(e.g. --preset smoke for a quick check)",
    )
    parser.add_argument("--output-dir", metavar="DIR", help="where the run folder goes (same as --set output.dir=DIR)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="allow an output folder that already holds a run (same as --set output.overwrite=true)",
    )
    parser.add_argument("--seed", type=int, help="seed of every stage (same as --set seed=N); None: the recipe's own")
    parser.add_argument(
        "--check", action="store_true",
        help="validate the recipe and print the resolved YAML (presets and --set applied); run nothing, write nothing",
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def overrides_of(args: argparse.Namespace) -> list[str]:
    """``--set`` strings plus the shortcut options, in the order they apply."""
    extra = []
    if args.output_dir is not None:
        extra.append(f"output.dir={args.output_dir}")
    if args.overwrite:
        extra.append("output.overwrite=true")
    if args.seed is not None:
        extra.append(f"seed={args.seed}")
    return [*args.overrides, *extra]


def run(args: argparse.Namespace) -> int:
    """Load (and with ``--check`` only print) or run the recipe; 0 on success."""
    from sdcompress.recipe import dump_recipe, load_recipe, run_recipe

    from sdcompress.cli.options import under_options
    from sdcompress.config import need_int
    from sdcompress.pipeline import OutputConfig

    with under_options({"seed": "--seed", "output.dir": "--output-dir"}):  # the shortcuts, under their own names
        if args.seed is not None:
            need_int("", "seed", args.seed, 0)
        OutputConfig(dir=args.output_dir)
    overrides = overrides_of(args)
    if args.check:
        config = load_recipe(args.recipe, overrides, presets=args.presets)
        sys.stdout.write(dump_recipe(config, header=f"resolved from {args.recipe}"))
        return 0
    report = run_recipe(args.recipe, overrides, presets=args.presets)
    if args.quiet or not _is_main_process():
        return 0
    from sdcompress.cli.run import print_summary

    folder = report.config.get("output", {}).get("dir", "")
    if report.test_loss_after is None:  # dry_run: the plan only
        print(f"dry run: plan written to {folder}/plan.json; predicted parameters {report.params_before:,} → "
              f"{report.params_after:,}, bytes {report.bytes_before:,} → {report.bytes_after:,}")
    else:
        print_summary(report, folder)
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("", "0")
