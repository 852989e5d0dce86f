"""Experiments (issue 6): rank statistics against scipy and hand-worked cases, and tiny
versions of every experiment so their code paths stay alive (and are deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from sdcompress.errors import ConfigError
from sdcompress.experiments.stats import correlation_table, granulated_kendall, kendall_tau


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=17).astype(float)  # many ties in both samples
    y = rng.integers(0, 5, size=17).astype(float)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    z = rng.normal(size=23)
    w = z + rng.normal(size=23)
    assert kendall_tau(z, w) == pytest.approx(kendalltau(z, w).statistic, abs=1e-12)


def test_kendall_tau_hand_worked():
    # one discordant pair of six: (4 + 1 concordant − 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # tie in x: P = 2, Q = 0, n0 = 3, n_x = 1 → 2 / sqrt(2·3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ConfigError, match="equal length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_granulated_kendall_hand_worked():
    lr = ["a", "b", "a", "b"]
    bs = [1, 1, 2, 2]
    measure = [1, 2, 3, 4]
    gap = [1, 2, 4, 3]
    gk = granulated_kendall(measure, gap, {"lr": lr, "batch_size": bs}, vary=("lr", "batch_size"))
    # ψ_lr: batch 1 gives τ = +1, batch 2 gives τ = −1 → 0; ψ_bs: both lr groups +1 → 1
    assert gk.psi == {"lr": 0.0, "batch_size": 1.0}
    assert gk.mean == 0.5
    assert gk.n_groups == {"lr": 2, "batch_size": 2}
    rows = correlation_table(
        [{"m": m, "g": g, "lr": a, "bs": b} for m, g, a, b in zip(measure, gap, lr, bs)],
        measures=["m"], gaps=["g"], factors=["lr", "bs"], vary=["lr", "bs"],
    )
    assert rows[0]["tau"] == pytest.approx(2 / 3)
    assert rows[0]["psi_lr"] == 0.0 and rows[0]["psi_bs"] == 1.0 and rows[0]["psi_mean"] == 0.5


def test_granulated_kendall_holds_seed_fixed():
    # two seeds: within each (batch, seed) group only lr varies
    runs = [(lr, s) for s in (0, 1) for lr in (0.1, 0.2, 0.3)]
    measure = [lr + 10 * s for lr, s in runs]
    gap = [-lr + 5 * s for lr, s in runs]  # anti-correlated within a seed, correlated across
    gk = granulated_kendall(measure, gap, {"lr": [r[0] for r in runs], "seed": [r[1] for r in runs]}, vary=["lr"])
    assert gk.psi["lr"] == pytest.approx(-1.0)
    assert kendall_tau(measure, gap) > 0
    with pytest.raises(ConfigError, match="missing"):
        granulated_kendall(measure, gap, {"lr": [r[0] for r in runs]}, vary=["batch_size"])


# ------------------------------------------------------------------ tiny experiments

import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from sdcompress.experiments import compression_tie, eos_sweep, gpt_grid, grid, grokking  # noqa: E402
from sdcompress.experiments.common import load_config  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "experiments"


@pytest.fixture(scope="session")
def quick_grid(tmp_path_factory):
    """The 2 × 2 quick grid (plus a 2-point weight-decay axis), run once."""
    out = tmp_path_factory.mktemp("grid")
    cfg = replace(load_config(grid.GridConfig, RECIPES / "grid.yaml").quick(), checkpoint_dir=str(out / "ckpt"))
    payload = grid.run(cfg, out)
    return cfg, out, payload


def test_recipes_load_strictly():
    for name, cls in [("grid", grid.GridConfig), ("eos_sweep", eos_sweep.EosConfig), ("grokking", grokking.GrokConfig), ("eos_grid", eos_grid.EosGridConfig),
                      ("compression_tie", compression_tie.TieConfig), ("gpt_grid", gpt_grid.GptGridConfig)]:
        assert isinstance(load_config(cls, RECIPES / f"{name}.yaml"), cls)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(grid.GridConfig, None, ["lrss=[0.1]"])


def test_quick_grid_rerun_and_compression_tie(quick_grid, tmp_path):
    """One test on purpose: the quick grid is the expensive part, and under ``pytest -n 2``
    a session fixture shared by several tests would run once per worker."""
    _check_quick_grid_table_and_dense_reference(quick_grid)
    _check_quick_grid_is_deterministic(quick_grid)
    _check_quick_compression_tie(quick_grid, tmp_path)


def _check_quick_grid_table_and_dense_reference(quick_grid):
    cfg, out, payload = quick_grid
    runs = json.loads((out / "grid_runs.json").read_text())["runs"]
    assert len(runs) == len(cfg.lrs) * len(cfg.batch_sizes) * len(cfg.seeds) + len(cfg.wd_values) * len(cfg.wd_seeds)
    for f in ("grid_table.csv", "grid_table.md", "grid_measures_vs_gap.png", "grid_weight_decay.png"):
        assert (out / f).stat().st_size > 0
    measures = {r["measure"] for r in payload["table"]}
    assert {"sd_exact", "sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"} <= measures
    # exact SD of one run, recomputed here from dense float64 minibatch Hessians (PAPER.md §2)
    from sdcompress.estimator.kaplan_yorke import sharpness_dimension
    from sdcompress.experiments.common import eval_stream, load_checkpoint
    from sdcompress.linalg.dense import dense_hessian
    from sdcompress.models import FunctionalLoss

    row = next(r for r in runs if r["axis"] == "wd" and r["weight_decay"] > 0)
    model = load_checkpoint(row["checkpoint"])
    bundle = grid.bundle_as(grid.load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), torch.float64)
    loss = FunctionalLoss(model)
    lr, wd = row["lr"], row["weight_decay"]
    per = []
    for batch in eval_stream(bundle.train, row["batch_size"], row["seed"]).take(cfg.measures.n_batches):
        alpha = torch.linalg.eigvalsh(torch.func.jacrev(torch.func.grad(lambda w: loss(w, batch)))(loss.params_vector()))
        per.append(np.sort(np.log(np.abs(1 - lr * wd - lr * alpha.numpy())))[::-1])
    lam = np.mean(per, axis=0)
    assert row["sd_exact"] == pytest.approx(sharpness_dimension(lam), rel=1e-9)
    assert row["lambda_1"] == pytest.approx(lam[0], rel=1e-9)
    full = torch.linalg.eigvalsh(dense_hessian(loss, bundle.train.all()))
    assert row["hess_top"] == pytest.approx(float(full[-1]), rel=1e-9)
    assert row["hess_trace"] == pytest.approx(float(full.sum()), rel=1e-9)


def _check_quick_grid_is_deterministic(quick_grid):
    cfg, out, _ = quick_grid
    runs = json.loads((out / "grid_runs.json").read_text())["runs"]
    first = runs[0]
    bundle = grid.bundle_as(grid.load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), torch.float64)
    again = grid.run_one(replace(cfg, checkpoint_dir=""), bundle, lr=first["lr"], batch_size=first["batch_size"], seed=first["seed"],
                         weight_decay=first["weight_decay"], max_epochs=cfg.max_epochs, target=cfg.target_train_loss)
    for key in ("steps", "test_loss", "train_loss", "sd_exact", "sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"):
        assert again[key] == first[key], key


def test_shared_slq_measure_equals_separate_estimates():
    from sdcompress.estimator import EstimateConfig, estimate_sd
    from sdcompress.experiments.common import eval_stream
    from sdcompress.experiments.measures import density_estimates
    from sdcompress.models import load_model

    model = load_model("mlp", seed=1, widths=(64, 6, 10)).model.double()
    bundle = grid.bundle_as(grid.load_data("digits"), torch.float64)
    cfg = EstimateConfig(slq_runs=3, lanczos_steps=12, n_bootstrap=0, n_quantiles=40)
    shared = density_estimates(model, eval_stream(bundle.train, 32, 0), lr=0.3, weight_decay=1e-2, cfg=cfg, methods=["slq", "kde", "ps"])
    for m in ("slq", "kde", "ps"):
        alone = estimate_sd(model, eval_stream(bundle.train, 32, 0), lr=0.3, method=m, weight_decay=1e-2, config=cfg)
        assert shared[m].sd == alone.sd


def _check_quick_compression_tie(quick_grid, tmp_path):
    _, out, _ = quick_grid
    cfg = replace(compression_tie.TieConfig(), grid_runs=str(out / "grid_runs.json"))
    payload = compression_tie.run(cfg, tmp_path)
    rows = [r for r in payload["runs"] if r["params_fraction"] == 0.5]
    assert len(rows) == len(json.loads((out / "grid_runs.json").read_text())["runs"])
    assert all(r["params_kept"] == pytest.approx(0.5, abs=0.05) for r in rows)
    assert payload["correlation"]["0.5"]["kendall_sd_vs_delta_test_loss"] == pytest.approx(
        kendall_tau([r["sd_exact"] for r in rows], [r["delta_test_loss"] for r in rows]))
    assert (tmp_path / "compression_tie.png").exists()
    with pytest.raises(ConfigError, match="run `python -m sdcompress.experiments.grid` first"):
        compression_tie.run(replace(cfg, grid_runs=str(tmp_path / "missing.json")), tmp_path)


def test_quick_eos_sweep(tmp_path):
    cfg = load_config(eos_sweep.EosConfig, RECIPES / "eos_sweep.yaml").quick()
    cfg = replace(cfg, series=[cfg.series[0], cfg.series[-1]])  # MLP exact and tiny-gpt2 density
    payload = eos_sweep.run(cfg, tmp_path)
    runs = payload["runs"]
    assert {r["series"] for r in runs} == {"mlp-gd", "tiny-gpt2-sgd-b16"}
    for r in runs:
        assert 0 < r["sd_over_d"] <= 1
        assert r["eos_ratio"] == pytest.approx(r["mean_late_sharpness"] * r["lr"] / 2)
    assert len(payload["traces"][0]["sharpness"]) == 3  # steps 0, 3, 6
    assert (tmp_path / "eos_mlp-gd.png").exists() and (tmp_path / "eos.csv").exists()


def test_quick_grokking_and_transition_logic(tmp_path, monkeypatch):
    payload = grokking.run(grokking.GrokConfig().quick(), tmp_path)
    rows = json.loads((tmp_path / "grokking_relu-sgd-wd.json").read_text())["rows"]
    # a rerun with the same variant and settings rebuilds the analysis from the saved rows
    monkeypatch.setattr(grokking, "run_variant", lambda *a, **k: pytest.fail("retrained a finished variant"))
    again = grokking.run(grokking.GrokConfig().quick(), tmp_path)
    assert again["summary"] == json.loads(json.dumps(payload["summary"]))
    assert [r["step"] for r in rows] == grokking.checkpoint_steps(6, 3, 2) == [0, 2, 6]
    assert "relu-sgd-wd" in payload["summary"]
    fake = [{"step": s, "train_acc": a, "test_acc": b, "sd_over_d": sd, "hess_trace": 1.0, "hess_top": 1.0}
            for s, a, b, sd in [(0, 0.1, 0.0, 0.9), (10, 1.0, 0.0, 0.8), (20, 1.0, 0.5, 0.5), (40, 1.0, 0.95, 0.6)]]
    t = grokking.transition(fake, 0.99, 0.9)
    assert (t["memorised_step"], t["end_step"], t["generalised_reached"]) == (10, 40, True)
    assert t["sd_dropped"] and (t["sd_over_d_min_in_window"], t["sd_over_d_min_step"]) == (0.5, 20)
    assert t["sd_over_d_relative_change"] == pytest.approx((0.6 - 0.8) / 0.8)
    assert t["midpoint_step"] == 20 and t["kendall_sd_vs_test_acc_in_window"] == pytest.approx(-1 / 3)
    never = grokking.transition(fake, 0.99, 0.99)  # test accuracy never reaches 0.99: the window ends at the last checkpoint
    assert (never["end_step"], never["generalised_reached"]) == (40, False)
    assert len(grokking.checkpoint_steps(40_000, 50, 50)) == 50


# ------------------------------------------------------------------ EoS grid (issue 12)

from sdcompress.experiments import eos_grid  # noqa: E402
from sdcompress.experiments.stats import bootstrap_interval, partial_kendall, slice_slope  # noqa: E402


def test_bootstrap_interval_percentiles_and_errors():
    x = np.arange(10.0)
    # τ of a sample with itself is 1 in every resample that is not constant
    assert bootstrap_interval(lambda i: kendall_tau(x[i], x[i]), 10, n_resamples=200, seed=3) == (1.0, 1.0)
    # the interval of a mean is the percentile interval of the resampled means, by hand
    y = np.random.default_rng(0).normal(size=15)
    lo, hi = bootstrap_interval(lambda i: float(y[i].mean()), 15, n_resamples=300, level=0.9, seed=7)
    rng = np.random.default_rng(7)
    means = [y[rng.integers(0, 15, size=15)].mean() for _ in range(300)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), rel=1e-12)
    assert lo < y.mean() < hi
    assert all(math.isnan(v) for v in bootstrap_interval(lambda i: 0.0, 5, n_resamples=0))
    with pytest.raises(ConfigError, match="level"):
        bootstrap_interval(lambda i: 0.0, 5, level=1.5)


def test_partial_kendall_and_slice_slope_against_references():
    rng = np.random.default_rng(1)
    z = rng.integers(0, 3, size=30).astype(float)
    x = z + rng.normal(size=30)
    y = z + 0.5 * x + rng.normal(size=30)
    txy, txz, tyz = (kendalltau(a, b).statistic for a, b in ((x, y), (x, z), (y, z)))
    assert partial_kendall(x, y, z) == pytest.approx((txy - txz * tyz) / math.sqrt((1 - txz**2) * (1 - tyz**2)), abs=1e-12)
    assert math.isnan(partial_kendall(x, y, x))  # τ_xz = 1: undefined
    # the within-group slope is the x coefficient of least squares with one intercept per group
    dummies = np.stack([(z == v).astype(float) for v in np.unique(z)], axis=1)
    coef = np.linalg.lstsq(np.column_stack([x, dummies]), y, rcond=None)[0]
    assert slice_slope(x, y, z) == pytest.approx(coef[0], rel=1e-10)
    assert slice_slope(x, 2 * x + 5 * z, z) == pytest.approx(2.0)  # a group shift does not leak into the slope
    assert math.isnan(slice_slope(z, y, z))  # x constant within every group


def test_eos_ratio_and_tail_steps():
    assert eos_grid.tail_steps(100, 0.3, 10) == [70, 80, 90, 100]
    assert eos_grid.tail_steps(20, 0.3, 3) == [14, 17, 20]
    # median of (λ + wd)·η/2 over the tail: λ = 3, 5, 9 at η = 0.4, wd = 0.5 → (5.5)·0.2
    assert eos_grid.eos_ratio([3.0, 9.0, 5.0], 0.4, 0.5) == pytest.approx(1.1)
    assert math.isnan(eos_grid.eos_ratio([], 0.4, 0.0))


def test_quick_eos_grid_columns_exclusions_and_confound(tmp_path, monkeypatch):
    cfg = replace(load_config(eos_grid.EosGridConfig, RECIPES / "eos_grid.yaml").quick(), lrs=[0.4, 0.8], batch_sizes=[32],
                  measures=replace(eos_grid.EosGridConfig().quick().measures, methods=["exact", "ps"]), eos_threshold=0.0)
    payload = eos_grid.run(cfg, tmp_path)
    runs = json.loads((tmp_path / "eos_grid_runs.json").read_text())["runs"]
    assert len(runs) == payload["n_runs"] == payload["n_at_eos"] == 4 and payload["n_excluded"] == 0
    header = (tmp_path / "eos_grid_runs.csv").read_text().splitlines()[0].split(",")
    for col in ("seed", "lr", "batch_size", "weight_decay", "eos_ratio", "sd_exact", "sd_ps", "lambda_1", "hess_trace", "hess_top", "acc_gap", "loss_gap"):
        assert col in header, col
    for r in runs:
        assert len(r["sharpness_tail"]) == len(eos_grid.tail_steps(cfg.steps, cfg.tail_fraction, cfg.sharpness_every))
        assert r["eos_ratio"] == pytest.approx(float(np.median([(s + r["weight_decay"]) * r["lr"] / 2 for s in r["sharpness_tail"]])))
    # exclusions: a threshold between the runs' ratios drops and counts the runs below it
    cut = float(np.median([r["eos_ratio"] for r in runs]))
    again = eos_grid.analyse(replace(cfg, eos_threshold=cut), runs)
    below = sum(r["eos_ratio"] < cut for r in runs)
    assert again["n_excluded"] == below and again["n_at_eos"] == 4 - below and sum(again["excluded_by_wd"].values()) == below
    # the pooled τ and the confound numbers are the stats functions applied to the rows
    pooled = {(r["measure"], r["gap"]): r for r in payload["pooled"]}
    row = pooled[("sd_exact", "loss_gap")]
    assert row["tau"] == pytest.approx(kendalltau([r["sd_exact"] for r in runs], [r["loss_gap"] for r in runs]).statistic)
    assert row["tau_ci"][0] <= row["tau_ci"][1]
    c = payload["confound"]
    sd = [r["sd_exact"] / r["d"] for r in runs]
    wd = [r["weight_decay"] for r in runs]
    assert c["tau_wd_sd"] == pytest.approx(kendall_tau(wd, sd))
    assert c["slope_loss_gap"] == pytest.approx(slice_slope(sd, [r["loss_gap"] for r in runs], wd))
    assert set(c["slices_loss_gap"]) == {"0", "0.01"}
    assert "the weight-decay confound" in (tmp_path / "eos_grid_table.md").read_text()
    # retraining a run gives the same numbers bit for bit (CPU, one seed)
    first = runs[0]
    bundle = grid.bundle_as(grid.load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), torch.float64)
    again = eos_grid.run_one(cfg, bundle, lr=first["lr"], batch_size=first["batch_size"], seed=first["seed"], weight_decay=first["weight_decay"])
    for key in ("eos_ratio", "sharpness_tail", "test_loss", "sd_exact", "sd_ps", "lambda_1", "hess_top", "hess_trace"):
        assert again[key] == first[key], key
    # a rerun reuses every finished run (resume), and gives the same statistics
    monkeypatch.setattr(eos_grid, "run_one", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert json.dumps(eos_grid.run(cfg, tmp_path)["pooled"]) == json.dumps(payload["pooled"])


def test_grokking_seed_spread_groups_seeds_and_reports_both_minima():
    def res(name, seed, hidden, sds):
        rows = [{"step": 10 * i, "sd_over_d": v} for i, v in enumerate(sds)]
        t = {"memorised_step": 10, "end_step": 20, "final_test_acc": 0.9, "sd_over_d_min_in_window": min(sds[1:3]),
             "sd_over_d_min_step": 10 * (1 + int(np.argmin(sds[1:3])))}
        return {"variant": {**vars(grokking.GrokVariant(name=name, seed=seed, hidden=hidden))}, "rows": rows, "transition": t}

    results = [res("a", 0, 8, [0.9, 0.8, 0.7, 0.5]), res("a-s1", 1, 8, [0.9, 0.6, 0.7, 0.65]), res("other", 0, 16, [0.9, 0.8, 0.7, 0.6])]
    spread = grokking.seed_spread(results)
    assert list(spread) == ["a"] and spread["a"]["seeds"] == [0, 1]  # "other" differs in width: not a seed of "a"
    win = spread["a"]["sd_over_d_min_in_window"]
    assert win["per_seed"] == [0.7, 0.6] and win["mean"] == pytest.approx(0.65) and win["std"] == pytest.approx(math.sqrt(0.005))
    assert spread["a"]["sd_over_d_min_overall"]["per_seed"] == [0.5, 0.6]
    assert spread["a"]["sd_over_d_min_overall_step"]["per_seed"] == [30, 10]
    assert "end_step" in spread["a"] and "sd_over_d_at_end" not in spread["a"]  # keys missing in a transition are left out


@pytest.mark.parametrize("module", [grid, eos_grid, grokking])
def test_experiment_user_errors_exit_2_with_one_line(module, tmp_path, capsys):
    """Every experiment's entry (common.experiment_main) turns a bad value into one line and
    exit 2, writes nothing, and re-raises under -v."""
    out = tmp_path / "out"
    args = ["--quick", "--output-dir", str(out), "--set", "no_such_field=1"]
    assert module.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "no_such_field" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(ConfigError):
        module.main([*args, "-v"])
