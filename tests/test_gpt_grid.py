"""Setting 4 (tiny-gpt2 on pydoc, SGD and heavy-ball momentum): the quick grid end to end,
its statistics against scipy and the stats helpers, EoS ratios, resume, and config errors."""

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from sdcompress.errors import ConfigError
from sdcompress.experiments import gpt_grid
from sdcompress.experiments.common import load_config
from sdcompress.experiments.stats import bootstrap_interval, correlation_table, granulated_kendall, kendall_tau

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "experiments" / "gpt_grid.yaml"


def _quick() -> gpt_grid.GptGridConfig:
    cfg = load_config(gpt_grid.GptGridConfig, RECIPE).quick()
    # 2 η × 1 B per optimizer: 4 runs of a 1-layer, 8-wide GPT-2, about a second each
    return replace(cfg, batch_sizes=cfg.batch_sizes[:1], eos_threshold=0.0)


def test_quick_gpt_grid_columns_statistics_eos_ratio_rerun_and_resume(tmp_path, monkeypatch):
    """One test on purpose: the quick grid is the expensive part (see test_experiments)."""
    cfg = _quick()
    payload = gpt_grid.run(cfg, tmp_path)
    runs = json.loads((tmp_path / "gpt_grid_runs.json").read_text())["runs"]
    n = sum(len(o.lrs) for o in cfg.optimizers) * len(cfg.batch_sizes) * len(cfg.seeds)
    assert len(runs) == payload["n_runs"] == n == 4 and payload["n_at_eos"] == 4
    assert {r["optimizer"] for r in runs} == {"sgd", "momentum"} and {r["momentum"] for r in runs} == {0.0, 0.9}
    # one CSV row per run with every column the brief asks for
    with open(tmp_path / "gpt_grid_runs.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == n
    for col in ("optimizer", "momentum", "lr", "batch_size", "seed", "eos_ratio", "sd_slq", "sd_kde", "sd_ps", "lambda_1",
                "hess_top", "hess_trace", "train_loss", "test_loss", "train_acc", "test_acc", "loss_gap", "acc_gap"):
        assert col in table[0], col
    d = sum(p.numel() for p in gpt_grid.build_model(cfg, gpt_grid.load_bundle(cfg), 0).model.parameters())
    for r, c in zip(runs, table):
        assert float(c["sd_kde"]) == pytest.approx(r["sd_kde"], rel=1e-5)
        # the gaps are |train − test| of the written losses and accuracies
        assert r["loss_gap"] == pytest.approx(abs(r["train_loss"] - r["test_loss"]))
        assert r["acc_gap"] == pytest.approx(abs(r["train_acc"] - r["test_acc"]))
        assert 0 < r["sd_kde"] <= r["d"] == d
        # eos_ratio = median over the tail of (λ + wd)·η / (2(1 + μ)): the heavy-ball threshold
        want = np.median([(s + r["weight_decay"]) * r["lr"] / (2 * (1 + r["momentum"])) for s in r["sharpness_tail"]])
        assert r["eos_ratio"] == pytest.approx(float(want), rel=1e-12)
        assert r["eos_threshold_value"] == pytest.approx(2 * (1 + r["momentum"]) / r["lr"])
    assert len(runs[0]["sharpness_tail"]) == len(gpt_grid.tail_steps(cfg.steps, cfg.tail_fraction, cfg.sharpness_every))
    # τ is scipy's τ_b on the written columns; Ψ the granulated coefficient with the optimizer held fixed
    rows = {(r["measure"], r["gap"]): r for r in payload["all_pooled"]}
    for m in ("sd_kde", "sd_ps", "lambda_1", "hess_trace"):
        row = rows[(m, "loss_gap")]
        x, y = [r[m] for r in runs], [r["loss_gap"] for r in runs]
        assert row["tau"] == pytest.approx(kendalltau(x, y).statistic)
        fac = {f: [r[f] for r in runs] for f in gpt_grid.FACTORS}
        assert row["psi_mean"] == pytest.approx(granulated_kendall(x, y, fac, ["lr", "batch_size"]).mean, nan_ok=True)
        assert row["tau_ci"][0] <= row["tau"] + 1e-12 or np.isnan(row["tau_ci"][0])
    sgd = {(r["measure"], r["gap"]): r for r in payload["all_by_optimizer"]["sgd"]}
    only = [r for r in runs if r["optimizer"] == "sgd"]
    assert sgd[("sd_ps", "loss_gap")]["n_runs"] == 2
    assert sgd[("sd_ps", "loss_gap")]["tau"] == pytest.approx(kendalltau([r["sd_ps"] for r in only], [r["loss_gap"] for r in only]).statistic)
    # exclusions: a threshold between the runs' ratios drops and counts the runs below it
    cut = float(np.median([r["eos_ratio"] for r in runs]))
    again = gpt_grid.analyse(replace(cfg, eos_threshold=cut), runs)
    below = sum(r["eos_ratio"] < cut for r in runs)
    assert again["n_excluded"] == below and again["n_at_eos"] == n - below
    assert sum(v["below_eos"] for v in again["excluded_by_optimizer"].values()) == below
    assert {(r["measure"], r["gap"]): r["n_runs"] for r in again["pooled"]}[("sd_kde", "loss_gap")] == n - below
    md = (tmp_path / "gpt_grid_table.md").read_text()
    assert "Wall time" in md and "load average" in md and "optimizer momentum" in md and "| sd_kde | loss_gap | 4 |" in md
    for png in ("gpt_grid_sgd_vs_gap.png", "gpt_grid_momentum_vs_gap.png", "gpt_grid_pooled_sd_vs_loss_gap.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no temp folder left behind
    # retraining a run gives the same numbers bit for bit (CPU, one seed); momentum changes them
    bundle = gpt_grid.load_bundle(cfg)
    first = runs[-1]
    opt = next(o for o in cfg.optimizers if o.name == first["optimizer"])
    rerun = gpt_grid.run_one(cfg, bundle, opt, lr=first["lr"], batch_size=first["batch_size"], seed=first["seed"])
    for key in ("eos_ratio", "sharpness_tail", "train_loss", "test_loss", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"):
        assert rerun[key] == first[key], key
    plain = gpt_grid.run_one(cfg, bundle, replace(opt, momentum=0.0), lr=first["lr"], batch_size=first["batch_size"], seed=first["seed"])
    assert plain["train_loss"] != first["train_loss"]
    # a rerun reuses every finished run (resume) and gives the same statistics
    monkeypatch.setattr(gpt_grid, "run_one", lambda *a, **k: pytest.fail("retrained a finished run"))
    monkeypatch.setattr(gpt_grid, "figures", lambda *a, **k: [])  # drawn and checked above
    assert json.dumps(gpt_grid.run(cfg, tmp_path)["all_pooled"]) == json.dumps(payload["all_pooled"])


def test_correlation_table_bootstrap_intervals_are_the_stats_helpers():
    rng = np.random.default_rng(3)
    runs = [{"m": float(v), "g": float(w), "lr": lr, "batch_size": b, "seed": 0}
            for (v, w), (lr, b) in zip(rng.normal(size=(8, 2)), [(lr, b) for lr in (0.1, 0.2, 0.4, 0.8) for b in (8, 16)])]
    plain = correlation_table(runs, ["m"], ["g"], ["lr", "batch_size", "seed"], ["lr", "batch_size"])
    assert "tau_ci" not in plain[0]  # the default is unchanged (no bootstrap)
    row = correlation_table(runs, ["m"], ["g"], ["lr", "batch_size", "seed"], ["lr", "batch_size"], n_bootstrap=50, level=0.9, seed=4)[0]
    x, y = np.array([r["m"] for r in runs]), np.array([r["g"] for r in runs])
    assert {k: v for k, v in row.items() if not k.endswith("_ci")} == plain[0]
    assert row["tau_ci"] == list(bootstrap_interval(lambda i: kendall_tau(x[i], y[i]), 8, n_resamples=50, level=0.9, seed=4))
    assert row["tau_ci"][0] < row["tau_ci"][1]


@pytest.mark.parametrize("override, match", [
    ("steps=0", "steps"),
    ("batch_sizes=[]", "batch_sizes"),
    ("optimizers=[{name: a, momentum: 1.0, lrs: [0.1]}]", "momentum must be in"),
    ("optimizers=[{name: a, momentum: 0.0, lrs: [0.1]}, {name: a, momentum: 0.9, lrs: [0.1]}]", "unique"),
    ("optimizers=[{name: a, momentum: 0.0, lrs: [-0.1]}]", "lrs..: must be a finite number > 0, got -0.1"),
    ("optimizers=[{name: a, momentum: 0.0, lrs: []}]", "lrs is empty"),
    ("weight_decay=-0.5", "weight_decay: must be a finite number ≥ 0, got -0.5"),
    ("tail_fraction=0", "tail_fraction"),
])
def test_config_errors_raise_and_exit_2_with_one_line(override, match, tmp_path, capsys):
    with pytest.raises(ConfigError, match=match):  # the recipe loader calls validate()
        load_config(gpt_grid.GptGridConfig, RECIPE, [override])
    bad = replace(load_config(gpt_grid.GptGridConfig, RECIPE), **{"steps": 0} if override == "steps=0" else {})
    if override == "steps=0":
        with pytest.raises(ConfigError, match=match):  # and run() too, for configs built in code
            gpt_grid.run(bad, tmp_path / "direct")
    code = gpt_grid.main(["--config", str(RECIPE), "--set", override, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gpt_grid: error:") and re.search(match, err[0])
    assert not (tmp_path / "out").exists()  # nothing written


def test_unknown_recipe_key_exits_2_and_verbose_raises(tmp_path, capsys):
    assert gpt_grid.main(["--config", str(RECIPE), "--set", "stepz=3", "--output-dir", str(tmp_path)]) == 2
    assert "stepz" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        gpt_grid.main(["--config", str(RECIPE), "--set", "stepz=3", "-v"])


def test_small_training_split_is_evenly_spread_and_test_split_whole():
    cfg = replace(gpt_grid.GptGridConfig(), block_size=32, train_examples=100)
    bundle = gpt_grid.load_bundle(cfg)
    full = gpt_grid.load_data("pydoc", block_size=32, test_fraction=cfg.test_fraction)
    rows = gpt_grid.fixed_subset(full.train, 100)
    assert len(bundle.train) == 100 and torch.equal(bundle.train.tensors["input_ids"], full.train.tensors["input_ids"][rows])
    assert torch.equal(bundle.test.tensors["input_ids"], full.test.tensors["input_ids"])
    assert bundle.info["train_blocks"] == 100 and rows[-1] > len(full.train) // 2


def test_recipe_equals_the_dataclass_defaults():
    """``--config ''`` runs the committed experiment (the recipe only documents it)."""
    assert load_config(gpt_grid.GptGridConfig, RECIPE) == gpt_grid.GptGridConfig()
