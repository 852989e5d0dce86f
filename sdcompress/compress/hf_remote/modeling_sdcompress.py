"""Load an sdcompress-compressed causal LM with plain transformers (no sdcompress needed).

This file was written by sdcompress beside the weights of a compressed model. It lets

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

rebuild the model where only torch, transformers and safetensors are installed. It is a
verbatim copy of ``sdcompress/compress/hf_remote/modeling_sdcompress.py``; sdcompress
itself never imports the copy in a model folder (it loads its folders through its own
code, from ``sdcompress_compression.json``).

How loading works (:meth:`SdcompressForCausalLM.from_pretrained`):

1. ``config.json`` is the original architecture's config with ``model_type:
   sdcompress`` (so that plain ``from_pretrained`` without ``trust_remote_code`` fails
   loudly instead of loading the original architecture with the compressed layers
   randomly initialised) and an ``sdcompress`` block: format version, the original
   ``model_type`` and class, the float dtype and one entry per compressed layer (kind,
   shape, bias, rank / bits / group size / number of kept weights).
   :class:`SdcompressConfig` reads it.
2. The original class (``GPT2LMHeadModel`` …) is built from the original config, and
   each listed layer is replaced by the matching layer below, empty.
3. ``model.safetensors`` is loaded into it as stored: low-rank factors, packed masks and
   packed int8 / int4 integers with their scales. Nothing is densified on load; each
   layer computes ``y = x Wᵀ + b`` from its stored form in every forward pass.

Stored layer kinds (all in the ``nn.Linear`` convention, ``W: (out, in)``; a GPT-2
``Conv1D``, which stores ``Wᵀ``, is replaced by the same map in this convention):

- ``lowrank``: ``U (out, k)``, ``V (k, in)``; ``y = (x Vᵀ) Uᵀ + b``.
- ``masked``: the kept weights ``weight_values (kept,)`` (row-major order) and the mask
  packed 8 per byte, least significant bit first, ``mask_bits (ceil(out·in/8),)``.
- ``quantized``: symmetric per-group integers along each row (groups of ``group_size``
  consecutive columns, one float scale per group): int8 as ``int8``; int4 as ``q + 8``
  packed two per ``uint8`` (even index in the low nibble). Read back as ``q · scale``.
  Either the dense weight (``qweight``), both low-rank factors (``qU``, ``qV``), or only
  the kept weights of a mask (``qweight`` with ``n_values = kept`` and ``mask_bits``).

The float bias stays a float parameter. Quantized layers dequantize on the fly (no
integer kernels): they save memory at rest, not time.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

#: Newest layout of the ``sdcompress`` block in config.json this file can read.
FORMAT_VERSION = 1
#: Key of that block in config.json.
CONFIG_KEY = "sdcompress"
WEIGHTS_FILE = "model.safetensors"
#: ``model_type`` of a compressed folder's config.json (the original one is in the block).
MODEL_TYPE = "sdcompress"


# ----------------------------------------------------------------------------- packing


def pack_bits(mask: Tensor) -> Tensor:
    """Pack booleans 8 per byte, least significant bit first: ``(n,) → (ceil(n/8),)`` uint8."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` booleans."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten()[:n].bool()


def unpack_int4(packed: Tensor, n: int) -> Tensor:
    """The first ``n`` int4 values (stored as ``q + 8``, two per byte, low nibble first) as int8."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    return (torch.stack([low, high], dim=-1).flatten()[:n] - 8).to(torch.int8)


def dequantize_groups(q: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """``q · s`` with each group's scale: ``q (rows, cols)`` int8, ``scales (rows, ceil(cols/group_size))``."""
    cols = q.shape[1]
    expanded = scales.repeat_interleave(group_size, dim=1)[:, :cols]
    return q.to(scales.dtype) * expanded


# ------------------------------------------------------------------------------ layers


