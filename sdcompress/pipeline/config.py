"""``RunConfig``: the main job's settings, one section per stage (recipes are YAML views of it)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

from sdcompress.config import DataConfig, ModelConfig
from sdcompress.errors import ConfigError
from sdcompress.estimator import EstimateConfig
from sdcompress.evaluate import EvalConfig
from sdcompress.models import DEFAULT_DATASET
from sdcompress.pipeline.preflight import PreflightConfig
from sdcompress.plan import PlanConfig
from sdcompress.train import TrainConfig


#: dataset of models that are not built in (the paper's GPT-2 setting, PAPER.md §4)
HUB_DEFAULT_DATASET = "wikitext:wikitext-2-raw-v1"


@dataclass
class OutputConfig:
    """Where the run goes.

    Attributes:
        dir: run folder; ``None``: ``runs/<model>-<YYYYmmdd-HHMMSS>`` in the working directory.
        overwrite: replace a folder that holds a finished run (only the run's own files
            are removed).
    """

    dir: str | None = None
    overwrite: bool = False


@dataclass
class RunConfig:
    """Everything the main job needs; recipes are YAML views of it.

    Attributes:
        model, data, train, estimate, plan, evaluate, output: the sections.
        seed: when set, every section's seed (model init, minibatch stream ω, training,
            estimator probes, planning batches) is set to it; ``None`` keeps each section's own.
            A missing ``data.name`` becomes the built-in's corpus, or WikiText-2 from the hub
            (``wikitext:wikitext-2-raw-v1``) for other models.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        dry_run: stop after writing plan.json (nothing is compressed); the plan is made
            before the Lyapunov stage, from the SD estimate alone, and a later full run
            remakes it.
        preflight: the pre-flight's budgets (:mod:`sdcompress.pipeline.preflight`).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dry_run: bool = False
    preflight: PreflightConfig = field(default_factory=PreflightConfig)

    def resolved(self) -> "RunConfig":
        """A copy with the seed spread, the dataset and output folder filled in."""
        cfg = copy.deepcopy(self)
        if cfg.seed is not None:
            for section in (cfg.model, cfg.data, cfg.train, cfg.estimate, cfg.plan):
                if hasattr(section, "seed"):
                    section.seed = cfg.seed
        if cfg.data.name is None:
            # built-ins have their own corpus; any other (causal LM) model gets WikiText-2 from the hub
            cfg.data.name = DEFAULT_DATASET.get(cfg.model.name, HUB_DEFAULT_DATASET)
        if cfg.output.dir is None:
            stem = Path(cfg.model.name).name or "model"
            cfg.output.dir = str(Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        cfg.plan.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types, section by section (the form config.json holds)."""
        return _plain(self)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU.

    Raises:
        ConfigError: ``cuda`` asked for on a machine without it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


__all__ = ["HUB_DEFAULT_DATASET", "OutputConfig", "RunConfig", "resolve_device"]
