"""Datasets from local files (text, JSON lines, CSV, Parquet) and from the hub.

Files are read with the ``datasets`` library. A dataset with a text column becomes a
language-modelling dataset (tokenised by the model's tokenizer, or byte-level when none
is given) cut into fixed-length blocks; a dataset with a label column and numeric
feature columns becomes a classification dataset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdcompress.data.builtin import EOS_ID, PYDOC_VOCAB_SIZE
from sdcompress.data.core import ArrayDataset, DatasetBundle
from sdcompress.errors import DataError, OfflineError
from sdcompress.hub import hub_offline_mode, hub_reachable

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(test_fraction * n)))
    if n - n_test < 1:
        raise DataError(f"only {n} examples: too few for a train/test split with test_fraction={test_fraction}")
    return perm[n_test:], perm[:n_test]


def _tokens(texts: list[str], tokenizer: Any | None) -> tuple[list[int], int]:
    """Concatenated token ids of ``texts`` (EOS after each) and the vocabulary size."""
    ids: list[int] = []
    if tokenizer is None:
        for t in texts:
            ids.extend(t.encode("utf-8"))
            ids.append(EOS_ID)
        return ids, PYDOC_VOCAB_SIZE
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(t)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return ids, len(tokenizer)


def _blocks(ids: list[int], block_size: int, where: str) -> torch.Tensor:
    n = len(ids) // block_size
    if n == 0:
        raise DataError(f"{where} has {len(ids)} tokens, fewer than one block of {block_size}; use a smaller block_size")
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def from_hf_dataset(
    ds: Any,
    name: str,
    *,
    tokenizer: Any | None = None,
    block_size: int = 64,
    text_column: str = "text",
    label_column: str = "label",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetBundle:
    """Turn a ``datasets.DatasetDict`` into a :class:`DatasetBundle`.

    Uses its ``test`` split (or ``validation``) when present, otherwise a seeded split
    of ``train`` (by text for language modelling, by row for classification).
    """
    splits = dict(ds)
    train_raw = splits.get("train") or next(iter(splits.values()))
    test_raw = splits.get("test") or splits.get("validation")
    columns = train_raw.column_names
    if text_column in columns:
        texts = [t for t in train_raw[text_column] if t and t.strip()]
        if test_raw is None:
            tr, te = _split(len(texts), test_fraction, seed)
            train_texts, test_texts = [texts[i] for i in tr], [texts[i] for i in te]
        else:
            train_texts = texts
            test_texts = [t for t in test_raw[text_column] if t and t.strip()]
        train_ids, vocab = _tokens(train_texts, tokenizer)
        test_ids, _ = _tokens(test_texts, tokenizer)
        return DatasetBundle(
            name=name,
            train=ArrayDataset({"input_ids": _blocks(train_ids, block_size, f"{name} (train)")}, task="lm"),
            test=ArrayDataset({"input_ids": _blocks(test_ids, block_size, f"{name} (test)")}, task="lm"),
            info={"vocab_size": vocab, "block_size": block_size, "tokenizer": "bytes" if tokenizer is None else getattr(tokenizer, "name_or_path", "?")},
        )
    if label_column in columns:
        features = [c for c in columns if c != label_column]

        def arrays(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                x = np.stack([np.asarray(split[c], dtype=np.float32) for c in features], axis=1)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{name}: feature columns {features} must all be numeric ({exc})") from exc
            return torch.from_numpy(x), torch.as_tensor(np.asarray(split[label_column]), dtype=torch.long)

        x, y = arrays(train_raw)
        if test_raw is None:
            tr, te = _split(len(x), test_fraction, seed)
            x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        else:
            (x_tr, y_tr), (x_te, y_te) = (x, y), arrays(test_raw)
        n_classes = int(max(y_tr.max(), y_te.max())) + 1
        return DatasetBundle(
            name=name,
            train=ArrayDataset({"inputs": x_tr, "targets": y_tr}, task="classification"),
            test=ArrayDataset({"inputs": x_te, "targets": y_te}, task="classification"),
            info={"input_dim": len(features), "n_classes": n_classes},
        )
    raise DataError(
        f"{name} has columns {columns}: expected a text column {text_column!r} (language modelling) "
        f"or a label column {label_column!r} (classification); pass text_column= or label_column="
    )


def load_local(path: str | Path, **kwargs: Any) -> DatasetBundle:
    """Load a local data file (or a folder of same-type files) through ``datasets``."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist; check the path or use a built-in dataset (pydoc, digits, modular)")
    files = sorted(p for p in path.iterdir() if p.suffix in _BUILDERS) if path.is_dir() else [path]
    suffixes = {p.suffix for p in files}
    if not files or len(suffixes) != 1 or files[0].suffix not in _BUILDERS:
        raise DataError(
            f"cannot read {str(path)!r}: expected files ending in one of {sorted(_BUILDERS)} (found {sorted(suffixes) or 'none'})"
        )
    builder = _BUILDERS[files[0].suffix]
    # a throw-away datasets cache: the rows end up in tensors anyway, and a shared cache
    # would keep an Arrow copy and lock files of every file ever read (also of failed reads)
    from datasets.utils import logging as ds_logging

    verbosity, bars = ds_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    with tempfile.TemporaryDirectory(prefix="sdcompress-datasets-") as cache:
        try:  # datasets logs a parse error itself before raising: our one line says it instead
            ds_logging.set_verbosity(ds_logging.CRITICAL)
            datasets.disable_progress_bars()
            ds = datasets.load_dataset(builder, data_files={"train": [str(f) for f in files]}, cache_dir=cache,
                                       keep_in_memory=True)
        except Exception as exc:  # datasets and pyarrow raise many types on malformed files
            raise DataError(f"cannot read {str(path)!r} as {builder.upper() if builder == 'csv' else builder}: "
                            f"{_root_cause(exc)}; fix the file or pass another --dataset") from exc
        finally:
            ds_logging.set_verbosity(verbosity)
            if bars:
                datasets.enable_progress_bars()
        return from_hf_dataset(ds, str(path), **kwargs)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's message on one line (datasets wraps parser errors twice)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def load_hub(name: str, **kwargs: Any) -> DatasetBundle:
    """Load ``name`` or ``name:config`` from the Hugging Face hub (or its cache).

    Raises:
        OfflineError: the hub is unreachable and the dataset is not cached.
    """
    import datasets

    repo, _, config = name.partition(":")
    advice = (
        f"dataset {name!r} is not built in, not a local path, and the Hugging Face hub is unreachable: "
        "download it on a connected machine and pass the local file path"
        + (" (HF_HUB_OFFLINE=1 is set and it is not in the Hugging Face cache)" if hub_offline_mode()
           else " (or set HF_HUB_OFFLINE=1 if it is in the Hugging Face cache)")
    )
    if not hub_offline_mode() and not hub_reachable():
        raise OfflineError(advice)
    try:
        ds = datasets.load_dataset(repo, config or None)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as exc:
        if hub_offline_mode():
            raise OfflineError(advice) from exc
        raise DataError(f"could not load dataset {name!r} from the hub: {exc}") from exc
    return from_hf_dataset(ds, name, **kwargs)
