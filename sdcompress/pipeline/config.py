"""``RunConfig``: the main job's settings, one section per stage (recipes are YAML views of it)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from sdcompress.config import DataConfig, FieldError, ModelConfig, Validated, need_int
from sdcompress.errors import ConfigError
from sdcompress.estimator import EstimateConfig
from sdcompress.evaluate import EvalConfig
from sdcompress.models import DEFAULT_DATASET
from sdcompress.pipeline.preflight import PreflightConfig
from sdcompress.plan import PlanConfig
from sdcompress.train import TrainConfig


#: dataset of models that are not built in (the paper's GPT-2 setting, PAPER.md §4)
HUB_DEFAULT_DATASET = "wikitext:wikitext-2-raw-v1"
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class OutputConfig(Validated):
    """Where the run goes.

    Attributes:
        dir: run folder; ``None``: ``runs/<model>-<YYYYmmdd-HHMMSS>`` in the working directory.
        overwrite: replace a folder that holds a finished run (only the run's own files
            are removed).
    """

    SECTION: ClassVar[str] = "output"

    dir: str | None = None
    overwrite: bool = False

    def validate(self) -> "OutputConfig":
        """Check every field; returns ``self`` (run on construction).

        Raises:
            FieldError: naming the field (``output.NAME``), the value and the fix.
        """
        if self.dir is not None and (not isinstance(self.dir, (str, Path)) or not str(self.dir).strip()):
            raise FieldError(self.SECTION, "dir", "a folder path, or null for runs/<model>-<timestamp>", self.dir)
        if not isinstance(self.overwrite, bool):
            raise FieldError(self.SECTION, "overwrite", "true or false", self.overwrite)
        return self


#: RunConfig's sections and their classes
SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "estimate": EstimateConfig,
                             "plan": PlanConfig, "evaluate": EvalConfig, "output": OutputConfig,
                             "preflight": PreflightConfig}


@dataclass
class RunConfig(Validated):
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
        allow_untrained: go on with a network that did not train (0 steps) or ended at
            chance level (:mod:`sdcompress.train.quality`) instead of refusing it; the
            report then says so.
        preflight: the pre-flight's budgets (:mod:`sdcompress.pipeline.preflight`).
    """

    SECTION: ClassVar[str] = ""

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
    allow_untrained: bool = False
    preflight: PreflightConfig = field(default_factory=PreflightConfig)

    def validate(self) -> "RunConfig":
        """Check every section and the facts that span sections; returns ``self``.

        Runs on construction and again in :meth:`resolved` (so a field changed after
        construction is checked too), before the pipeline writes anything.

        Raises:
            FieldError: naming the field (``section.name``), the value and the fix.
            ConfigError: settings that contradict each other.
        """
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise FieldError("", name, f"a {cls.__name__}", section)
            section.validate()
        if self.seed is not None:
            need_int("", "seed", self.seed, 0, "or null to keep each section's own seed")
        if self.device not in DEVICES:
            raise FieldError("", "device", f"one of {list(DEVICES)}", self.device)
        for name in ("dry_run", "allow_untrained"):
            if not isinstance(getattr(self, name), bool):
                raise FieldError("", name, "true or false", getattr(self, name))
        return self

    def check_model(self, model: Any) -> None:
        """The checks that need the model (its parameter count d), run before anything is written.

        Args:
            model: the ``nn.Module`` the estimate will run on (a built-in's untrained
                skeleton has the same parameters).

        Raises:
            ModelError: an ``estimate.params`` pattern matches no parameter.
            FieldError: ``estimate.lyapunov_exponents`` above d (the Lyapunov frame
                tracks at most d directions), or ``estimate.method=exact`` on more than
                ``estimate.max_dense_params`` parameters.
        """
        from sdcompress.models.functional import select_parameters

        named = dict(model.named_parameters())
        d = sum(named[n].numel() for n in select_parameters(model, self.estimate.params))
        m = self.estimate.lyapunov_exponents
        lyapunov_runs = self.estimate.method == "lyapunov" or self.plan.strategy == "sd" or not self.plan.budget
        if lyapunov_runs and m > d:
            raise FieldError("estimate", "lyapunov_exponents", f"at most d = {d} (the parameters estimated over)", m,
                             f"set estimate.lyapunov_exponents ≤ {d}")
        if self.estimate.method == "exact" and d > self.estimate.max_dense_params:
            raise FieldError("estimate", "method", f"a matrix-free method for d = {d} > estimate.max_dense_params "
                             f"({self.estimate.max_dense_params})", "exact", "use ps (the default), kde or slq, "
                             "or restrict estimate.params")

    def resolved(self) -> "RunConfig":
        """A validated copy with the seed spread, the dataset and output folder filled in.

        Raises:
            FieldError, ConfigError: see :meth:`validate`.
        """
        self.validate()
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
        return cfg.validate()

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
    if device not in DEVICES:
        raise FieldError("", "device", f"one of {list(DEVICES)}", device)
    return torch.device(device)


__all__ = ["DEVICES", "HUB_DEFAULT_DATASET", "OutputConfig", "RunConfig", "SECTIONS", "resolve_device"]
