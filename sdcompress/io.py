"""Small file helpers: atomic writes and output-folder rules.

Nothing is ever half-written: files are written to a temporary name in the same folder
and renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from sdcompress.errors import OutputExistsError


def _jsonable(obj: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become strings; tensors become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (nan/inf stored as strings)."""
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def save_figure_atomic(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=kwargs.pop("dpi", 120), bbox_inches="tight", **kwargs)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def check_output_dir(path: str | Path, *, overwrite: bool = False, marker: str | None = None) -> Path:
    """Refuse an output folder that already holds results unless ``overwrite``.

    A folder is "taken" when it exists and is non-empty (or, with ``marker``, when it
    holds that file). Nothing is created here: callers create the folder only once all
    inputs are validated, so bad input never leaves a partial folder behind.

    Raises:
        OutputExistsError: the folder holds a run and ``overwrite`` is false.
    """
    path = Path(path)
    taken = path.exists() and (marker is None and any(path.iterdir()) or marker is not None and (path / marker).exists())
    if taken and not overwrite:
        raise OutputExistsError(f"output folder {str(path)!r} already holds a run; pass --overwrite or choose another --output-dir")
    return path
