"""Built-in offline datasets: ``pydoc``, ``digits``, ``modular`` and ``stdlib``.

None of them touches the network: ``pydoc`` is the English documentation text shipped
with every CPython (``pydoc_data.topics``), ``digits`` ships with scikit-learn, and
``modular`` is generated and ``stdlib`` is the running Python's own standard-library source.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sdcompress.data.core import ArrayDataset, DatasetBundle
from sdcompress.errors import ConfigError

BYTE_VOCAB = 256
EOS_ID = 256  # separates pydoc topics; the byte vocabulary plus one
PYDOC_VOCAB_SIZE = BYTE_VOCAB + 1


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be strictly between 0 and 1, got {value}")


def byte_blocks(texts: list[str], block_size: int) -> torch.Tensor:
    """Byte-level tokens of ``texts`` (each followed by EOS), cut into full blocks.

    Returns:
        LongTensor of shape (n_blocks, block_size).
    """
    if block_size < 2:
        raise ConfigError(f"block_size must be ≥ 2, got {block_size}")
    ids: list[int] = []
    for text in texts:
        ids.extend(text.encode("utf-8"))
        ids.append(EOS_ID)
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def _is_test_topic(topic: str, test_fraction: float) -> bool:
    # A stable hash of the topic name, so the split never depends on dict order or
    # on PYTHONHASHSEED.
    h = int.from_bytes(hashlib.sha256(topic.encode()).digest()[:8], "big")
    return h / 2**64 < test_fraction


def pydoc(block_size: int = 64, test_fraction: float = 0.15) -> DatasetBundle:
    """CPython's ``pydoc_data.topics`` as byte-level language-modelling blocks.

    Topics are split into train and test by a stable hash of the topic name (so no
    block of a test topic is ever trained on).

    Args:
        block_size: tokens per block (the model's context length).
        test_fraction: expected fraction of topics held out.
    """
    from pydoc_data.topics import topics

    _check_fraction("test_fraction", test_fraction)
    names = sorted(topics)
    test_names = [t for t in names if _is_test_topic(t, test_fraction)]
    train_names = [t for t in names if not _is_test_topic(t, test_fraction)]
    train = byte_blocks([topics[t] for t in train_names], block_size)
    test = byte_blocks([topics[t] for t in test_names], block_size)
    return DatasetBundle(
        name="pydoc",
        train=ArrayDataset({"input_ids": train}, task="lm"),
        test=ArrayDataset({"input_ids": test}, task="lm"),
        info={
            "vocab_size": PYDOC_VOCAB_SIZE,
            "block_size": block_size,
            "eos_id": EOS_ID,
            "train_topics": len(train_names),
            "test_topics": len(test_names),
            "split": f"by sha256(topic) < {test_fraction}",
        },
    )


def digits(train_fraction: float = 0.5, seed: int = 0) -> DatasetBundle:
    """scikit-learn's 8×8 handwritten digits (1,797 images, pixels scaled to [0, 1]).

    Args:
        train_fraction: fraction of images in the training split.
        seed: fixes the (stratified) split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_fraction("train_fraction", train_fraction)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, train_size=train_fraction, random_state=seed, stratify=y
    )

    def make(xs: np.ndarray, ys: np.ndarray) -> ArrayDataset:
        return ArrayDataset(
            {"inputs": torch.from_numpy(xs), "targets": torch.from_numpy(ys).long()},
            task="classification",
        )

    return DatasetBundle(
        name="digits",
        train=make(x_tr, y_tr),
        test=make(x_te, y_te),
        info={"input_dim": 64, "n_classes": 10, "train_fraction": train_fraction, "seed": seed},
    )


def modular(p: int = 97, train_fraction: float = 0.4, seed: int = 0) -> DatasetBundle:
    """All pairs (a, b) in [0, p)² labelled (a + b) mod p, as in grokking studies.

    Inputs are the integer pairs, shape (N, 2); the ``modular-mlp`` model one-hot
    encodes them.

    Args:
        p: the modulus (number of classes).
        train_fraction: fraction of the p² pairs used for training.
        seed: fixes which pairs are in the training split.
    """
    if p < 2:
        raise ConfigError(f"modulus p must be ≥ 2, got {p}")
    _check_fraction("train_fraction", train_fraction)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(pairs), generator=g)
    n_train = int(round(train_fraction * len(pairs)))
    tr, te = perm[:n_train], perm[n_train:]
    return DatasetBundle(
        name="modular",
        train=ArrayDataset({"inputs": pairs[tr], "targets": labels[tr]}, task="classification"),
        test=ArrayDataset({"inputs": pairs[te], "targets": labels[te]}, task="classification"),
        info={"p": p, "n_classes": p, "input_dim": 2 * p, "train_fraction": train_fraction, "seed": seed},
    )


def stdlib(block_size: int = 64, test_fraction: float = 0.15, max_bytes: int = 2_000_000) -> DatasetBundle:
    """The running Python's own standard-library source as byte-level language-modelling blocks.

    A larger offline text than ``pydoc`` (about 4.7 MB of top-level ``Lib/*.py`` on CPython
    3.11), for models on which compression costs something. Files are the top-level
    ``*.py`` of ``sysconfig.get_paths()["stdlib"]`` in sorted order, taken until
    ``max_bytes`` bytes; train and test are split by a stable hash of the file name (so no
    block of a test file is ever trained on). The text depends on the Python version, so
    ``info`` records it.

    Args:
        block_size: tokens per block (the model's context length).
        test_fraction: expected fraction of files held out.
        max_bytes: at most this many bytes of source are read (whole files).

    Raises:
        ConfigError: a fraction outside (0, 1) or a non-positive ``max_bytes``.
    """
    import sys
    import sysconfig
    from pathlib import Path

    _check_fraction("test_fraction", test_fraction)
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: dict[str, str] = {}
    used = 0
    for f in sorted(root.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        size = len(text.encode("utf-8"))
        if used + size > max_bytes:
            continue
        texts[f.name] = text
        used += size
    test_names = [n for n in texts if _is_test_topic(n, test_fraction)]
    train_names = [n for n in texts if not _is_test_topic(n, test_fraction)]
    return DatasetBundle(
        name="stdlib",
        train=ArrayDataset({"input_ids": byte_blocks([texts[n] for n in train_names], block_size)}, task="lm"),
        test=ArrayDataset({"input_ids": byte_blocks([texts[n] for n in test_names], block_size)}, task="lm"),
        info={
            "vocab_size": PYDOC_VOCAB_SIZE,
            "block_size": block_size,
            "eos_id": EOS_ID,
            "train_files": len(train_names),
            "test_files": len(test_names),
            "bytes": used,
            "python": sys.version.split()[0],
            "split": f"by sha256(file name) < {test_fraction}",
        },
    )


BUILTIN_DATASETS = {"pydoc": pydoc, "digits": digits, "modular": modular, "stdlib": stdlib}
