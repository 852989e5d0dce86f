"""Load the data a training run asks for and build a built-in model that fits it.

Built-ins take their shapes from the data: ``tiny-gpt2`` its vocabulary and block size,
``mlp`` its input and output widths, ``modular-mlp`` its modulus. Mismatches (a language
model on a classification dataset, ...) are refused here, before anything is trained.
"""

from __future__ import annotations

from typing import Any

from sdcompress.config import DataConfig
from sdcompress.data import DatasetBundle, load_data
from sdcompress.errors import ConfigError
from sdcompress.models.loader import BUILTIN_MODELS, DEFAULT_DATASET, LoadedModel, load_model


def dataset_name(model: str, data_config: DataConfig) -> str:
    """The dataset to use: ``data_config.name`` or the built-in model's default.

    Raises:
        ConfigError: no dataset given for a model that has no default.
    """
    if data_config.name:
        return data_config.name
    if model in DEFAULT_DATASET:
        return DEFAULT_DATASET[model]
    raise ConfigError(f"model {model!r} has no default dataset; pass --dataset (a built-in, a local file, or a hub name)")


def load_training_data(model: str, data_config: DataConfig, tokenizer: Any | None = None) -> DatasetBundle:
    """Load the dataset of ``data_config`` (or the model's default) with its options.

    Raises:
        DataError, OfflineError, ConfigError: from :func:`sdcompress.data.load_data`.
    """
    return load_data(
        dataset_name(model, data_config),
        block_size=data_config.block_size,
        seed=data_config.seed,
        train_fraction=data_config.train_fraction,
        p=data_config.p,
        tokenizer=tokenizer,
    )


def builtin_for_data(name: str, data: DatasetBundle, *, seed: int = 0, options: dict[str, Any] | None = None) -> LoadedModel:
    """A freshly initialised built-in model shaped for ``data``.

    Args:
        name: ``tiny-gpt2``, ``mlp`` or ``modular-mlp``.
        data: the dataset (its ``info`` gives vocabulary, block size, widths, modulus).
        seed: initialisation seed.
        options: constructor options; they override what the data suggests.

    Raises:
        ConfigError: the model does not fit the dataset's task or inputs.
        ModelError: an unknown name or a bad option.
    """
    options = dict(options or {})
    info = data.info
    if name not in BUILTIN_MODELS:
        return load_model(name, seed=seed, **options)
    if name == "tiny-gpt2":
        if data.task != "lm":
            raise ConfigError(f"tiny-gpt2 is a language model but dataset {data.name!r} is {data.task!r}; use a text dataset such as pydoc")
        options.setdefault("vocab_size", int(info.get("vocab_size", 257)))
        options.setdefault("block_size", int(data.train.tensors["input_ids"].shape[1]))
    elif name == "mlp":
        inputs = data.train.tensors.get("inputs")
        if data.task != "classification" or inputs is None or not inputs.is_floating_point():
            raise ConfigError(f"mlp needs a classification dataset with numeric features (e.g. digits), got {data.name!r}; "
                              "use modular-mlp for modular and tiny-gpt2 for text")
        hidden = (16, 16)
        options.setdefault("widths", (int(inputs[0].numel()), *hidden, int(info.get("n_classes", 10))))
    else:
        if "p" not in info:
            raise ConfigError(f"modular-mlp needs the modular dataset (pairs (a, b) mod p), got {data.name!r}")
        options.setdefault("p", int(info["p"]))
    return load_model(name, seed=seed, **options)
