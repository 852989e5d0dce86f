"""Export a compressed model folder for tools that do not know sdcompress.

Two formats:

- ``dense``: every compressed layer multiplied back into the original module
  (``CompressedLinear.to_original``: ``U @ V`` for low-rank, ``W ⊙ M`` for masks,
  ``q · scale`` for int8/int4, ``Conv1D`` transposed back), saved with the original
  class's ``save_pretrained``. The result loads with plain
  ``AutoModelForCausalLM.from_pretrained`` and no remote code and computes the same
  function as the compressed model (up to float rounding of the reordered products): it
  keeps the accuracy effect of compression, not the size (it is as large as the
  original).
- ``remote``: the compressed folder as stored (packed, small) with
  ``modeling_sdcompress.py`` and the ``auto_map`` entry refreshed from this sdcompress
  (:mod:`sdcompress.compress.hf_remote`); it loads with
  ``from_pretrained(..., trust_remote_code=True)`` and keeps both the accuracy effect and
  the size. Transformers causal LMs only.

Either is written to a temporary sibling folder and renamed into place. The source is a
folder written by ``save_compressed`` (a run's ``model/``) or a run folder holding one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sdcompress.compress.base import CompressedLinear
from sdcompress.compress.hf_remote import MODELING_FILE, is_causal_lm, strip_remote_config, write_remote_code
from sdcompress.compress.io import _replace_dir, load_compressed
from sdcompress.errors import CompressionError, ConfigError
from sdcompress.io import (
    check_output_dir,
    make_dirs,
    remove_created,
    set_default_modes,
    write_json_atomic,
    write_text_atomic,
)
from sdcompress.models.builtin import MODEL_CONFIG_FILE
from sdcompress.models.loader import COMPRESSION_FILE

logger = logging.getLogger(__name__)

ExportFormat = Literal["dense", "remote"]
FORMATS: dict[str, str] = {
    "dense": "original architecture, compressed weights multiplied back: loads with plain from_pretrained (no remote "
             "code); keeps the accuracy effect of compression, not the size",
    "remote": "the packed compressed folder with modeling_sdcompress.py: loads with from_pretrained(..., "
              "trust_remote_code=True) without sdcompress; keeps the accuracy effect and the size",
}
MODEL_DIR = "model"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        folder: the exported folder.
        format: ``"dense"`` or ``"remote"``.
        source: the compressed folder it came from.
        n_layers: compressed layers multiplied back (dense) or described (remote).
        max_abs_diff: dense only: largest |output difference| between the exported and
            the compressed model on a fixed probe input (``None`` for remote).
    """

    folder: Path
    format: str
    source: Path
    n_layers: int
    max_abs_diff: float | None = None


def compressed_model_dir(path: str | Path) -> Path:
    """The compressed model folder: ``path`` itself, or ``path/model`` of a run folder.

    Raises:
        CompressionError: ``path`` does not exist or holds no compressed model.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CompressionError(f"{str(path)!r} is not a folder; pass a run folder or its {MODEL_DIR}/ folder")
    for candidate in (path, path / MODEL_DIR):
        if (candidate / COMPRESSION_FILE).is_file():
            return candidate
    raise CompressionError(f"{str(path)!r} holds no compressed model (no {COMPRESSION_FILE} in it or in {MODEL_DIR}/); "
                           "pass a finished run folder or a folder written by save_compressed")


def densify_(model: nn.Module) -> int:
    """Replace every compressed layer of ``model`` by its original module with the dense
    weight (:meth:`CompressedLinear.to_original`), in place; returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, CompressedLinear)]
    for name in names:
        model.set_submodule(name, model.get_submodule(name).to_original())
    return len(names)


def _check_paths(source: Path, output: Path) -> None:
    src, out = source.resolve(), output.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise ConfigError(f"--output-dir {str(output)!r} overlaps the compressed model folder {str(source)!r}; "
                          "choose a folder outside it")


