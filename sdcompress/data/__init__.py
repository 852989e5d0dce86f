"""Data: built-in offline datasets, local files, hub datasets, and the seeded stream ω."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompress.data.builtin import BUILTIN_DATASETS, digits, modular, pydoc
from sdcompress.data.core import ArrayDataset, Batch, DatasetBundle, batch_size_of, move_batch
from sdcompress.data.files import from_hf_dataset, load_hub, load_local
from sdcompress.data.stream import BatchStream
from sdcompress.errors import DataError

__all__ = [
    "ArrayDataset",
    "Batch",
    "BatchStream",
    "BUILTIN_DATASETS",
    "DatasetBundle",
    "batch_size_of",
    "digits",
    "from_hf_dataset",
    "load_data",
    "modular",
    "move_batch",
    "pydoc",
]


def load_data(name_or_path: str, **kwargs: Any) -> DatasetBundle:
    """Load a dataset by built-in name, local path, or hub name.

    Args:
        name_or_path: ``"pydoc"``, ``"digits"``, ``"modular"``, a local file or folder
            (text, JSON lines, CSV, Parquet), or a hub name (``"wikitext:wikitext-2-raw-v1"``).
        **kwargs: options of the loader (``block_size``, ``seed``, ``train_fraction``,
            ``tokenizer``, ...). Built-in loaders ignore options they do not take.

    Raises:
        DataError: the name is unknown or the file cannot be read.
        OfflineError: a hub name while the hub is unreachable.
    """
    if name_or_path in BUILTIN_DATASETS:
        import inspect

        fn = BUILTIN_DATASETS[name_or_path]
        accepted = inspect.signature(fn).parameters
        return fn(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
    local_keys = {"tokenizer", "block_size", "text_column", "label_column", "test_fraction", "seed"}
    local_kwargs = {k: v for k, v in kwargs.items() if k in local_keys and v is not None}
    if Path(name_or_path).exists() or "/" in name_or_path and Path(name_or_path).suffix:
        return load_local(name_or_path, **local_kwargs)
    if name_or_path.startswith((".", "/", "~")) or Path(name_or_path).suffix in {".txt", ".csv", ".json", ".jsonl", ".parquet"}:
        raise DataError(f"dataset path {name_or_path!r} does not exist; check the path")
    return load_hub(name_or_path, **local_kwargs)
