"""Two processes on CPU (gloo, launched by torchrun with an Accelerator inside) give the
same SD and exponents as one process: the estimator's Hessian-vector products and
gradients are sharded over the minibatch and all-reduced (sdcompress.linalg.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def launcher_env() -> dict[str, str]:
    """Environment for a launched child: offline, one thread per process, the repo importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 ...`` with this interpreter (a free port each time)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def single() -> dict:
    sys.path.insert(0, str(TESTS))
    try:
        import distributed_worker
    finally:
        sys.path.remove(str(TESTS))
    return distributed_worker.estimate_all()


def test_two_gloo_processes_equal_one_process(tmp_path: Path, single: dict) -> None:
    out = tmp_path / "two.json"
    proc = subprocess.run(
        torchrun(str(TESTS / "distributed_worker.py"), str(out)),
        env=launcher_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["world_size"] == 2 and two["backend"] == "gloo"
    assert single["world_size"] == 1
    for method in ("ps", "lyapunov"):
        a, b = single[method], two[method]
        assert a["d"] == b["d"] == 740 and a["n_hvp"] == b["n_hvp"] > 0
        assert b["sd"] == pytest.approx(a["sd"], rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(b["exponents"], a["exponents"], rtol=1e-9, atol=1e-11)
    # the comparison has teeth: the estimates are not degenerate
    assert 0 < single["ps"]["sd"] < 740 and np.ptp(single["ps"]["exponents"]) > 0.1
    assert all(abs(x) > 1e-6 for x in single["lyapunov"]["exponents"])
