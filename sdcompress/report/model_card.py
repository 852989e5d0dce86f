"""The model card: ``README.md`` of a compressed model folder, in the hub's format.

A Hugging Face model card is Markdown with YAML front matter. Ours holds:

- ``library_name`` (``transformers``, or ``sdcompress`` for the toolkit's own MLPs),
  ``tags``, ``pipeline_tag`` for language models, ``base_model`` when the compressed
  model is a hub repository id (built-ins and local folders have none);
- ``model-index``: the evaluation metrics before and after compression (test loss,
  perplexity or accuracy, SD), each ``{name, type, value}``, as the hub reads them;
- ``sdcompress``: the report's headline numbers under their ``report.json`` names
  (``sd_before`` … ``bytes_after``, ``preserved``), and the plan's strategy;

then a body with the verdict, the before/after table of ``report.md``, the plan
(strategy, budget, per-module choices, notes) and how to load the folder. The numbers
are the report's own (``RunReport``), written unrounded in the front matter.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from sdcompress.io import write_text_atomic
from sdcompress.models import BUILTIN_MODELS
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.report.run import RunReport

CARD_FILE = "README.md"
MODEL_DIR = "model"
CardFormat = Literal["sdcompress", "remote", "dense"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_MAX_ROWS = 60
#: report.json numbers copied into the front matter's ``sdcompress`` block
NUMBERS = ("sd_before", "sd_after", "d_before", "d_after", "test_loss_before", "test_loss_after", "params_before",
           "params_after", "bytes_before", "bytes_after")


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a hub repository id (not a built-in, not a local path)."""
    if not name or name in BUILTIN_MODELS or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return None
    return name if _HUB_ID.match(name) and not name.endswith((".json", ".yaml", ".yml")) else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _metrics(report: RunReport) -> list[dict[str, Any]]:
    eb, ea = report.evaluation_before, report.evaluation_after
    rows = [("test loss", "loss", report.test_loss_before, report.test_loss_after),
            ("perplexity", "perplexity", eb.get("perplexity"), ea.get("perplexity")),
            ("test accuracy", "accuracy", eb.get("test_accuracy"), ea.get("test_accuracy")),
            ("sharpness dimension", "sharpness-dimension", report.sd_before, report.sd_after)]
    out = []
    for name, kind, before, after in rows:
        for when, value in (("before compression", before), ("after compression", after)):
            if _finite(value):
                out.append({"name": f"{name} ({when})", "type": kind, "value": float(value)})
    return out


def _kinds(plan: dict[str, Any]) -> list[str]:
    tags = []
    mods = plan.get("modules", [])
    if any(m.get("rank") is not None for m in mods):
        tags.append("low-rank")
    if any(m.get("keep_fraction") is not None for m in mods):
        tags.append("pruned")
    tags += [f"int{b}" for b in (8, 4) if any(m.get("bits") == b for m in mods)]
    return tags


def _front_matter(report: RunReport | None, plan: dict[str, Any], *, model: str | None, dataset: str | None,
                  lm: bool, numbers: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"library_name": "transformers" if lm else "sdcompress",
                            "tags": ["sdcompress", "compressed", "sharpness-dimension", *_kinds(plan)]}
    if lm:
        meta["pipeline_tag"] = "text-generation"
    base = hub_id(model)
    if base:
        meta["base_model"] = base
    if report is not None:
        metrics = _metrics(report)
        if metrics:
            task = {"type": "text-generation", "name": "Causal language modeling"} if lm else {
                "type": "text-classification", "name": "Classification"}
            meta["model-index"] = [{"name": f"{model or 'model'}-sdcompress", "results": [
                {"task": task, "dataset": {"name": dataset or "unknown", "type": dataset or "unknown"}, "metrics": metrics}]}]
    meta["sdcompress"] = {**numbers, "strategy": plan.get("strategy")}
    return meta


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    mods = plan.get("modules", [])
    lines = ["## Compression plan", "", f"- strategy: `{plan.get('strategy')}`"]
    if plan.get("budget"):
        lines.append(f"- budget: `{plan['budget']}`")
    lines += ["", "| module | out × in | kind | rank | keep | bits |", "|---|---|---|---:|---:|---:|"]
    for m in mods[:_MAX_ROWS]:
        kind = "+".join(k for k, v in (("low-rank", m.get("rank")), ("masked", m.get("keep_fraction")),
                                       ("quantized", m.get("bits"))) if v is not None) or "dense"
        lines.append(f"| `{m.get('name')}` | {m.get('out_features')} × {m.get('in_features')} | {kind} | "
                     f"{_fmt(m.get('rank'), 'd')} | {_fmt(m.get('keep_fraction'), '.3f')} | {_fmt(m.get('bits'), 'd')} |")
    if len(mods) > _MAX_ROWS:
        lines.append(f"| … and {len(mods) - _MAX_ROWS} more (see `sdcompress_compression.json`) | | | | | |")
    notes = plan.get("notes") or []
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return lines


