"""``sdcompress export RUN --format dense|remote --output-dir OUT``: a compressed model
for tools that do not know sdcompress.

RUN is a finished run folder or its ``model/`` folder (any folder written by
``save_compressed``). The export is written to a temporary folder and renamed into place,
with a model card (``README.md``) holding the run's numbers when RUN has a report.
"""

from __future__ import annotations

import argparse
import json
import logging

from sdcompress.compress.export import FORMATS, compressed_model_dir, export_model
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.report.model_card import render_model_card
from sdcompress.report.run import REPORT_FILE, RunReport

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdcompress export``."""
    parser.add_argument("run", metavar="RUN", help="a finished run folder, or its model/ folder (written by save_compressed)")
    parser.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="dense",
                        help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    parser.add_argument("--output-dir", required=True, metavar="OUT", help="folder to write the exported model to")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already holds files")


def run(args: argparse.Namespace) -> int:
    """Find the compressed folder and its report, export, print where it went."""
    model_dir = compressed_model_dir(args.run)
    run_dir = model_dir.parent
    report = RunReport.load(run_dir) if model_dir.name == "model" and (run_dir / REPORT_FILE).is_file() else None
    try:
        compression = json.loads((model_dir / COMPRESSION_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        compression = {}  # load_compressed (in export_model) says what is wrong with it
    card = render_model_card(report, compression=compression if isinstance(compression, dict) else {}, fmt=args.fmt)
    result = export_model(model_dir, args.output_dir, args.fmt, overwrite=args.overwrite, card=card)
    if not args.quiet:
        how = ("AutoModelForCausalLM.from_pretrained(OUT)" if args.fmt == "dense"
               else "AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)")
        check = "" if result.max_abs_diff is None else f"; outputs match the compressed model to {result.max_abs_diff:.1e}"
        print(f"exported {result.n_layers} compressed layers of {model_dir} as '{args.fmt}' to {result.folder}{check}")
        if compression.get("base", {}).get("library") == "transformers":
            print(f"load it with {how}")
    return 0
