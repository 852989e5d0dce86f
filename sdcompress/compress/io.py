"""Save and load compressed models.

A compressed model folder holds exactly three files (plus the remote-code file of a causal
LM, below, and a tokenizer's files when there is one):

- ``config.json``: the base model's config (``model.config.save_pretrained`` for
  transformers models; ``{"sdcompress_model": kind, ...}`` for the toolkit's MLPs);
- ``model.safetensors``: the weights as stored, packed integer tensors as integer
  dtypes (int8 values, uint8 int4 pairs, uint8 mask bitmaps), tied tensors once;
- ``sdcompress_compression.json``: the plan, the compression report, the base class and
  dtype, the versions of torch / transformers / safetensors / sdcompress, and ``extra``.

:func:`load_compressed` rebuilds the base architecture from ``config.json``, swaps in
the plan's module *structure* (no SVD, mask or quantization is recomputed), and loads
the stored tensors, so the outputs are those of the saved model.

A transformers causal LM's folder also holds ``modeling_sdcompress.py`` and an
``auto_map`` in ``config.json`` (:mod:`sdcompress.compress.hf_remote`), so that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` rebuilds it
without sdcompress. The toolkit never imports that file: :func:`load_compressed`
rebuilds the modules from ``sdcompress_compression.json``.
``model.save_pretrained(folder)`` on a compressed transformers model still writes its
tensors (the packed state dict), but not the plan needed to rebuild it; use
:func:`save_compressed`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdcompress.compress.apply import apply_structure_
from sdcompress.compress.hf_remote import strip_remote_config, write_remote_code
from sdcompress.compress.report import CompressionReport
from sdcompress.errors import CompressionError, PlanError
from sdcompress.io import check_output_dir, set_default_modes, write_json_atomic, write_text_atomic
from sdcompress.models.builtin import MODEL_CONFIG_FILE, OWN_MODELS, WEIGHTS_FILE
from sdcompress.models.loader import COMPRESSION_FILE, LoadedModel, check_safetensors, read_config_json
from sdcompress.plan.schema import Plan

FORMAT = "sdcompress-compressed"
FORMAT_VERSION = 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions recorded next to every saved artifact."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "sdcompress": _version("sdcompress"),
    }


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _base_kind(model: nn.Module) -> str:
    if getattr(model, "kind", None) in OWN_MODELS and hasattr(model, "config_dict"):
        return "sdcompress"
    if hasattr(getattr(model, "config", None), "save_pretrained"):
        return "transformers"
    raise CompressionError(
        f"cannot save a {type(model).__name__}: save_compressed knows transformers models and the toolkit's "
        f"built-ins ({', '.join(OWN_MODELS)}); save its state_dict yourself"
    )


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing an old one last."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def save_compressed(
    model: nn.Module,
    folder: str | Path,
    plan: Plan,
    report: CompressionReport | None = None,
    extra: dict[str, Any] | None = None,
    *,
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a compressed model folder (module docstring), all or nothing.

    Everything is written to a temporary sibling folder first and renamed into place.

    Args:
        model: the model after ``compress_(model, plan)``.
        folder: where to write.
        plan: the plan that was applied (needed to rebuild the structure).
        report: the report ``compress_`` returned, stored for the record.
        extra: any JSON-serialisable information to keep next to it.
        tokenizer: saved with ``tokenizer.save_pretrained`` when given.
        overwrite: replace a non-empty ``folder``.

    Returns:
        The folder.

    Raises:
        OutputExistsError: ``folder`` is not empty and ``overwrite`` is false.
        CompressionError: the model is neither a transformers model nor a built-in.
    """
    folder = Path(folder)
    check_output_dir(folder, overwrite=overwrite)
    kind = _base_kind(model)
    plan.validate()
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)
        if kind == "transformers":
            model.config.save_pretrained(tmp)  # type: ignore[union-attr]
            write_remote_code(tmp, model)  # causal LMs: modeling_sdcompress.py + auto_map (hf_remote)
        else:
            config = {"sdcompress_model": model.kind, **model.config_dict()}  # type: ignore[operator]
            write_text_atomic(tmp / MODEL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "sdcompress": FORMAT})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base": {"library": kind, "class": type(model).__name__, "dtype": str(_float_dtype(model)).removeprefix("torch.")},
            "plan": plan.to_dict(),
            "report": report.to_dict() if report is not None else None,
            "versions": versions(),
            "extra": extra or {},
        }
        write_json_atomic(tmp / COMPRESSION_FILE, meta)
        set_default_modes(tmp)  # safetensors writes 0600: one mode for everything written
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _build_base(folder: Path, base: dict[str, Any]) -> nn.Module:
    config = read_config_json(folder, CompressionError)
    if base.get("library") == "sdcompress":
        kind = config.pop("sdcompress_model", None)
        if kind not in OWN_MODELS:
            raise CompressionError(f"{folder}/{MODEL_CONFIG_FILE}: unknown sdcompress model kind {kind!r}; known: {sorted(OWN_MODELS)}")
        return OWN_MODELS[kind](**config)
    import transformers

    cls = getattr(transformers, str(base.get("class")), None)
    if cls is None or not hasattr(cls, "_from_config"):
        raise CompressionError(
            f"{folder}: base class {base.get('class')!r} is not a transformers model class in transformers "
            f"{transformers.__version__}; install the version recorded in {COMPRESSION_FILE}"
        )
    # the config is read here, not by AutoConfig.from_pretrained: config.json of a causal LM
    # carries auto_map and model_type "sdcompress" (remote code for plain transformers users,
    # see hf_remote), and the toolkit never runs it: strip_remote_config restores the original
    config = strip_remote_config(config)
    model_type = config.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise CompressionError(f"{folder}/{MODEL_CONFIG_FILE}: model_type {model_type!r} is not a transformers architecture "
                               f"in transformers {transformers.__version__}; install the version recorded in {COMPRESSION_FILE}")
    try:
        hf_config = transformers.CONFIG_MAPPING[model_type].from_dict(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CompressionError(f"{folder}/{MODEL_CONFIG_FILE} is not a valid {model_type} config ({exc}); "
                               "compress the model again") from exc
    model = cls._from_config(hf_config, attn_implementation="eager")
    return model.eval()  # as from_pretrained returns it


def load_compressed(folder: str | Path) -> LoadedModel:
    """Rebuild a model written by :func:`save_compressed`.

    Args:
        folder: the saved folder.

    Returns:
        A :class:`~sdcompress.models.loader.LoadedModel` (``source="local"``) whose
        ``info`` holds ``plan`` (:class:`Plan`), ``report``
        (:class:`CompressionReport` or ``None``) and ``compression`` (the raw JSON).

    Raises:
        CompressionError: not a compressed folder, corrupt metadata, or weights that do
            not match the plan.
        PlanError: the stored plan is invalid.
    """
    folder = Path(folder)
    meta_path = folder / COMPRESSION_FILE
    if not meta_path.is_file():
        raise CompressionError(f"{folder} has no {COMPRESSION_FILE}: it is not a compressed model folder; "
                               "load plain models with sdcompress.models.load_model")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CompressionError(f"cannot read {meta_path}: {exc}; the folder is damaged, compress the model again") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CompressionError(f"{meta_path} is not an sdcompress compression file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CompressionError(f"{meta_path} was written by a newer sdcompress (format {meta['format_version']}); upgrade sdcompress")
    try:
        plan = Plan.from_dict(meta.get("plan"))
    except PlanError as exc:
        raise PlanError(f"{meta_path}: {exc}") from exc
    report = CompressionReport.from_dict(meta["report"]) if meta.get("report") else None
    base = meta.get("base", {})
    for name in (MODEL_CONFIG_FILE, WEIGHTS_FILE):  # a missing file is reported as missing, not as a plan mismatch
        if not (folder / name).is_file():
            raise CompressionError(f"{folder} is missing {name}: the compressed model folder is incomplete; copy it again "
                                   "or compress the model again")
    check_safetensors(folder / WEIGHTS_FILE, CompressionError)  # truncated: named as such
    model = _build_base(folder, base)
    dtype = getattr(torch, str(base.get("dtype", "float32")), None)
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    apply_structure_(model, plan)
    from safetensors.torch import load_model

    try:
        load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    except (RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CompressionError(f"weights in {folder / WEIGHTS_FILE} do not match the stored plan: {detail}") from exc
    info = {"plan": plan, "report": report, "compression": meta}
    if base.get("library") == "sdcompress":
        return LoadedModel(model, str(folder), "classification", source="local", info=info)
    tokenizer = None
    if (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        # the original config: AutoTokenizer would otherwise read config.json's model_type "sdcompress"
        # and ask whether to run the folder's code (hf_remote); the toolkit never does
        tokenizer = AutoTokenizer.from_pretrained(str(folder), config=model.config, trust_remote_code=False)
    return LoadedModel(model, str(folder), "lm", loss_fn=None, tokenizer=tokenizer, source="local", info=info)
