"""Shared fixtures. Tests never touch the network: the hub is forced offline, and the
toolkit's cache points into a temporary folder."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["OMP_NUM_THREADS"] = "1"  # the CLI's thread policy reads it: in-process CLI runs stay at 1 thread
torch.set_num_threads(1)

# One throw-away cache per test session, set at import time so that session- and
# module-scoped fixtures use it too; pytest-xdist workers inherit it from the controller.
if "SDCOMPRESS_TEST_CACHE" not in os.environ:
    os.environ["SDCOMPRESS_TEST_CACHE"] = tempfile.mkdtemp(prefix="sdcompress-test-cache-")
os.environ["SDCOMPRESS_CACHE"] = os.environ["SDCOMPRESS_TEST_CACHE"]

