"""``load_model``: built-in name, local ``save_pretrained`` folder, or hub name.

Hugging Face models are always loaded with ``attn_implementation="eager"``: SDPA and
flash kernels support neither forward-mode AD nor double backward, and every later
stage differentiates the loss twice.

Nothing from a model folder is executed: weights are read only from safetensors
(``use_safetensors=True``; a folder holding only a pickle ``pytorch_model.bin`` is
refused, since unpickling can run code), ``trust_remote_code`` is never set, and a
folder whose ``config.json`` names remote code (``auto_map``) is refused unless it is
the toolkit's own compressed folder, which :func:`sdcompress.compress.load_compressed`
rebuilds from its plan without importing the folder's ``.py`` file. A folder's files are
checked before loading (valid ``config.json``, a complete ``model.safetensors``), so a
damaged folder gives one :class:`~sdcompress.errors.ModelError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.data.core import Batch, Task
from sdcompress.errors import ModelError, OfflineError
from sdcompress.hub import hub_offline_mode, hub_reachable
from sdcompress.models.builtin import MLP, MODEL_CONFIG_FILE, WEIGHTS_FILE, ModularMLP, load_own_model, tiny_gpt2

LossFn = Callable[[Tensor, Tensor], Tensor]
COMPRESSION_FILE = "sdcompress_compression.json"

BUILTIN_MODELS = ("tiny-gpt2", "mlp", "modular-mlp")
#: The dataset each built-in model is meant for.
DEFAULT_DATASET = {"tiny-gpt2": "pydoc", "mlp": "digits", "modular-mlp": "modular"}


@dataclass
class LoadedModel:
    """A model and how to compute its loss on a batch.

    Attributes:
        model: the ``nn.Module`` (a ``transformers`` model or one of the toolkit's own).
        name: how it was asked for.
        task: ``"lm"`` (dict batches, loss from the model's own ``labels`` handling) or
            ``"classification"`` (``(inputs, targets)`` batches, ``loss_fn`` on logits).
        loss_fn: loss on ``(logits, targets)`` for classification; unused for ``"lm"``.
        tokenizer: the model's tokenizer when it has one (hub and local HF models).
        source: ``"builtin"``, ``"local"`` or ``"hub"``.
    """

    model: nn.Module
    name: str
    task: Task
    loss_fn: LossFn | None = F.cross_entropy
    tokenizer: Any | None = None
    source: Literal["builtin", "local", "hub"] = "builtin"
    info: dict[str, Any] = field(default_factory=dict)

    def loss(self, batch: Batch) -> Tensor:
        """Mean loss of ``self.model`` on ``batch``."""
        from sdcompress.models.functional import model_loss

        return model_loss(self.model, batch, self.loss_fn)


def _builtin(name: str, seed: int, config: dict[str, Any]) -> LoadedModel:
    if name == "tiny-gpt2":
        return LoadedModel(tiny_gpt2(seed=seed, **config), name, "lm", loss_fn=None)
    import torch

    torch.manual_seed(seed)
    if name == "mlp":
        return LoadedModel(MLP(**config), name, "classification")
    return LoadedModel(ModularMLP(**config), name, "classification")


#: Weight files that are pickles (loading one can execute code): never loaded.
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_config_json(folder: Path, what: type[Exception] = ModelError) -> dict[str, Any]:
    """``folder/config.json`` as a dict.

    Raises:
        ModelError (or ``what``): missing, unreadable, not JSON, or not a JSON object.
    """
    path = folder / MODEL_CONFIG_FILE
    if not path.is_file():
        raise what(f"{folder} has no {MODEL_CONFIG_FILE}: pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise what(f"{path} is not valid JSON ({detail}); the folder is damaged: save the model again") from exc
    if not isinstance(config, dict):
        raise what(f"{path} holds a JSON {type(config).__name__}, not an object; the folder is damaged: save the model again")
    return config


def check_safetensors(path: Path, what: type[Exception] = ModelError) -> None:
    """Refuse a missing, truncated or otherwise unreadable safetensors file, naming it.

    ``safe_open`` reads the header and checks that the tensors cover the file exactly,
    so a truncated download or an interrupted copy is caught here, before any tensor is
    loaded, without reading the data.

    Raises:
        ModelError (or ``what``): the file is missing or damaged.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise what(f"{path.parent} is missing {path.name}: the folder is incomplete; copy or save the model again")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # SafetensorError has no importable public base class across versions
        detail = " ".join(str(exc).split())[:200]
        size = os.path.getsize(path)
        raise what(f"{path} ({size:,} bytes) is damaged or truncated ({detail}); copy or save the model again") from exc


def check_model_folder(folder: Path) -> dict[str, Any]:
    """Check a plain (not compressed) model folder before anything of it is loaded.

    Returns:
        Its ``config.json``.

    Raises:
        ModelError: invalid ``config.json``; remote code (``auto_map``); only pickle
            weights; missing or damaged safetensors.
    """
    config = read_config_json(folder)
    if "sdcompress_model" in config:
        check_safetensors(folder / WEIGHTS_FILE)
        return config
    if config.get("auto_map") and isinstance(config.get("sdcompress"), dict):  # hf_remote's layer block
        raise ModelError(f"{folder} is a compressed model folder written by sdcompress but is missing {COMPRESSION_FILE}: "
                         "the folder is incomplete; copy it again or compress the model again")
    if config.get("auto_map"):
        raise ModelError(
            f"{folder}/{MODEL_CONFIG_FILE} has auto_map {sorted(config['auto_map'])}: the model needs code from the folder, "
            "and sdcompress does not run code from folders it did not write; load it with transformers yourself if you trust "
            "it, and pass the model object to the Python API, or save a folder of a built-in transformers architecture"
        )
    if (folder / SAFETENSORS_INDEX).is_file():  # sharded: check every shard
        try:
            shards = sorted(set(json.loads((folder / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{folder / SAFETENSORS_INDEX} is not a valid safetensors index; save the model again") from exc
        for shard in shards:
            check_safetensors(folder / shard)
        return config
    if not (folder / WEIGHTS_FILE).exists():
        pickles = [f for f in PICKLE_WEIGHTS if (folder / f).exists()]
        if pickles:
            raise ModelError(
                f"{folder} holds only {pickles[0]}, a pickle, and sdcompress does not load pickles (loading one can run "
                f"code); convert it to {WEIGHTS_FILE} on a machine where you trust it "
                "(model.save_pretrained(folder) writes safetensors) and pass that folder"
            )
    check_safetensors(folder / WEIGHTS_FILE)
    return config


#: Files of a saved tokenizer; a local folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model")


def _hf_from_pretrained(where: str, **kwargs: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # never run a folder's or a hub repo's code, never unpickle weights
    kwargs = {**kwargs, "trust_remote_code": False}
    config = AutoConfig.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager", use_safetensors=True, **kwargs)
    folder = Path(where)
    if folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
        # transformers 5 builds an empty (1-token) GPT2Tokenizer from a folder without
        # tokenizer files instead of failing; such folders (tiny-gpt2, byte-level) have none
        tokenizer = None
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # folders written from a model alone carry no tokenizer
    del config
    return model, tokenizer


def load_model(name_or_path: str, *, seed: int = 0, **config: Any) -> LoadedModel:
    """Load a model by built-in name, local folder, or hub name.

    Args:
        name_or_path: ``"tiny-gpt2"``, ``"mlp"``, ``"modular-mlp"``, a folder written by
            ``save_pretrained``, or a hub name such as ``"gpt2"``.
        seed: initialisation seed of built-in models.
        **config: constructor options of a built-in model (``n_layer``, ``widths``, ...).

    Raises:
        ModelError: unknown name, unreadable folder, or options given to a non-built-in.
        OfflineError: a hub name while the hub is unreachable and nothing is cached.
    """
    if name_or_path in BUILTIN_MODELS:
        try:
            return _builtin(name_or_path, seed, config)
        except TypeError as exc:
            raise ModelError(f"bad option for built-in model {name_or_path!r}: {exc}") from exc
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / COMPRESSION_FILE).exists():
            raise ModelError(
                f"{path} holds a compressed model: load it with sdcompress.load_model (the package-level loader), "
                "which rebuilds the compressed modules"
            )
        config = check_model_folder(path)
        try:
            if "sdcompress_model" in config:
                own = load_own_model(path)
                return LoadedModel(own, str(path), "classification", source="local")
            model, tok = _hf_from_pretrained(str(path))
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ModelError(f"cannot load the model in {path}: {detail}; check that it was written by save_pretrained") from exc
        return LoadedModel(model, str(path), "lm", loss_fn=None, tokenizer=tok, source="local")
    if name_or_path.startswith((".", "/", "~")) or path.suffix:
        raise ModelError(f"model path {name_or_path!r} does not exist; built-in models are {list(BUILTIN_MODELS)}")
    advice = (
        f"model {name_or_path!r} is not built in ({', '.join(BUILTIN_MODELS)}), not a local folder, and the Hugging Face hub "
        "is unreachable: save it with save_pretrained on a connected machine and pass that folder"
        + (" (HF_HUB_OFFLINE=1 is set and it is not in the Hugging Face cache)" if hub_offline_mode()
           else " (or set HF_HUB_OFFLINE=1 if it is in the Hugging Face cache)")
    )
    if hub_offline_mode():
        try:
            model, tok = _hf_from_pretrained(name_or_path, local_files_only=True)
        except OSError as exc:
            raise OfflineError(advice) from exc
        except ValueError as exc:  # e.g. a cached repo without safetensors weights (pickles are not loaded)
            raise ModelError(f"could not load {name_or_path!r} from the Hugging Face cache: {' '.join(str(exc).split())[:300]}") from exc
    elif not hub_reachable():
        raise OfflineError(advice)
    else:
        try:
            model, tok = _hf_from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load {name_or_path!r} from the hub: {' '.join(str(exc).split())[:300]}") from exc
    return LoadedModel(model, name_or_path, "lm", loss_fn=None, tokenizer=tok, source="hub")