class PackedTensor(nn.Module):
    """A ``(rows, cols)`` weight as packed integers ``data`` plus per-group ``scales``.

    With ``n_values < rows·cols`` only the entries a mask keeps are stored (row-major).
    """

    def __init__(self, rows: int, cols: int, bits: int, group_size: int, n_values: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if bits not in (8, 4):
            raise ValueError(f"bits {bits!r} is not supported; this file reads 8 or 4")
        self.rows, self.cols, self.bits, self.group_size = rows, cols, bits, group_size
        self.n_values = rows * cols if n_values is None else n_values
        n_bytes = self.n_values if bits == 8 else math.ceil(self.n_values / 2)
        self.register_buffer("data", torch.zeros(n_bytes, dtype=torch.int8 if bits == 8 else torch.uint8))
        n_groups = math.ceil(cols / group_size)
        self.register_buffer("scales", torch.ones(rows, n_groups, dtype=dtype or torch.get_default_dtype()))

    def int_values(self) -> Tensor:
        """The stored integers as int8 ``(n_values,)``."""
        return self.data if self.bits == 8 else unpack_int4(self.data, self.n_values)

    def dequantize(self, mask: Tensor | None = None) -> Tensor:
        """The float weight ``(rows, cols)``; ``mask`` places the kept values when only those are stored."""
        values = self.int_values()
        if mask is None:
            q = values.view(self.rows, self.cols)
        else:
            q = torch.zeros(self.rows * self.cols, dtype=torch.int8, device=values.device)
            q[mask.flatten()] = values
            q = q.view(self.rows, self.cols)
        return dequantize_groups(q, self.scales, self.group_size)

    def extra_repr(self) -> str:
        return f"{self.rows}×{self.cols}, int{self.bits}, group_size={self.group_size}, values={self.n_values}"


class _StoredLinear(nn.Module, abc.ABC):
    """What the three layer kinds share: shape, float bias, and ``to_dense``."""

    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @abc.abstractmethod
    def to_dense(self) -> Tensor:
        """The stored layer's weight as a dense (out, in) matrix."""

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LowRankLinear(_StoredLinear):
    """``y = x Vᵀ Uᵀ + b`` with ``U (out, k)``, ``V (k, in)``."""

    kind = "lowrank"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.rank = rank
        self.U = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype))
        self.V = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def to_dense(self) -> Tensor:
        return self.U @ self.V

    def extra_repr(self) -> str:
        return f"{self._shape_repr()}, rank={self.rank}"


class MaskedLinear(_StoredLinear):
    """``y = x (W ⊙ M)ᵀ + b``; stored as the kept values and the packed mask."""

    kind = "masked"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype))
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight * self.mask, self.bias)

    def to_dense(self) -> Tensor:
        return self.weight * self.mask

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        w = self.weight if keep_vars else self.weight.detach()
        destination[prefix + "weight_values"] = w[self.mask]
        destination[prefix + "mask_bits"] = pack_bits(self.mask)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        vkey, mkey = prefix + "weight_values", prefix + "mask_bits"
        if vkey in state_dict and mkey in state_dict:
            values, bits = state_dict.pop(vkey), state_dict.pop(mkey)
            mask = unpack_bits(bits.to(self.mask.device), self.mask.numel()).view_as(self.mask)
            if int(mask.sum()) != values.numel():
                error_msgs.append(f"{prefix}: mask keeps {int(mask.sum())} weights but {values.numel()} values are stored")
                return
            dense = torch.zeros_like(self.weight)
            dense[mask] = values.to(dense)
            state_dict[prefix + "weight"], state_dict[prefix + "mask"] = dense, mask
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        n, kept = self.mask.numel(), int(self.mask.sum())
        return f"{self._shape_repr()}, keep={kept / n:.1%} ({kept}/{n})"


class QuantizedLinear(_StoredLinear):
    """Weight-only int8 / int4 layer: dense, low-rank (``rank``) or masked (``n_kept``)."""

    kind = "quantized"

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 64, rank: int | None = None,
                 n_kept: int | None = None, bias: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.bits, self.group_size, self.rank, self.n_kept = bits, group_size, rank, n_kept
        if rank is not None:
            self.qU = PackedTensor(out_features, rank, bits, group_size, dtype=dtype)
            self.qV = PackedTensor(rank, in_features, bits, group_size, dtype=dtype)
        else:
            self.qweight = PackedTensor(out_features, in_features, bits, group_size, n_kept, dtype=dtype)
        if n_kept is not None:
            self.register_buffer("mask_bits", torch.zeros(math.ceil(in_features * out_features / 8), dtype=torch.uint8))

    def mask(self) -> Tensor | None:
        """The bool mask ``(out, in)``, or ``None`` when not masked."""
        if self.n_kept is None:
            return None
        return unpack_bits(self.mask_bits, self.out_features * self.in_features).view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if self.rank is not None:
            return F.linear(F.linear(x, self.qV.dequantize().to(x.dtype)), self.qU.dequantize().to(x.dtype), self.bias)
        return F.linear(x, self.qweight.dequantize(self.mask()).to(x.dtype), self.bias)

    def to_dense(self) -> Tensor:
        if self.rank is not None:
            return self.qU.dequantize() @ self.qV.dequantize()
        return self.qweight.dequantize(self.mask())

    def extra_repr(self) -> str:
        what = f", rank={self.rank}" if self.rank is not None else ""
        if self.n_kept is not None:
            n = self.in_features * self.out_features
            what = f", keep={self.n_kept / n:.1%} ({self.n_kept}/{n})"
        return f"{self._shape_repr()}, bits={self.bits}, group_size={self.group_size}{what}"


