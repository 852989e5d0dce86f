"""Training checkpoints: one safetensors file holding everything a resumed run needs.

``checkpoint.safetensors`` holds the model's parameters and buffers, the optimizer's
momentum buffers (SGD keeps nothing else), and in its metadata the step, the run's
fingerprint and the log so far. One file, written to a temporary name and renamed, so a
checkpoint is either the old one or the new one, never a mixture. No pickles.

Resuming restores exactly these tensors; because the minibatch at step t is a pure
function of (seed, t) (:class:`sdcompress.data.BatchStream`), the resumed run replays
the same steps and ends at the same weights bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdcompress.errors import ConfigError
from sdcompress.io import set_default_modes

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "sdcompress-train-checkpoint/1"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says.

    Attributes:
        step: number of SGD steps taken (the weights are w_step).
        fingerprint: hash of everything that decides the trajectory and its log.
        records: log records of the steps before ``step``.
    """

    step: int
    fingerprint: str
    records: list[dict[str, Any]]


def save_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, fingerprint: str, records: list[dict[str, Any]]
) -> Path:
    """Write the checkpoint atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    # named_parameters() lists a tied weight once (GPT-2's wte / lm_head); copying into it
    # on load restores both.
    for name, p in model.named_parameters():
        tensors[f"param/{name}"] = p.detach().contiguous()
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum/{name}"] = buf.detach().contiguous()
    for name, b in model.named_buffers():
        tensors[f"buffer/{name}"] = b.detach().contiguous()
    meta = {"format": FORMAT, "step": str(step), "fingerprint": fingerprint, "records": json.dumps(records)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        set_default_modes(tmp)  # mkstemp and safetensors make 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint_info(path: str | Path) -> CheckpointInfo | None:
    """The checkpoint's metadata without loading tensors; ``None`` when there is none.

    Raises:
        ConfigError: the file exists but is not a checkpoint of this format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise ConfigError(f"{path} is not a readable checkpoint ({exc}); delete it or pass --overwrite") from exc
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an sdcompress training checkpoint (format {meta.get('format')!r}); delete it or pass --overwrite")
    return CheckpointInfo(int(meta["step"]), meta["fingerprint"], json.loads(meta["records"]))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> CheckpointInfo:
    """Copy the checkpoint's tensors into ``model`` and ``optimizer`` (in place).

    Raises:
        ConfigError: the checkpoint does not fit the model (missing or misshapen tensors).
    """
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    if info is None:
        raise ConfigError(f"no checkpoint at {path}")
    device = next(model.parameters()).device
    tensors = load_file(str(path), device=str(device))
    with torch.no_grad():
        for kind, named in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, t in named:
                saved = tensors.get(f"{kind}/{name}")
                if saved is None or saved.shape != t.shape:
                    raise ConfigError(f"checkpoint {path} does not fit the model ({kind} {name!r}); delete it or pass --overwrite")
                t.copy_(saved)
        for name, p in model.named_parameters():
            buf = tensors.get(f"momentum/{name}")
            if buf is not None:
                optimizer.state[p]["momentum_buffer"] = buf.to(dtype=p.dtype).clone()
    return info
