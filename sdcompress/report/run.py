"""The run's final artifact: :class:`RunReport` (``report.json``), and the environment record.

``report.json`` holds the numbers a reader checks first, at the top level —
``sd_before``, ``sd_after``, ``test_loss_before``, ``test_loss_after``,
``params_before``, ``params_after``, ``bytes_before``, ``bytes_after``, ``verdict`` —
then the details each stage produced (training, estimate, plan, compression,
evaluations, closed-loop tries) and the environment (versions, git hash, device).
Whole-model parameter and byte counts follow :mod:`sdcompress.compress.report`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from sdcompress.errors import ConfigError
from sdcompress.io import write_json_atomic

REPORT_FILE = "report.json"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_hash(path: str | Path | None = None) -> str | None:
    """The commit of the sdcompress source tree (``None`` outside a git checkout), with
    ``-dirty`` when it has uncommitted changes."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, platform, git hash and device, recorded in every report."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "sdcompress": _version("sdcompress"),
        "git": git_hash(),
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


@dataclass(frozen=True)
class RunReport:
    """Everything a finished run found.

    Attributes:
        model, dataset: what was compressed, on what.
        sd_before, sd_after: SD of the trained and of the compressed model (same ω, η).
        d_before, d_after: parameters SD was measured over.
        test_loss_before, test_loss_after: mean test losses.
        params_before, params_after, bytes_before, bytes_after: whole-model storage.
        verdict: :class:`~sdcompress.evaluate.Verdict` as a dict.
        plan: strategy, notes and per-module choices (``Plan.to_dict`` without weights).
        compression: ``CompressionReport.to_dict``.
        evaluation_before, evaluation_after: ``EvalReport.to_dict`` (without the estimate).
        estimate: summary of the SD estimate (method, sd, interval, j*, n_neutral, HVPs).
        training: summary of the training / SGD phase.
        tries: closed-loop attempts (one entry per try).
        config: the resolved run config.
        environment: versions, git hash, device.
        wall_time_s: seconds per stage.
        preflight: the pre-flight's measurements, predictions and picks
            (``PreflightResult.to_dict``), or ``None`` when it did not run.
    """

    model: str
    dataset: str
    sd_before: float | None
    sd_after: float | None
    d_before: int | None
    d_after: int | None
    test_loss_before: float
    test_loss_after: float | None
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    verdict: dict[str, Any]
    plan: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    evaluation_before: dict[str, Any] = field(default_factory=dict)
    evaluation_after: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    tries: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    wall_time_s: dict[str, float] = field(default_factory=dict)
    preflight: dict[str, Any] | None = None

    @property
    def preserved(self) -> bool:
        return bool(self.verdict.get("preserved"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``report.json`` into ``folder`` atomically, and the model card
        ``model/README.md`` when the run folder holds a compressed model."""
        path = write_json_atomic(Path(folder) / REPORT_FILE, self.to_dict())
        from sdcompress.report.model_card import write_run_card  # it imports this module

        write_run_card(folder, self)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunReport":
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"report is missing {missing}; it was not written by this sdcompress")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, folder: str | Path) -> "RunReport":
        """Read ``report.json`` from a run folder.

        Raises:
            ConfigError: no readable report there.
        """
        path = Path(folder) / REPORT_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise ConfigError(f"{folder} holds no {REPORT_FILE}: it is not a finished run folder (rerun the job to finish it)") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid report ({exc}); rerun the job with --overwrite") from exc

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(quantity, before, after) rows for the end-of-run table."""

        def f(x: Any, spec: str) -> str:
            return "n/a" if x is None else format(x, spec)

        eb, ea = self.evaluation_before, self.evaluation_after
        rows = [
            ("SD", f(self.sd_before, ".1f"), f(self.sd_after, ".1f")),
            ("d (params SD is over)", f(self.d_before, ","), f(self.d_after, ",")),
            ("test loss", f(self.test_loss_before, ".4f"), f(self.test_loss_after, ".4f")),
            ("train/test gap", f(eb.get("gap"), "+.4f"), f(ea.get("gap"), "+.4f")),
        ]
        if eb.get("perplexity") is not None:
            rows.append(("perplexity", f(eb.get("perplexity"), ".2f"), f(ea.get("perplexity"), ".2f")))
        if eb.get("window_loss") is not None:
            how = f"context {eb.get('context_length')}, stride {eb.get('stride')}"
            rows.append((f"test loss, sliding window ({how})", f(eb.get("window_loss"), ".4f"), f(ea.get("window_loss"), ".4f")))
            rows.append((f"perplexity, sliding window ({how})", f(eb.get("window_perplexity"), ".2f"),
                         f(ea.get("window_perplexity"), ".2f")))
        if eb.get("test_accuracy") is not None:
            rows.append(("test accuracy", f(eb.get("test_accuracy"), ".4f"), f(ea.get("test_accuracy"), ".4f")))
        rows += [
            ("parameters", f(self.params_before, ","), f(self.params_after, ",")),
            ("bytes", f(self.bytes_before, ","), f(self.bytes_after, ",")),
        ]
        return rows

    def table(self) -> str:
        """A fixed-width before/after table and the verdict line."""
        rows = self.summary_rows()
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len("before"), *(len(r[1]) for r in rows))
        w2 = max(len("after"), *(len(r[2]) for r in rows))
        lines = [f"{'':<{w0}}  {'before':>{w1}}  {'after':>{w2}}", "-" * (w0 + w1 + w2 + 4)]
        lines += [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
        lines.append(self.verdict.get("message", ""))
        return "\n".join(lines)


__all__ = ["REPORT_FILE", "RunReport", "environment", "git_hash"]