def _load_lines(fmt: CardFormat, lm: bool) -> list[str]:
    lines = ["## How to load", ""]
    if fmt == "dense":
        lines += ["The compressed weights multiplied back into the original architecture: a plain checkpoint, as large as "
                  "the original, with the accuracy effect of compression.", "", "```python",
                  "from transformers import AutoModelForCausalLM", "model = AutoModelForCausalLM.from_pretrained(path)",
                  "```"] if lm else ["```python", "import sdcompress", "model = sdcompress.load_model(path).model", "```"]
        return lines
    if lm:
        lines += ["The layers are stored compressed (low-rank factors, packed masks, packed int8/int4 with scales). "
                  "`modeling_sdcompress.py` in this folder rebuilds them with torch and transformers only (read it "
                  "before trusting it; without `trust_remote_code=True` transformers refuses the folder):", "", "```python", "from transformers import AutoModelForCausalLM",
                  "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
                  "# a tokenizer saved beside it: AutoTokenizer.from_pretrained(path, trust_remote_code=True)", "```", ""]
    if fmt == "sdcompress":
        lines += ["With sdcompress installed (no remote code is run):", "", "```python", "import sdcompress",
                  "model = sdcompress.load_model(path).model", "```"]
    return lines


def render_model_card(report: RunReport | None, *, compression: dict[str, Any] | None = None,
                      fmt: CardFormat = "sdcompress", lm: bool | None = None) -> str:
    """The model card (module docstring) of a compressed model.

    Args:
        report: the run's report; ``None`` for a folder compressed outside a run (the
            card then holds the sizes and plan from ``compression``).
        compression: the folder's ``sdcompress_compression.json`` (plan, compression
            report, versions, ``extra.source_model``).
        fmt: which folder the card describes: the run's ``model/`` (``"sdcompress"``),
            a ``"remote"`` or a ``"dense"`` export.
        lm: whether it is a language model (default: from the report's evaluation, else
            from the stored base library).

    Returns:
        Markdown text starting with ``---`` YAML front matter.
    """
    compression = compression or {}
    plan = dict(report.plan) if report is not None and report.plan else dict(compression.get("plan") or {})
    for m in plan.get("modules", []):
        m.pop("row_weights", None)
        m.pop("col_weights", None)
    if lm is None:
        lm = (report.evaluation_before.get("task") == "lm") if report is not None and report.evaluation_before else (
            (compression.get("base") or {}).get("library") == "transformers")
    extra = compression.get("extra") or {}
    model = report.model if report is not None else extra.get("source_model")
    dataset = report.dataset if report is not None else extra.get("dataset")
    if report is not None:
        numbers = {k: getattr(report, k) for k in NUMBERS}
        numbers["preserved"] = report.verdict.get("preserved")
    else:
        sizes = compression.get("report") or {}
        numbers = {k: sizes.get(k) for k in ("params_before", "params_after", "bytes_before", "bytes_after")}
    meta = _front_matter(report, plan, model=model, dataset=dataset, lm=bool(lm), numbers=numbers)
    title = f"{model or 'model'}, compressed with sdcompress" + (f" ({fmt} export)" if fmt != "sdcompress" else "")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {title}", ""]
    if report is not None:
        v = report.verdict
        mark = {True: "✅", False: "❌"}.get(v.get("preserved"), "")
        lines += [f"**{mark} {v.get('message', '')}**".replace("** ", "**"), "",
                  f"Compressed guided by the Sharpness Dimension (SD) of the model trained at the edge of stability, "
                  f"measured on `{dataset}`.", "", "## Before and after", "", "| | before | after |", "|---|---:|---:|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in report.summary_rows()]
    else:
        lines += ["Compressed outside a run: no evaluation was recorded with it.", "", "| | before | after |",
                  "|---|---:|---:|", f"| parameters | {_fmt(numbers['params_before'], ',')} | {_fmt(numbers['params_after'], ',')} |",
                  f"| bytes | {_fmt(numbers['bytes_before'], ',')} | {_fmt(numbers['bytes_after'], ',')} |"]
    lines += [""] + _plan_lines(plan) + [""] + _load_lines(fmt, bool(lm))
    version = (compression.get("versions") or {}).get("sdcompress") or (report.environment.get("sdcompress") if report else None)
    lines += ["", f"Written by sdcompress {version or ''}".rstrip() + "."]
    return "\n".join(lines) + "\n"


def write_run_card(run_folder: str | Path, report: RunReport) -> Path | None:
    """Write the model card of a finished run into its ``model/`` folder, when it has one.

    Returns:
        The card's path, or ``None`` when the run has no compressed model folder.
    """
    model_dir = Path(run_folder) / MODEL_DIR
    meta_path = model_dir / COMPRESSION_FILE
    if not meta_path.is_file():
        return None
    try:
        compression = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        compression = {}
    return write_model_card(model_dir, report, compression=compression if isinstance(compression, dict) else {})


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``yaml.safe_load``; ``{}`` when there is none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 4)
    return yaml.safe_load(text[4:end]) if end > 0 else {}


def write_model_card(folder: str | Path, report: RunReport | None, *, compression: dict[str, Any] | None = None,
                     fmt: CardFormat = "sdcompress") -> Path:
    """Write ``folder/README.md`` atomically (see :func:`render_model_card`)."""
    return write_text_atomic(Path(folder) / CARD_FILE, render_model_card(report, compression=compression, fmt=fmt))


__all__ = ["CARD_FILE", "NUMBERS", "hub_id", "read_front_matter", "render_model_card", "write_model_card",
           "write_run_card"]
