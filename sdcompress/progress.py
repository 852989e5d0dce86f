"""Progress bars that follow the logging level: shown at INFO (the CLI's default),
hidden with ``--quiet`` or when the library is used without configuring logging."""

from __future__ import annotations

import logging
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_log = logging.getLogger("sdcompress")


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled unless the ``sdcompress`` logger is enabled for INFO."""
    enabled = _log.isEnabledFor(logging.INFO) and logging.getLogger().handlers != []
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)
