"""``sdcompress estimate``: outputs, defaults from a training run, refusals before writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompress.cli.main import main
from sdcompress.estimator import SDEstimate, sharpness_dimension


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train") / "run"
    code = main(["train", "mlp", "--steps", "40", "--lr", "0.3", "--weight-decay", "0.02", "--log-every", "20",
                 "--output-dir", str(folder), "-q"])
    assert code == 0
    return folder


def test_estimate_from_a_training_run_writes_estimates_and_plots(train_run, tmp_path, capsys):
    out = tmp_path / "est"
    code = main(["estimate", "--from-run", str(train_run), "--method", "ps", "--slq-runs", "4", "--lanczos-steps", "12",
                 "--output-dir", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["density.png", "estimates.json", "exponents.png"]
    est = SDEstimate.load(out)
    assert est.method == "ps" and est.d == 64 * 16 + 16 * 16 + 16 * 10
    assert est.lr == 0.3 and est.weight_decay == 0.02  # taken from the training run
    assert est.n_hvp == 4 * 12
    assert est.sd == pytest.approx(sharpness_dimension(est.exponents, est.weights))
    assert est.extras["dataset"] == "digits" and est.extras["batch_size"] == 64
    assert "SD (ps)" in capsys.readouterr().out


def test_estimate_a_builtin_uses_its_cached_eos_model_and_a_param_subset(tmp_path):
    out = tmp_path / "exact"
    code = main(["estimate", "mlp", "--method", "exact", "--n-batches", "2", "--params", "layers.2", "--lr", "0.2",
                 "--weight-decay", "0", "--output-dir", str(out), "-q"])
    assert code == 0
    data = json.loads((out / "estimates.json").read_text())
    assert data["method"] == "exact" and data["d"] == 16 * 10 and data["params"] == ["layers.2"]
    assert data["weight_decay"] == 0.0 and "cached EoS training" in data["extras"]["model_source"]
    assert len(data["exponents"]) == 160 and np.all(np.diff(data["exponents"]) <= 1e-12)
    assert (out / "exponents.png").is_file() and not (out / "density.png").exists()


def test_bad_input_stops_before_anything_is_written(train_run, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["estimate", "--from-run", str(train_run), "--lr", "-1", "--output-dir", str(out)]) == 2
    assert "--lr must be a finite number > 0, got -1.0" in capsys.readouterr().err
    assert main(["estimate", "--from-run", str(train_run), "--params", "nothing.here", "--output-dir", str(out)]) == 2
    assert "matches no parameter" in capsys.readouterr().err
    assert main(["estimate", "--from-run", str(tmp_path), "--output-dir", str(out)]) == 2
    assert "no train_log.json" in capsys.readouterr().err
    assert main(["estimate", "--output-dir", str(out)]) == 2
    assert "give a MODEL" in capsys.readouterr().err
    assert main(["estimate", "--from-run", str(train_run), "--slq-runs", "0", "--output-dir", str(out)]) == 2
    assert "--slq-runs must be an integer ≥ 1, got 0" in capsys.readouterr().err
    assert not out.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something.txt").write_text("x")
    assert main(["estimate", "--from-run", str(train_run), "--output-dir", str(taken)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["something.txt"]