@torch.no_grad()
def _probe_diff(a: nn.Module, b: nn.Module, lm: bool) -> float:
    """Largest |a(x) − b(x)| on a fixed probe input (seeded tokens or features)."""
    gen = torch.Generator().manual_seed(0)
    p = next(a.parameters())
    if lm:
        config = a.config  # type: ignore[attr-defined]
        length = min(16, int(getattr(config, "n_positions", getattr(config, "max_position_embeddings", 16)) or 16))
        x = torch.randint(0, int(config.vocab_size), (2, length), generator=gen).to(p.device)
        return float((a(x).logits - b(x).logits).abs().max())
    if getattr(a, "kind", None) == "modular-mlp":  # (B, 2) symbol pairs
        x = torch.randint(0, int(a.p), (8, 2), generator=gen).to(p.device)  # type: ignore[attr-defined]
    else:
        first = next(m for m in a.modules() if isinstance(m, (nn.Linear, CompressedLinear)))
        x = torch.randn(4, first.in_features, generator=gen).to(device=p.device, dtype=p.dtype)
    return float((a(x) - b(x)).abs().max())


def export_model(
    source: str | Path,
    output: str | Path,
    fmt: ExportFormat = "dense",
    *,
    overwrite: bool = False,
    card: str | None = None,
) -> ExportResult:
    """Export a compressed folder as ``fmt`` (module docstring), all or nothing.

    Args:
        source: a compressed model folder or a run folder holding one in ``model/``.
        output: the folder to write.
        fmt: ``"dense"`` or ``"remote"``.
        overwrite: replace a non-empty ``output``.
        card: text of ``README.md`` (the model card) to write into the folder.

    Returns:
        An :class:`ExportResult`.

    Raises:
        CompressionError: no compressed model at ``source``; ``remote`` for a model
            that is not a transformers causal LM.
        ConfigError: an unknown format, or ``output`` overlapping ``source``.
        OutputExistsError: ``output`` is not empty and ``overwrite`` is false.
        OutputError: ``output`` is a regular file or cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {sorted(FORMATS)}")
    model_dir = compressed_model_dir(source)
    output = Path(output).expanduser()
    _check_paths(model_dir, output)
    check_output_dir(output, overwrite=overwrite)
    loaded = load_compressed(model_dir)
    model, lm = loaded.model, loaded.task == "lm"
    if fmt == "remote" and not is_causal_lm(model):
        raise CompressionError(f"{model_dir} holds a {type(model).__name__}, not a transformers causal LM: the remote "
                               "format is for AutoModelForCausalLM; use --format dense (or load it with sdcompress)")
    created = make_dirs(output.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        diff = None
        if fmt == "remote":
            for item in model_dir.iterdir():
                if item.is_file() and item.name not in (MODELING_FILE, CARD_FILE):
                    shutil.copy2(item, tmp / item.name)
            write_remote_code(tmp, model)  # the modeling file of this sdcompress, and config.json's entries
            n = sum(isinstance(m, CompressedLinear) for m in model.modules())
        else:
            dense = load_compressed(model_dir).model  # a second copy, so the compressed one stays to compare
            n = densify_(dense)
            if lm:
                dense.save_pretrained(tmp)
                write_json_atomic(tmp / MODEL_CONFIG_FILE, strip_remote_config(json.loads((tmp / MODEL_CONFIG_FILE).read_text())))
                if loaded.tokenizer is not None:
                    loaded.tokenizer.save_pretrained(tmp)
            else:
                dense.save_pretrained(tmp)  # the toolkit's own models: config.json + model.safetensors
            diff = _probe_diff(model.eval(), dense.eval(), lm)
        if card is not None:
            write_text_atomic(tmp / CARD_FILE, card)
        set_default_modes(tmp)  # mkdtemp and safetensors write 0700/0600: one mode for everything written
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise
    logger.info("exported %s (%d compressed layers) as %s to %s%s", model_dir, n, fmt, output,
                "" if diff is None else f"; max |output difference| on a probe input {diff:.2e}")
    return ExportResult(output, fmt, model_dir, n, diff)


__all__ = ["CARD_FILE", "FORMATS", "ExportFormat", "ExportResult", "compressed_model_dir", "densify_", "export_model"]
