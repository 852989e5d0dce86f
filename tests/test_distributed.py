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


def test_recipe_under_accelerate_launch_equals_one_process(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 -m sdcompress recipe`` on CPU: two
    gloo processes, one run folder written by the main process, the single-process SD."""
    from sdcompress.recipe import run_recipe

    recipe = str(ROOT / "recipes" / "digits-mlp.yaml")
    shrink = ["--preset", "smoke", "--set", "model.options.widths=[64, 8, 10]"]
    env = launcher_env()
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the other process keeps its private copy
    (tmp_path / "tmp").mkdir()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sdcompress"]
    proc = subprocess.run(
        [*launch, "recipe", recipe, *shrink, "--output-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data parallel over 2 processes (gloo backend" in proc.stderr
    assert proc.stdout.count("run folder:") == 1  # one summary: only the main process reports
    assert not list((tmp_path / "tmp").glob("sdcompress-rank*"))  # the other process's private copy is gone
    run_recipe(recipe, ["model.options.widths=[64, 8, 10]", f"output.dir={tmp_path / 'one'}"], presets=["smoke"])
    one, two = (json.loads((tmp_path / d / "estimates.json").read_text()) for d in ("one", "two"))
    assert one["d"] == two["d"] == 592 and one["n_hvp"] == two["n_hvp"]
    assert two["sd"] == pytest.approx(one["sd"], rel=1e-6)  # float32 model: sums in another order
    np.testing.assert_allclose(two["exponents"], one["exponents"], rtol=1e-5, atol=1e-6)
    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert r2["params_after"] == r1["params_after"] and r2["test_loss_after"] == pytest.approx(r1["test_loss_after"], rel=1e-6)
