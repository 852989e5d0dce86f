"""``sdcompress report RUN_DIR``: re-render report.md and the plots of a finished run folder
from its saved artifacts (report.json, estimates.json, ...), and print the summary table."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress report``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding report.json (written by 'sdcompress MODEL ...')")


def run(args: argparse.Namespace) -> int:
    """Render, then print where and the table."""
    from sdcompress.report import RunReport, render_run

    path = render_run(args.run_dir)
    if not args.quiet:
        print(RunReport.load(args.run_dir).table())
        print(f"\nrendered {path} and its plots")
    return 0
