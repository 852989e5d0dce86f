"""Setting 2 (deep MLP, issue 12): the quick grid's files, its statistics against scipy
and the stats helpers on the written columns, the eos_ratio formula, the loss-target
two-pass training, resume, determinism and config errors."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from sdcompress.data import load_data
from sdcompress.errors import ConfigError
from sdcompress.experiments import deep_mlp
from sdcompress.experiments.common import bundle_as, load_config
from sdcompress.experiments.stats import granulated_kendall

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "experiments" / "deep_mlp.yaml"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep_mlp")
    cfg = load_config(deep_mlp.DeepMlpConfig, RECIPE).quick()
    return cfg, out, deep_mlp.run(cfg, out)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_recipe_is_the_defaults_and_loads_strictly():
    cfg = load_config(deep_mlp.DeepMlpConfig, RECIPE)
    assert cfg == deep_mlp.DeepMlpConfig()
    assert cfg.widths == [64, 200, 200, 200, 200, 10] and len(cfg.lrs) >= 4 and len(cfg.batch_sizes) >= 4 and len(cfg.seeds) >= 2
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(deep_mlp.DeepMlpConfig, RECIPE, ["epochz=3"])


def test_quick_csv_one_row_per_run_with_the_columns(quick):
    cfg, out, payload = quick
    rows = _csv(out / "deep_mlp_runs.csv")
    assert len(rows) == payload["n_runs"] == len(cfg.lrs) * len(cfg.batch_sizes) * len(cfg.seeds)
    assert {(float(r["lr"]), int(r["batch_size"]), int(r["seed"])) for r in rows} == \
        {(lr, b, s) for lr in cfg.lrs for b in cfg.batch_sizes for s in cfg.seeds}
    for col in ("seed", "lr", "batch_size", "eos_ratio", "steps", "sd_slq", "sd_kde", "sd_ps", "sd_over_d_slq", "lambda_1",
                "hess_top", "hess_trace", "acc_gap", "loss_gap", "train_acc", "test_acc", "d"):
        assert col in rows[0], col
    d = sum(a * b for a, b in zip(cfg.widths[:-1], cfg.widths[1:]))  # no bias
    assert all(int(r["d"]) == d for r in rows)
    for r in rows:  # the gaps are |train − test| of the written metrics (6 significant digits in the CSV)
        for gap, a, b in (("acc_gap", "train_acc", "test_acc"), ("loss_gap", "train_loss", "test_loss")):
            ta, tb = float(r[a]), float(r[b])
            assert float(r[gap]) == pytest.approx(abs(ta - tb), abs=1e-5 * (abs(ta) + abs(tb) + abs(ta - tb))), gap
    for name in ("deep_mlp_runs.json", "deep_mlp_table.json", "deep_mlp_table.md", "grid_measures_vs_gap.png"):
        assert (out / name).stat().st_size > 0, name


def test_quick_tau_and_psi_equal_references_on_the_written_columns(quick):
    cfg, out, payload = quick
    rows = _csv(out / "deep_mlp_runs.csv")
    table = {(r["measure"], r["gap"]): r for r in payload["all_runs"]}
    assert {m for m, _ in table} == set(deep_mlp.MEASURES)
    checked = 0
    for (m, gap), r in table.items():
        ref = kendalltau([float(row[m]) for row in rows], [float(row[gap]) for row in rows]).statistic
        assert r["tau"] == pytest.approx(ref, abs=1e-12) or (math.isnan(r["tau"]) and math.isnan(ref)), (m, gap)
        checked += not math.isnan(ref)
    assert checked >= 6
    runs = json.loads((out / "deep_mlp_runs.json").read_text())["runs"]
    for (m, gap), r in table.items():
        x = [row[m] for row in runs]
        y = [row[gap] for row in runs]
        assert r["tau"] == pytest.approx(kendalltau(x, y).statistic, abs=1e-12) or (math.isnan(r["tau"]) and math.isnan(kendalltau(x, y).statistic))
        gk = granulated_kendall(x, y, {f: [row[f] for row in runs] for f in ("lr", "batch_size", "weight_decay", "seed")}, ["lr", "batch_size"])
        assert r["psi_lr"] == pytest.approx(gk.psi["lr"], nan_ok=True) and r["psi_mean"] == pytest.approx(gk.mean, nan_ok=True)
        lo, hi = r["tau_ci"]
        assert (math.isnan(lo) and math.isnan(hi)) or -1 <= lo <= hi <= 1


def test_quick_eos_ratio_formula_and_tail(quick):
    cfg, out, payload = quick
    runs = json.loads((out / "deep_mlp_runs.json").read_text())["runs"]
    for r in runs:
        assert r["eos_ratio"] == pytest.approx(float(np.median([s * r["lr"] / 2 for s in r["sharpness_tail"]])))
        assert r["sharpness_steps"] == deep_mlp.sharpness_steps(r["steps"], cfg)
        assert r["sharpness_steps"][-1] == r["steps"] and r["sharpness_steps"][0] >= (1 - cfg.tail_fraction) * r["steps"]
        assert r["at_eos"] == (r["eos_ratio"] >= cfg.eos_threshold)
    assert payload["n_at_eos"] + payload["n_excluded"] == payload["n_runs"]
    assert payload["n_at_eos"] == sum(r["eos_ratio"] >= cfg.eos_threshold for r in runs)
    # the at-EoS table holds exactly the runs above a threshold between the ratios
    cut = float(np.median([r["eos_ratio"] for r in runs]))
    again = deep_mlp.analyse(replace(cfg, eos_threshold=cut), runs)
    above = sum(r["eos_ratio"] >= cut for r in runs)
    assert again["n_excluded"] == len(runs) - above
    assert all(row["n_runs"] == above for row in again["at_eos"])


def test_sharpness_steps_hand_worked():
    cfg = replace(deep_mlp.DeepMlpConfig(), tail_fraction=0.3, sharpness_points=3)
    assert deep_mlp.sharpness_steps(100, cfg) == [70, 80, 90, 100]
    assert deep_mlp.sharpness_steps(7, cfg) == [5, 6, 7]  # ceil(0.7·7) = 5, every ceil(2.1/3) = 1
    assert deep_mlp.steps_per_epoch(898, 16) == 56 and deep_mlp.steps_per_epoch(898, 2000) == 1


def test_markdown_states_the_ranking(quick):
    cfg, out, payload = quick
    md = (out / "deep_mlp_table.md").read_text()
    assert "### all runs" in md and "τ interval" in md and "Ψ interval" in md
    for gap, r in payload["ranking"].items():
        assert f"- {gap}: τ order" in md
        assert r["claimed_best"] == all(r["beats"].values())
        assert r["order"] == sorted(r["taus"], key=lambda m: -r["taus"][m])


def test_ranking_needs_strictly_higher_tau():
    def row(m, g, t):
        return {"measure": m, "gap": g, "tau": t, "tau_ci": [t - 0.1, t + 0.1]}

    table = [row("sd_slq", "acc_gap", 0.5), row("lambda_1", "acc_gap", 0.5), row("hess_trace", "acc_gap", 0.2),
             row("sd_slq", "loss_gap", 0.5), row("lambda_1", "loss_gap", 0.3), row("hess_top", "loss_gap", 0.1), row("sd_ps", "loss_gap", 0.9)]
    r = deep_mlp.ranking(table)
    assert not r["acc_gap"]["claimed_best"]  # a tie with λ_1 is not "best"
    assert r["acc_gap"]["beats"] == {"lambda_1": False, "hess_trace": True}
    assert r["loss_gap"]["claimed_best"] and r["loss_gap"]["order"][0] == "sd_ps"  # another SD estimator is no rival
    assert r["loss_gap"]["interval_above"] == {"lambda_1": True, "hess_top": True}


def test_loss_target_trains_twice_to_the_same_weights_and_reruns_bit_identically(quick, monkeypatch):
    cfg = replace(quick[0], target_train_loss=2.2, max_epochs=20, measures=replace(quick[0].measures, methods=["ps"]))
    bundle = bundle_as(load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), torch.float64)
    row = deep_mlp.run_one(cfg, bundle, lr=0.1, batch_size=64, seed=0)
    cap = cfg.max_epochs * deep_mlp.steps_per_epoch(len(bundle.train), 64)
    assert row["reached_target"] and 0 < row["steps"] < cap and row["train_loss"] <= 2.2
    assert row["sharpness_steps"] == deep_mlp.sharpness_steps(row["steps"], cfg)
    again = deep_mlp.run_one(cfg, bundle, lr=0.1, batch_size=64, seed=0)
    for key in ("steps", "eos_ratio", "sharpness_tail", "test_loss", "sd_ps", "lambda_1", "hess_top", "hess_trace"):
        assert again[key] == row[key], key
    # if the second pass does not land on the first pass's weights, the run fails loudly
    calls = {"n": 0}
    real = deep_mlp.load_model

    def perturbed(*a, **k):
        loaded = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                next(loaded.model.parameters()).add_(1e-3)
        return loaded

    monkeypatch.setattr(deep_mlp, "load_model", perturbed)
    with pytest.raises(RuntimeError, match="did not reproduce"):
        deep_mlp.run_one(cfg, bundle, lr=0.1, batch_size=64, seed=0)


def test_rerun_resumes_without_retraining(quick, monkeypatch):
    cfg, out, payload = quick
    monkeypatch.setattr(deep_mlp, "run_one", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = deep_mlp.run(cfg, out)
    assert json.dumps(again["all_runs"]) == json.dumps(payload["all_runs"])
    assert payload["n_reused"] == 0 and again["n_reused"] == again["n_runs"]
    assert again["run_time_s"] == pytest.approx(payload["run_time_s"])  # the runs' own time survives a resume
    assert "this invocation took" in (out / "deep_mlp_table.md").read_text()


@pytest.mark.parametrize("override, name", [("lrs=[0.1, -0.1]", "lrs"), ("lrs=[]", "lrs"), ("batch_sizes=[0]", "batch_sizes"),
                                             ("seeds=[1, 1]", "seeds"), ("tail_fraction=1.5", "tail_fraction"), ("max_epochs=0", "max_epochs"),
                                             ("target_train_loss=-1", "target_train_loss"), ("measures.methods=[exact, slq]", "exact")])
def test_config_errors_raise_and_exit_2_with_one_line(override, name, capsys, tmp_path):
    with pytest.raises(ConfigError, match=name):
        load_config(deep_mlp.DeepMlpConfig, RECIPE, [override])
    assert deep_mlp.main(["--config", str(RECIPE), "--set", override, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deep_mlp: error:") and name in err[0]
    assert not (tmp_path / "out").exists()  # nothing written
