"""Built-in models trained at the edge of stability once, then reused.

``pretrained_builtin("tiny-gpt2")`` trains with the documented defaults
(:mod:`sdcompress.train.config`) and stores the result under

    $SDCOMPRESS_CACHE (default ~/.cache/sdcompress)/<name>-<hash>/
        model/             save_pretrained of the trained model
        train_log.json     the log and the EoS verdict
        train_log.png
        checkpoint.safetensors

where <hash> covers the model name, its options and seed, and the train and data
configs. Training happens in a hidden ``.<name>-<hash>.partial`` folder (resumable from
its checkpoint after an interruption) that is renamed into place when finished, under a
file lock (``flock``, removed when released, dropped by the kernel when its process
dies), so concurrent processes (``pytest -n 2``) train it once and never see half a
folder, and no lock file stays behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from sdcompress.config import DataConfig
from sdcompress.data import DatasetBundle
from sdcompress.errors import ModelError
from sdcompress.io import FolderLock, set_default_modes
from sdcompress.models.loader import BUILTIN_MODELS, LoadedModel, load_model
from sdcompress.train.config import TrainConfig, default_data_config, default_train_config
from sdcompress.train.log import LOG_FILE, MODEL_DIR, TrainResult, read_train_log
from sdcompress.train.setup import builtin_for_data, dataset_name, load_training_data
from sdcompress.train.sgd import train_sgd

logger = logging.getLogger(__name__)
CACHE_ENV = "SDCOMPRESS_CACHE"
CACHE_VERSION = 2  # bump when training code changes what a cached run means


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$SDCOMPRESS_CACHE``, else ``~/.cache/sdcompress``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sdcompress").expanduser()


def cache_key(name: str, train_config: TrainConfig, data_config: DataConfig, model_options: dict[str, Any], model_seed: int) -> str:
    """Short hash of everything that decides the cached run, the CPU thread count included: on
    a CPU, float reductions split by thread, so the same seed trained with 1 and with 2 threads
    ends at different weights (tiny-gpt2: final train loss 2.870 against 2.772), and a cache
    filled by a 1-thread run must not stand in for a 2-thread one."""
    blob = json.dumps(
        {"v": CACHE_VERSION, "model": name, "options": model_options, "seed": model_seed,
         "train": train_config.to_dict(), "data": asdict(data_config), "threads": torch.get_num_threads()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _complete(folder: Path) -> bool:
    return (folder / LOG_FILE).is_file() and (folder / MODEL_DIR).is_dir()


def pretrained_builtin(
    name: str,
    *,
    train_config: TrainConfig | None = None,
    data_config: DataConfig | None = None,
    model_options: dict[str, Any] | None = None,
    model_seed: int = 0,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> tuple[LoadedModel, DatasetBundle, TrainResult]:
    """A built-in model trained at the edge of stability, from the cache or trained now.

    The model comes back in eval mode whether it was just trained or loaded from the
    cache (built-ins have no dropout, so the mode changes no number), with the same
    weights bit for bit either way.

    Args:
        name: ``tiny-gpt2``, ``mlp`` or ``modular-mlp``.
        train_config: training settings (default: :func:`default_train_config`).
        data_config: dataset and stream settings (default: :func:`default_data_config`;
            a ``None`` dataset name means the model's default dataset).
        model_options: constructor options of the built-in (``n_layer``, ``widths``, ...).
        model_seed: initialisation seed.
        cache_dir: cache root (default ``$SDCOMPRESS_CACHE`` or ``~/.cache/sdcompress``).
        device: where to train and return the model (default: CPU).

    Returns:
        ``(loaded, data, result)``; ``result.output_dir`` is the cache folder.

    Raises:
        ModelError: ``name`` is not a built-in model.
        ConfigError, DataError: bad settings.
        DivergenceError: the settings make SGD diverge (nothing is cached).
    """
    if name not in BUILTIN_MODELS:
        raise ModelError(f"{name!r} is not a built-in model; built-ins are {list(BUILTIN_MODELS)} (train others with train_sgd)")
    train_config = (train_config or default_train_config(name)).validate()
    data_config = data_config or default_data_config(name)
    data_config = replace(data_config, name=dataset_name(name, data_config))
    options = dict(model_options or {})
    data = load_training_data(name, data_config)
    key = cache_key(name, train_config, data_config, options, model_seed)
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{key}"
    # flock, released by the kernel if this process dies; the lock file is removed on release
    with FolderLock(root, what="cache entry", name=f".{name}-{key}.lock", wait=True):
        if _complete(folder):
            loaded = load_model(str(folder / MODEL_DIR))
            loaded = replace(loaded, name=name, info={**loaded.info, "trained_in": str(folder)})
            result = read_train_log(folder)
            logger.info("using the cached %s trained at the edge of stability in %s", name, folder)
        else:
            partial = root / f".{name}-{key}.partial"
            loaded = builtin_for_data(name, data, seed=model_seed, options=options)
            if device is not None:
                loaded.model.to(device)
            logger.info("training %s at the edge of stability (%d steps, η = %g); cached in %s", name, train_config.steps, train_config.lr, folder)
            result = train_sgd(loaded, data, train_config, data_config=data_config, output_dir=partial)
            if folder.exists():  # an incomplete leftover (files deleted by hand): replace it
                shutil.rmtree(folder)
            set_default_modes(partial)  # mkdtemp/safetensors make 0700/0600; the cache gets the usual modes
            os.replace(partial, folder)
            result = replace(result, output_dir=folder)
            loaded.info = {**loaded.info, "trained_in": str(folder)}
    if device is not None:
        loaded.model.to(device)
    loaded.model.eval()
    return loaded, data, result