def build_layer(spec: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """The empty layer one ``layers`` entry of the ``sdcompress`` config block describes.

    Raises:
        ValueError: an unknown kind or a missing field.
    """
    try:
        i, o, bias, kind = int(spec["in_features"]), int(spec["out_features"]), bool(spec["bias"]), spec["kind"]
        if kind == "lowrank":
            return LowRankLinear(i, o, int(spec["rank"]), bias, dtype)
        if kind == "masked":
            return MaskedLinear(i, o, bias, dtype)
        if kind == "quantized":
            rank = None if spec.get("rank") is None else int(spec["rank"])
            n_kept = None if spec.get("n_kept") is None else int(spec["n_kept"])
            return QuantizedLinear(i, o, int(spec["bits"]), int(spec["group_size"]), rank, n_kept, bias, dtype)
    except KeyError as exc:
        raise ValueError(f"compressed layer entry {spec!r} lacks {exc}; the config.json was not written by sdcompress") from exc
    raise ValueError(f"unknown compressed layer kind {kind!r}; this modeling file knows lowrank, masked and quantized "
                     "(update it from a newer sdcompress)")


# ------------------------------------------------------------------------------- model


def _block(config: Any) -> dict[str, Any]:
    block = getattr(config, CONFIG_KEY, None)
    if not isinstance(block, dict) or not isinstance(block.get("layers"), dict):
        raise ValueError(f"config.json has no '{CONFIG_KEY}' block with 'layers': it was not written by sdcompress")
    version = block.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"config.json's '{CONFIG_KEY}' block has format_version {version!r}, newer than this modeling "
                         f"file reads ({FORMAT_VERSION}); save the model again with the sdcompress that reads it")
    return block


class SdcompressConfig(PretrainedConfig):
    """config.json of a compressed folder: the original config's fields, ``model_type =
    "sdcompress"``, and the ``sdcompress`` block (:meth:`base_config` gives the original)."""

    model_type = MODEL_TYPE

    def base_config(self) -> PretrainedConfig:
        """The original architecture's config (``GPT2Config`` …), with the block kept on it."""
        return base_config(self)


def base_config(config: Any) -> PretrainedConfig:
    """The original config of a compressed folder's config (an :class:`SdcompressConfig`,
    or any config object carrying the ``sdcompress`` block).

    Raises:
        ValueError: not an sdcompress config, or an original ``model_type`` this
            transformers does not know.
    """
    import transformers

    block = _block(config)
    model_type = block.get("base_model_type") or getattr(config, "model_type", None)
    if getattr(config, "model_type", None) != MODEL_TYPE and model_type == getattr(config, "model_type", None):
        return config  # already the original config
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"transformers {transformers.__version__} does not know model_type {model_type!r}, the "
                         "architecture this model was compressed from; install the version sdcompress used")
    fields = {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "model_type", "architectures")}
    fields["architectures"] = [block["base_class"]] if block.get("base_class") else None
    return transformers.CONFIG_MAPPING[model_type].from_dict(fields)


def _base_class(config: Any, block: dict[str, Any]) -> type:
    """The original architecture: the recorded class, else the causal-LM class of ``model_type``."""
    import transformers

    cls = getattr(transformers, str(block.get("base_class")), None)
    if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
        return cls
    try:
        return transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError as exc:
        raise ValueError(f"transformers {transformers.__version__} has no causal-LM class for model_type "
                         f"{getattr(config, 'model_type', None)!r} (recorded class {block.get('base_class')!r})") from exc


def _device(device_map: Any) -> torch.device:
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, (str, int, torch.device)):
        return torch.device(device_map)
    raise ValueError(f"device_map {device_map!r} is not supported for sdcompress models; pass one device "
                     "('cpu', 'cuda', 'cuda:0') or 'auto'")


