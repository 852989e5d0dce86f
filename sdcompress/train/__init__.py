"""Training at the edge of stability: constant-step SGD with a sharpness log and an EoS verdict.

- :class:`TrainConfig` and the documented per-model defaults (:mod:`.config`);
- :func:`train_sgd`: SGD on the seeded stream ω, logging losses and λ_max(H_B) next to
  2/η, checkpointing and resuming bit for bit (:mod:`.sgd`);
- :func:`eos_verdict` / :class:`EoSVerdict`, :func:`sharpness` (:mod:`.eos`);
- :func:`pretrained_builtin`: built-in models trained once and cached (:mod:`.cache`).
"""

from sdcompress.train.cache import cache_root, pretrained_builtin
from sdcompress.train.config import (
    BUILTIN_DEFAULTS,
    DEFAULT_WEIGHT_DECAY,
    TrainConfig,
    default_data_config,
    default_train_config,
)
from sdcompress.train.eos import EoSVerdict, Sharpness, eos_verdict, evaluate, sharpness
from sdcompress.train.log import TrainResult, read_train_log
from sdcompress.train.setup import builtin_for_data, load_training_data
from sdcompress.train.sgd import train_sgd

__all__ = [
    "BUILTIN_DEFAULTS",
    "DEFAULT_WEIGHT_DECAY",
    "EoSVerdict",
    "Sharpness",
    "TrainConfig",
    "TrainResult",
    "builtin_for_data",
    "cache_root",
    "default_data_config",
    "default_train_config",
    "eos_verdict",
    "evaluate",
    "load_training_data",
    "pretrained_builtin",
    "read_train_log",
    "sharpness",
    "train_sgd",
]
