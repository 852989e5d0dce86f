"""Models: built-ins, local folders, hub names; and the functional loss over a parameter subset."""

from sdcompress.models.builtin import MLP, ModularMLP, tiny_gpt2, tiny_gpt2_config
from sdcompress.models.functional import (
    FunctionalLoss,
    ParamLayout,
    active_dropout,
    check_deterministic,
    model_loss,
    select_parameters,
)
from sdcompress.models.loader import BUILTIN_MODELS, DEFAULT_DATASET, LoadedModel, load_model

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_DATASET",
    "FunctionalLoss",
    "LoadedModel",
    "MLP",
    "ModularMLP",
    "ParamLayout",
    "active_dropout",
    "check_deterministic",
    "load_model",
    "model_loss",
    "select_parameters",
    "tiny_gpt2",
    "tiny_gpt2_config",
]
