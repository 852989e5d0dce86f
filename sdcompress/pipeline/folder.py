"""The run folder: what a run writes, when a folder may be (re)used, and overwriting."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from sdcompress.errors import OutputExistsError
from sdcompress.io import LOCK_FILE

CONFIG_FILE = "config.json"
TRAINED_DIR, TRAIN_LOG_FILE, SGD_PHASE_DIR = "trained", "train_log.json", "sgd_phase"
ESTIMATES_FILE, LYAPUNOV_DIR = "estimates.json", "lyapunov"
EVAL_BEFORE_FILE, EVAL_AFTER_FILE = "evaluation_before.json", "evaluation_after.json"
PLAN_FILE, COMPRESSION_FILE, MODEL_DIR, TRIES_DIR = "plan.json", "compression.json", "model", "tries"
REPORT_FILE = "report.json"
PREFLIGHT_FILE = "preflight.json"
#: every name a run writes (``overwrite`` removes exactly these)
ARTIFACTS = (CONFIG_FILE, TRAINED_DIR, TRAIN_LOG_FILE, SGD_PHASE_DIR, ESTIMATES_FILE, LYAPUNOV_DIR,
             "lyapunov_subspace.safetensors", EVAL_BEFORE_FILE, EVAL_AFTER_FILE, PLAN_FILE, COMPRESSION_FILE,
             MODEL_DIR, TRIES_DIR, REPORT_FILE, "report.md", "modules.png", "loss.png", "exponents.png",
             "training.png", "resolved_recipe.yaml", PREFLIGHT_FILE)
#: config fields that may differ between a run and its resumption
#: (the folder itself is the run's identity, so its recorded path may differ after a move)
_RESUME_FREE = (("output", "overwrite"), ("output", "dir"), ("dry_run",), ("preflight",))


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    for path in _RESUME_FREE:
        node = cfg
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return cfg


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def prepare_folder(folder: Path, cfg_dict: dict[str, Any], overwrite: bool) -> bool:
    """Check the run folder; returns True when resuming. Creates nothing.

    Raises:
        OutputExistsError: a finished run without ``overwrite``; an unfinished run with a
            different config; a non-empty folder that is not a run folder.
    """
    if not folder.exists() or not any(p.name != LOCK_FILE for p in folder.iterdir()):
        return False
    if overwrite:
        return False
    if (folder / REPORT_FILE).exists():
        raise OutputExistsError(f"output folder {str(folder)!r} already holds a finished run; pass --overwrite or choose another --output-dir")
    if not (folder / CONFIG_FILE).exists():
        raise OutputExistsError(f"output folder {str(folder)!r} is not empty and holds no sdcompress run; choose another --output-dir")
    old = json.loads((folder / CONFIG_FILE).read_text())
    diff = _diff(_comparable(old), _comparable(cfg_dict))
    if diff:
        raise OutputExistsError(
            f"output folder {str(folder)!r} holds an unfinished run with a different config (differs in: {', '.join(diff[:6])}); "
            "rerun with the same settings to resume, pass --overwrite to start again, or choose another --output-dir"
        )
    return True


def clear_run(folder: Path) -> None:
    """Remove the files a run writes (and nothing else) from ``folder``, with the
    temporary names of unfinished writes (:func:`clear_leftovers`)."""
    for name in ARTIFACTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    clear_leftovers(folder)


def clear_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary names (``.NAME.*.tmp``, ``.NAME.old-PID``) of writes that a
    killed run left unfinished. Call only while holding the folder's lock: then no live
    process is writing them. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    stems = {Path(name).stem for name in ARTIFACTS} | set(ARTIFACTS)
    for path in folder.iterdir():
        name = path.name
        if not name.startswith(".") or name == LOCK_FILE:
            continue
        base = name[1:].split(".", 1)[0]
        temporary = name.endswith(".tmp") or ".old-" in name or ".tmp." in name
        if temporary and (base in stems or name[1:].startswith(tuple(ARTIFACTS))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


__all__ = [
    "ARTIFACTS", "COMPRESSION_FILE", "CONFIG_FILE", "ESTIMATES_FILE", "EVAL_AFTER_FILE", "EVAL_BEFORE_FILE", "LYAPUNOV_DIR",
    "MODEL_DIR", "PLAN_FILE", "REPORT_FILE", "SGD_PHASE_DIR", "TRAINED_DIR", "TRAIN_LOG_FILE", "TRIES_DIR", "clear_leftovers", "clear_run",
    "prepare_folder",
]
