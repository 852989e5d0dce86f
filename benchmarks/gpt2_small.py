"""Make a GPT-2-small model folder, and a local Hugging Face hub cache holding it as ``gpt2``.

No network: the model is ``GPT2LMHeadModel(GPT2Config())`` (124,439,808 parameters, the
published GPT-2-small shape, random weights, eager attention), written with
``save_pretrained``. The cache uses the hub's own layout, so that with
``HF_HUB_OFFLINE=1 HF_HUB_CACHE=CACHE`` the name ``gpt2`` loads from it::

    CACHE/models--gpt2/refs/main                    the revision (a commit-like hash)
    CACHE/models--gpt2/snapshots/<rev>/config.json  the files save_pretrained wrote
    CACHE/models--gpt2/snapshots/<rev>/model.safetensors

Run::

    python benchmarks/gpt2_small.py --folder /tmp/gpt2-small --cache /tmp/hf-cache
    HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/hf-cache sdcompress gpt2 --dataset pydoc --target-rank auto

(the real ``gpt2`` from a cache filled on a connected machine works the same way).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any


def make_model_folder(folder: str | Path, *, seed: int = 0, **config: Any) -> Path:
    """``save_pretrained`` a GPT-2 (``GPT2Config(**config)``: GPT-2 small by default) to ``folder``.

    Args:
        folder: where to write (created; files in it are replaced).
        seed: initialisation seed.
        **config: ``GPT2Config`` fields to change (e.g. ``n_layer=1`` for tests).

    Returns:
        The folder.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(attn_implementation="eager", **config))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    return folder


def make_hub_cache(folder: str | Path, cache: str | Path, repo: str = "gpt2") -> Path:
    """Copy a ``save_pretrained`` folder into a hub cache as model ``repo`` (layout in the module docstring).

    Returns:
        The snapshot folder.
    """
    folder, cache = Path(folder), Path(cache)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    h = hashlib.sha1()
    for p in files:
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    rev = h.hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copy2(p, snap / p.name)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    return snap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/gpt2-small", help="where save_pretrained writes the model")
    parser.add_argument("--cache", default=None, help="also build a hub cache here holding the folder as 'gpt2'")
    args = parser.parse_args(argv)
    folder = make_model_folder(args.folder)
    print(f"GPT-2 small written to {folder}")
    if args.cache:
        snap = make_hub_cache(folder, args.cache)
        print(f"hub cache: {snap}; use HF_HUB_OFFLINE=1 HF_HUB_CACHE={args.cache} sdcompress gpt2 ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
