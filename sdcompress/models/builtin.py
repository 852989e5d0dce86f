"""Built-in models: ``tiny-gpt2``, ``mlp`` and ``modular-mlp``.

``tiny-gpt2`` is a real ``transformers`` GPT-2 (so everything that works on it works on
``gpt2``), shrunk to train at the edge of stability on two CPU cores in minutes. The
MLPs follow the paper's designs (PAPER.md §4): a no-bias ReLU MLP for digit images and
a one-hidden-layer MLP on one-hot (a, b) pairs for grokking. All use no dropout, so a
model in training mode is still a deterministic function of its parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.errors import ConfigError, ModelError

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def tiny_gpt2_config(
    vocab_size: int = 257,
    block_size: int = 64,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
) -> Any:
    """GPT2Config of the built-in ``tiny-gpt2`` (≈ 35k parameters with the defaults)."""
    from transformers import GPT2Config

    if n_embd % n_head:
        raise ConfigError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
        tie_word_embeddings=True,
    )


#: Constructor options of ``small-gpt2``: the built-in ``tiny-gpt2`` architecture at 4
#: layers × 32 wide (4 heads, ≈ 60k parameters with the byte vocabulary), trained on the
#: ``stdlib`` corpus (the Python standard library's own source) with η = 0.3, wd = 1e-3,
#: 4,000 steps (``benchmarks/compression.py``). Compression costs something on it (25%
#: uniform rank costs ≥ 0.1 nats, measured in ``results/compression/``) and it trains at
#: the edge of stability on one CPU core in minutes. Measured on the way: at 4 × 64 with
#: wd = 1e-2 the EoS run left layers 1–2 dead and the rest of rank < 16 (25% uniform rank
#: cost nothing), and 4 × 64 with wd = 1e-3 still cost nothing after 1,000 steps. Pass it
#: as ``model_options`` of ``tiny-gpt2``.
SMALL_GPT2 = {"n_layer": 4, "n_embd": 32, "n_head": 4}


def tiny_gpt2(seed: int = 0, **config: Any) -> nn.Module:
    """A freshly initialised ``tiny-gpt2`` with eager attention (see :func:`tiny_gpt2_config`)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(**config)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    return model


class _SavableModule(nn.Module):
    """Tiny ``save_pretrained`` / ``from_pretrained`` for the toolkit's own modules:
    ``config.json`` (with ``sdcompress_model``) plus ``model.safetensors``."""

    kind: str = ""  # subclasses set it and define ``config_dict()`` (constructor arguments)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"sdcompress_model": self.kind, **self.config_dict()}  # type: ignore[attr-defined]
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))


class MLP(_SavableModule):
    """Fully connected ReLU network ``widths[0] → … → widths[-1]``.

    The paper's MNIST models are this with ``bias=False`` (PAPER.md §4, settings 1–2).

    Args:
        widths: layer widths including input and output, e.g. (64, 16, 16, 10).
        bias: whether the linear layers have a bias.
    """

    kind = "mlp"

    def __init__(self, widths: tuple[int, ...] | list[int] = (64, 16, 16, 10), bias: bool = False) -> None:
        super().__init__()
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"mlp widths must be ≥ 2 positive integers, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.bias = bias
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(self.widths[:-1], self.widths[1:]))

    def config_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "bias": self.bias}

    def forward(self, x: Tensor) -> Tensor:  # (B, widths[0]) -> (B, widths[-1])
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class ModularMLP(_SavableModule):
    """One-hidden-layer MLP on one-hot (a, b) pairs, predicting (a + b) mod p.

    ``embed`` is the first linear layer applied to the concatenated one-hot codes of a
    and b (2p inputs); it is stored as an ``nn.Linear`` so compression sees it.

    Args:
        p: the modulus (input symbols and output classes).
        hidden: hidden width.
        activation: ``"gelu"`` (the paper's main grokking run) or ``"relu"``.
    """

    kind = "modular-mlp"

    def __init__(self, p: int = 97, hidden: int = 32, activation: Literal["gelu", "relu"] = "gelu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ConfigError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.p, self.hidden, self.activation, self.bias = p, hidden, activation, bias
        self.embed = nn.Linear(2 * p, hidden, bias=bias)
        self.out = nn.Linear(hidden, p, bias=bias)

    def config_dict(self) -> dict[str, Any]:
        return {"p": self.p, "hidden": self.hidden, "activation": self.activation, "bias": self.bias}

    def forward(self, pairs: Tensor) -> Tensor:  # (B, 2) long -> (B, p)
        one_hot = torch.cat([F.one_hot(pairs[:, 0], self.p), F.one_hot(pairs[:, 1], self.p)], dim=1)
        # the dtype of the first float parameter, not embed.weight: a compressed embed
        # (low-rank factors, quantized storage) has no .weight
        dtype = next(p.dtype for p in self.parameters() if p.is_floating_point())
        h = self.embed(one_hot.to(dtype))
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return self.out(h)


OWN_MODELS: dict[str, type[_SavableModule]] = {"mlp": MLP, "modular-mlp": ModularMLP}


def load_own_model(folder: Path) -> nn.Module:
    """Rebuild one of the toolkit's own modules from a ``save_pretrained`` folder."""
    from safetensors.torch import load_file

    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    kind = config.pop("sdcompress_model")
    if kind not in OWN_MODELS:
        raise ModelError(f"{folder}: unknown sdcompress model kind {kind!r}; known: {sorted(OWN_MODELS)}")
    model = OWN_MODELS[kind](**config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model
