"""Make a compressed causal-LM folder loadable by transformers alone (``trust_remote_code``).

:func:`write_remote_code` puts two things in a folder that ``save_compressed`` is
writing:

- ``modeling_sdcompress.py``, a verbatim copy of the template beside this file, which
  reimplements the forward of each stored layer kind with torch only and wraps the
  original architecture class (see its docstring);
- in ``config.json``: ``model_type = "sdcompress"``, ``auto_map`` naming the template's
  ``SdcompressConfig`` (``AutoConfig``) and ``SdcompressForCausalLM``
  (``AutoModelForCausalLM``), ``architectures = ["SdcompressForCausalLM"]``, and an
  ``sdcompress`` block describing every compressed layer as stored (kind, shape, bias,
  rank, bits, group size, number of kept weights), the float dtype and the original
  ``model_type`` and class.

The custom ``model_type`` is what makes plain ``from_pretrained`` without
``trust_remote_code=True`` fail with transformers' own "pass trust_remote_code=True"
error: with the original ``model_type`` it would silently build the original
architecture and initialise every compressed layer at random. The toolkit reads the
original config back with :func:`strip_remote_config`.

Only transformers causal LMs get them (other models have no ``AutoModelForCausalLM``
entry). The toolkit itself never imports the copied file: it recognises its own folders
by ``sdcompress_compression.json`` and rebuilds them from the stored plan.
:func:`strip_remote_config` undoes the config entries (for a dense export).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdcompress.compress.base import CompressedLinear
from sdcompress.compress.lowrank import LowRankLinear
from sdcompress.compress.prune import MaskedLinear
from sdcompress.compress.qlinear import QuantizedLinear
from sdcompress.errors import CompressionError
from sdcompress.io import write_json_atomic

TEMPLATE = Path(__file__).with_name("modeling_sdcompress.py")
MODELING_FILE = TEMPLATE.name
ENTRY_CLASS = "SdcompressForCausalLM"
CONFIG_CLASS = "SdcompressConfig"
AUTO_MAP = {"AutoConfig": f"{TEMPLATE.stem}.{CONFIG_CLASS}", "AutoModelForCausalLM": f"{TEMPLATE.stem}.{ENTRY_CLASS}"}
#: ``model_type`` in a compressed causal LM's config.json (the template's ``MODEL_TYPE``).
MODEL_TYPE = "sdcompress"
#: Key of the layer description in config.json (the template's ``CONFIG_KEY``).
CONFIG_KEY = "sdcompress"
#: Layout version of that block (the template's ``FORMAT_VERSION``).
FORMAT_VERSION = 1


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is an instance of its config's ``AutoModelForCausalLM`` class."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        return False
    try:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING
    except ImportError:
        return False
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:  # by name: imports nothing
        return False
    try:
        return isinstance(model, MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    except (ImportError, KeyError, AttributeError):  # a model family whose optional dependency is missing
        return False


def layer_spec(module: CompressedLinear) -> dict[str, Any]:
    """The config.json description of one compressed layer as stored.

    Raises:
        CompressionError: a compressed module kind the template does not know.
    """
    spec: dict[str, Any] = {"kind": module.kind, "in_features": module.in_features, "out_features": module.out_features,
                            "bias": module.bias is not None, "source": module.source}
    if isinstance(module, LowRankLinear):
        spec["rank"] = module.rank
    elif isinstance(module, QuantizedLinear):
        spec.update(bits=module.bits, group_size=module.group_size, rank=module.rank, n_kept=module.n_kept)
    elif not isinstance(module, MaskedLinear):
        raise CompressionError(f"no remote-code form for a {type(module).__name__}; known: lowrank, masked, quantized")
    return spec


def layer_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``name → layer_spec`` for every compressed module of ``model``."""
    return {name: layer_spec(m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)}


def _float_dtype(model: nn.Module) -> str:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return str(torch.get_default_dtype()).removeprefix("torch.")


def write_remote_code(folder: str | Path, model: nn.Module) -> bool:
    """Copy the modeling file into ``folder`` and register it in ``folder/config.json``.

    ``config.json`` must already be there (``model.config.save_pretrained``); it is
    rewritten atomically. Models that are not transformers causal LMs are left alone.

    Args:
        folder: the (temporary) folder being written.
        model: the compressed model whose layers are described.

    Returns:
        Whether the remote code was written.

    Raises:
        CompressionError: a compressed module kind the template does not know.
    """
    if not is_causal_lm(model):
        return False
    folder = Path(folder)
    config_path = folder / "config.json"
    config = strip_remote_config(json.loads(config_path.read_text()))  # idempotent: a folder written before
    base_model_type = config.get("model_type")
    config["auto_map"] = dict(AUTO_MAP)
    config["architectures"] = [ENTRY_CLASS]
    config["model_type"] = MODEL_TYPE
    config[CONFIG_KEY] = {"format_version": FORMAT_VERSION, "base_model_type": base_model_type,
                          "base_class": type(model).__name__, "dtype": _float_dtype(model), "layers": layer_specs(model)}
    shutil.copyfile(TEMPLATE, folder / MODELING_FILE)
    write_json_atomic(config_path, config)
    return True


def strip_remote_config(config: dict[str, Any]) -> dict[str, Any]:
    """The original model's config.json contents: ``config`` without the remote-code
    entries, ``model_type`` and ``architectures`` back to the original ones.

    Raises:
        CompressionError: ``model_type`` is ``"sdcompress"`` but the block does not say
            what the original was.
    """
    out = {k: v for k, v in config.items() if k not in ("auto_map", CONFIG_KEY)}
    block = config.get(CONFIG_KEY)
    block = block if isinstance(block, dict) else {}
    if block.get("base_class"):
        out["architectures"] = [block["base_class"]]
    if block.get("base_model_type"):
        out["model_type"] = block["base_model_type"]
    if out.get("model_type") == MODEL_TYPE:
        raise CompressionError(f"config.json has model_type {MODEL_TYPE!r} but no original model_type in its "
                               f"'{CONFIG_KEY}' block; the folder is damaged: compress the model again")
    return out


__all__ = ["AUTO_MAP", "CONFIG_CLASS", "CONFIG_KEY", "ENTRY_CLASS", "FORMAT_VERSION", "MODELING_FILE", "MODEL_TYPE", "TEMPLATE",
           "is_causal_lm", "layer_spec", "layer_specs", "strip_remote_config", "write_remote_code"]
