"""``TrainResult`` and the ``train_log.json`` it is stored as.

``train_log.json``::

    {
      "format": "sdcompress-train-log/1",
      "model": "tiny-gpt2", "dataset": "pydoc", "n_params": 35744,
      "config": {TrainConfig}, "data_config": {DataConfig},
      "fingerprint": "...", "steps": 1500, "resumed_from": null,
      "log": [{"step": 0, "train_loss": ..., "train_accuracy": ..., "test_loss": ...,
               "test_accuracy": ... or null, "minibatch_loss": ..., "sharpness": ...,
               "sharpness_residual": ..., "two_over_lr": ..., "stability_threshold": ...,
               "epoch": ...}, ...],
      "verdict": {EoSVerdict},
      "final": {"train_loss": ..., "test_loss": ..., "test_accuracy": ..., "sharpness": ...}
    }

``sharpness`` is λ_max(H_B) of the step's minibatch; ``two_over_lr`` is 2/η;
``stability_threshold`` is 2(1 + μ)/η − wd, the value λ_max(H_B) must exceed for the SGD
step with coupled weight decay wd and momentum μ to be linearly unstable (see
:mod:`sdcompress.train.eos`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcompress.config import DataConfig
from sdcompress.errors import ConfigError
from sdcompress.io import write_json_atomic
from sdcompress.train.config import TrainConfig
from sdcompress.train.eos import EoSVerdict

LOG_FILE = "train_log.json"
PLOT_FILE = "train_log.png"
MODEL_DIR = "model"
LOG_FORMAT = "sdcompress-train-log/1"
#: The per-record keys, in order (what the JSON log and ``series()`` hold).
RECORD_KEYS = (
    "step",
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "minibatch_loss",
    "sharpness",
    "sharpness_residual",
    "two_over_lr",
    "stability_threshold",
)


@dataclass(frozen=True)
class TrainResult:
    """What a constant-step SGD run produced.

    Attributes:
        model: how the model was asked for.
        dataset: the dataset's name.
        n_params: trainable parameters d.
        config: the training settings.
        data_config: batch size, seed and sampling of the minibatch stream ω.
        log: one record per logged step (keys :data:`RECORD_KEYS`).
        verdict: the edge-of-stability verdict.
        steps: SGD steps taken in total (including those before a resume).
        resumed_from: the checkpoint step this run resumed from, or ``None``.
        fingerprint: hash of model, initial weights, data and the settings that decide the
            trajectory and its log (a checkpoint is only resumed when it matches).
        output_dir: where the outputs were written (``None``: nothing written).
    """

    model: str
    dataset: str
    n_params: int
    config: TrainConfig
    data_config: DataConfig
    log: tuple[dict[str, Any], ...]
    verdict: EoSVerdict
    steps: int
    resumed_from: int | None = None
    fingerprint: str = ""
    output_dir: Path | None = field(default=None, compare=False)

    # final values, from the last record
    @property
    def final(self) -> dict[str, Any]:
        last = self.log[-1] if self.log else {}
        return {k: last.get(k) for k in ("train_loss", "test_loss", "test_accuracy", "sharpness")}

    @property
    def final_train_loss(self) -> float:
        return self.final["train_loss"]

    @property
    def final_test_loss(self) -> float:
        return self.final["test_loss"]

    @property
    def final_test_accuracy(self) -> float | None:
        return self.final["test_accuracy"]

    @property
    def final_sharpness(self) -> float:
        return self.final["sharpness"]

    @property
    def log_path(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir) / LOG_FILE

    @property
    def plot_path(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir) / PLOT_FILE

    @property
    def model_dir(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir) / MODEL_DIR

    def series(self) -> dict[str, list[Any]]:
        """The log as columns (``{"step": [...], "sharpness": [...], ...}``), for plotting."""
        return {k: [r.get(k) for r in self.log] for k in RECORD_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``train_log.json``."""
        return {
            "format": LOG_FORMAT,
            "model": self.model,
            "dataset": self.dataset,
            "n_params": self.n_params,
            "config": self.config.to_dict(),
            "data_config": vars(self.data_config).copy(),
            "fingerprint": self.fingerprint,
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "log": [dict(r) for r in self.log],
            "verdict": self.verdict.to_dict(),
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], output_dir: Path | None = None) -> "TrainResult":
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ConfigError: the dictionary is not a training log of this format.
        """
        if d.get("format") != LOG_FORMAT:
            raise ConfigError(f"not an sdcompress training log (format {d.get('format')!r}, expected {LOG_FORMAT!r})")
        return cls(
            model=d["model"],
            dataset=d["dataset"],
            n_params=int(d["n_params"]),
            config=TrainConfig.from_dict(d["config"]),
            data_config=DataConfig(**d["data_config"]),
            log=tuple(d["log"]),
            verdict=EoSVerdict.from_dict(d["verdict"]),
            steps=int(d["steps"]),
            resumed_from=d.get("resumed_from"),
            fingerprint=d.get("fingerprint", ""),
            output_dir=output_dir,
        )


def write_train_log(result: TrainResult, folder: str | Path) -> Path:
    """Write ``folder/train_log.json`` atomically."""
    return write_json_atomic(Path(folder) / LOG_FILE, result.to_dict())


def read_train_log(folder: str | Path) -> TrainResult:
    """Read ``folder/train_log.json`` back into a :class:`TrainResult`.

    Raises:
        ConfigError: the file is missing or not a training log.
    """
    path = Path(folder) / LOG_FILE
    if not path.is_file():
        raise ConfigError(f"no {LOG_FILE} in {str(folder)!r}: it holds no finished training run")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); delete the folder or pass --overwrite") from exc
    return TrainResult.from_dict(d, output_dir=Path(folder))
