"""``load_model``: built-in name, local ``save_pretrained`` folder, or hub name.

Hugging Face models are always loaded with ``attn_implementation="eager"``: SDPA and
flash kernels support neither forward-mode AD nor double backward, and every later
stage differentiates the loss twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.data.core import Batch, Task
from sdcompress.errors import ModelError, OfflineError
from sdcompress.hub import hub_offline_mode, hub_reachable
from sdcompress.models.builtin import MLP, MODEL_CONFIG_FILE, ModularMLP, load_own_model, tiny_gpt2

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


#: Files of a saved tokenizer; a local folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model")


def _hf_from_pretrained(where: str, **kwargs: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager", **kwargs)
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
        if not (path / MODEL_CONFIG_FILE).exists():
            raise ModelError(f"{path} has no {MODEL_CONFIG_FILE}: pass a folder written by save_pretrained")
        if "sdcompress_model" in json.loads((path / MODEL_CONFIG_FILE).read_text()):
            own = load_own_model(path)
            return LoadedModel(own, str(path), "classification", source="local")
        model, tok = _hf_from_pretrained(str(path))
        return LoadedModel(model, str(path), "lm", loss_fn=None, tokenizer=tok, source="local")
    if name_or_path.startswith((".", "/", "~")) or path.suffix:
        raise ModelError(f"model path {name_or_path!r} does not exist; built-in models are {list(BUILTIN_MODELS)}")
    advice = (
        f"model {name_or_path!r} is not built in ({', '.join(BUILTIN_MODELS)}), not a local folder, and the Hugging Face hub "
        "is unreachable: save it with save_pretrained on a connected machine and pass that folder (or set HF_HUB_OFFLINE=1 "
        "if it is in the cache)"
    )
    if hub_offline_mode():
        try:
            model, tok = _hf_from_pretrained(name_or_path, local_files_only=True)
        except OSError as exc:
            raise OfflineError(advice) from exc
    elif not hub_reachable():
        raise OfflineError(advice)
    else:
        try:
            model, tok = _hf_from_pretrained(name_or_path)
        except OSError as exc:
            raise ModelError(f"could not load {name_or_path!r} from the hub: {exc}") from exc
    return LoadedModel(model, name_or_path, "lm", loss_fn=None, tokenizer=tok, source="hub")