def _save_pretrained(self: PreTrainedModel, save_directory: Any, *args: Any, **kwargs: Any) -> None:
    """The original class's ``save_pretrained`` (the layers' stored form goes into the
    weights), then this file beside them and config.json's entry point restored."""
    import json
    import os
    import shutil

    super(type(self), self).save_pretrained(save_directory, *args, **kwargs)
    shutil.copyfile(__file__, os.path.join(save_directory, os.path.basename(__file__)))
    path = os.path.join(save_directory, "config.json")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    module = __name__.rsplit(".", 1)[-1]
    config["architectures"] = [SdcompressForCausalLM.__name__]
    config["auto_map"] = {"AutoConfig": f"{module}.{SdcompressConfig.__name__}",
                          "AutoModelForCausalLM": f"{module}.{SdcompressForCausalLM.__name__}"}
    config["model_type"] = MODEL_TYPE
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_IGNORED = ("trust_remote_code", "_from_auto", "adapter_kwargs", "code_revision", "low_cpu_mem_usage", "use_safetensors")


class SdcompressForCausalLM(PreTrainedModel):
    """Entry point named in config.json's ``auto_map`` (see the module docstring).

    :meth:`from_pretrained` returns an instance of ``Sdcompress<BaseClass>``, a subclass
    of the original architecture (``SdcompressGPT2LMHeadModel`` …) whose compressed
    layers are the stored ones; ``generate()`` and everything else of the original class
    work unchanged.
    """

    config_class = SdcompressConfig

    @classmethod
    def compressed_class(cls, base: type) -> type:
        """``Sdcompress<base>``: the original class holding the stored layers, whose
        ``save_pretrained`` writes a folder this file loads again (:func:`_save_pretrained`)."""
        return type(f"Sdcompress{base.__name__}", (base,),
                    {"__module__": __name__, "__doc__": base.__doc__, "save_pretrained": _save_pretrained})

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> PreTrainedModel:
        """The original architecture with empty stored layers (what ``from_config`` gives).

        Args:
            config: a config with the ``sdcompress`` block.
            **kwargs: ``dtype`` / ``torch_dtype`` (default: the stored dtype),
                ``attn_implementation`` (default ``"eager"``); other config attributes
                override the config.

        Raises:
            ValueError: not an sdcompress config, an unknown layer kind, or a layer name
                the architecture does not have.
        """
        config = base_config(config)
        block = _block(config)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or block.get("dtype") or "float32"
        kwargs.pop("torch_dtype", None)
        if dtype == "auto":
            dtype = block.get("dtype") or "float32"
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        attn = kwargs.pop("attn_implementation", "eager")
        for key, value in kwargs.items():
            if hasattr(config, key):
                setattr(config, key, value)
            else:
                logger.warning("ignoring option %r (not a config attribute)", key)
        base = _base_class(config, block)
        with torch.random.fork_rng(devices=[]):  # random init of the skeleton must not move the caller's RNG
            model = cls.compressed_class(base)._from_config(config, attn_implementation=attn)
        model.to(dtype)
        modules = dict(model.named_modules())
        for name, spec in block["layers"].items():
            if name not in modules:
                raise ValueError(f"compressed layer {name!r} is not a module of {base.__name__}; the config.json "
                                 "does not match this transformers version's architecture")
            model.set_submodule(name, build_layer(spec, dtype))
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, config: Any = None,
                        **kwargs: Any) -> PreTrainedModel:
        """Build the original architecture with the stored compressed layers and load the weights.

        Args:
            pretrained_model_name_or_path: the model folder (or a hub repository).
            config: the loaded config (``AutoModelForCausalLM`` passes it).
            **kwargs: ``dtype`` / ``torch_dtype`` (cast float tensors; integers stay
                integers), ``device_map`` (one device or ``"auto"``),
                ``attn_implementation`` (default ``"eager"``, as sdcompress uses), the hub
                options (``revision``, ``cache_dir`` …); other config attributes override
                the config, as in transformers.

        Returns:
            The model in eval mode.

        Raises:
            ValueError: not an sdcompress config, an unknown layer kind, or weights that do
                not match the layers.
        """
        from safetensors.torch import load_model
        from transformers.utils import cached_file

        if model_args:
            raise ValueError("positional model arguments are not supported for sdcompress models")
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        for k in _IGNORED:
            kwargs.pop(k, None)
        if config is None:
            config = SdcompressConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        block = _block(config)
        device = _device(kwargs.pop("device_map", None))
        model = cls._from_config(config, **kwargs)
        weights = cached_file(pretrained_model_name_or_path, WEIGHTS_FILE, **hub)
        try:
            load_model(model, weights, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights in {weights} do not match the compressed layers in config.json: {str(exc)[:400]}") from exc
        model.to(device)
        return model.eval()
