"""Every config validates itself on construction (one style), RunConfig checks every section
before anything is written, and the CLI reports errors under the option the user typed
(issue #9, part 1)."""

from __future__ import annotations

import pytest

from sdcompress.cli.main import main
from sdcompress.config import DataConfig, FieldError, ModelConfig, check_step_size
from sdcompress.errors import ConfigError
from sdcompress.estimator import EstimateConfig
from sdcompress.evaluate import EvalConfig
from sdcompress.pipeline import OutputConfig, RunConfig
from sdcompress.plan import PlanConfig
from sdcompress.train import TrainConfig

# (constructor, keyword, bad value, key in the message)
BAD_FIELDS = [
    (DataConfig, "batch_size", 0, "data.batch_size"),
    (DataConfig, "block_size", 1, "data.block_size"),
    (DataConfig, "train_fraction", 1.5, "data.train_fraction"),
    (DataConfig, "name", "", "data.name"),
    (DataConfig, "p", 1, "data.p"),
    (ModelConfig, "name", "", "model.name"),
    (ModelConfig, "options", [1], "model.options"),
    (TrainConfig, "lr", 0.0, "train.lr"),
    (TrainConfig, "lr", float("nan"), "train.lr"),
    (TrainConfig, "weight_decay", -1e-3, "train.weight_decay"),
    (TrainConfig, "steps", -1, "train.steps"),
    (TrainConfig, "momentum", 1.0, "train.momentum"),
    (EstimateConfig, "slq_runs", 0, "estimate.slq_runs"),
    (EstimateConfig, "method", "hutchinson", "estimate.method"),
    (EstimateConfig, "lyapunov_warmup", 100, "estimate.lyapunov_warmup"),
    (EstimateConfig, "params", [], "estimate.params"),
    (PlanConfig, "target_rank", 0, "plan.target_rank"),
    (PlanConfig, "bits", 3, "plan.bits"),
    (PlanConfig, "budget", {"params_fraction": 2.0}, "plan.budget.params_fraction"),
    (EvalConfig, "tolerance", 0.0, "evaluate.tolerance"),
    (EvalConfig, "batch_size", 0, "evaluate.batch_size"),
    (OutputConfig, "dir", "", "output.dir"),
    (OutputConfig, "overwrite", "yes", "output.overwrite"),
]


@pytest.mark.parametrize("cls,name,value,key", BAD_FIELDS, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in BAD_FIELDS])
def test_every_config_refuses_a_bad_field_on_construction(cls, name, value, key):
    with pytest.raises(FieldError) as info:
        cls(**{name: value})
    err = info.value
    assert err.key == key and str(err).startswith(f"{key} must be ")
    received = value["params_fraction"] if isinstance(value, dict) else value
    assert f"got {received!r}" in str(err)  # the value received
    assert isinstance(err, ConfigError) and "\n" not in str(err)


def test_every_config_class_uses_the_same_style():
    # one style: __post_init__ runs validate(), which returns self
    for cls in (DataConfig, ModelConfig, TrainConfig, EstimateConfig, PlanConfig, EvalConfig, OutputConfig, RunConfig):
        obj = cls()
        assert obj.validate() is obj
        assert cls.__post_init__ is DataConfig.__post_init__, cls


def test_run_config_checks_every_section_before_anything_is_written(tmp_path):
    # the example: this used to pass resolved()
    with pytest.raises(FieldError, match="estimate.slq_runs"):
        RunConfig(estimate=EstimateConfig(slq_runs=0), train=TrainConfig(lr=-1)).resolved()
    # a field changed after construction is caught by resolved(), which run_pipeline calls first
    cfg = RunConfig(output=OutputConfig(dir=str(tmp_path / "run")))
    cfg.train.lr = -1.0
    with pytest.raises(FieldError, match=r"train.lr must be a finite number > 0 or 'auto', got -1.0"):
        cfg.resolved()
    from sdcompress.pipeline import run_pipeline

    with pytest.raises(FieldError, match="train.lr"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FieldError, match="device must be one of"):
        RunConfig(device="tpu")
    with pytest.raises(FieldError, match="^train must be a TrainConfig"):
        RunConfig(train={"lr": 0.1})  # type: ignore[arg-type]


def test_run_config_checks_the_estimator_against_the_model_size():
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))  # d = 18
    RunConfig(estimate=EstimateConfig(lyapunov_exponents=18)).check_model(model)
    with pytest.raises(FieldError) as info:
        RunConfig(estimate=EstimateConfig(lyapunov_exponents=19)).check_model(model)
    assert info.value.key == "estimate.lyapunov_exponents" and "at most d = 18" in str(info.value)
    assert "n_exponents" not in str(info.value)
    with pytest.raises(FieldError, match="estimate.method must be a matrix-free method for d = 18"):
        RunConfig(estimate=EstimateConfig(method="exact", max_dense_params=10)).check_model(model)


def test_step_size_is_checked_in_one_place():
    assert check_step_size(0.1, 0) == (0.1, 0.0)
    for lr in (0, -1, float("inf"), True, "0.1"):
        with pytest.raises(FieldError, match="lr must be a finite number > 0"):
            check_step_size(lr)
    with pytest.raises(FieldError, match="weight_decay must be a finite number ≥ 0"):
        check_step_size(0.1, -1)
    # TrainConfig and estimate_sd both use it: same words
    with pytest.raises(FieldError) as a:
        TrainConfig(lr=0)
    with pytest.raises(FieldError) as b:
        check_step_size(0, section="train", allow_auto=True)
    assert str(a.value) == str(b.value)
    assert check_step_size("auto", 0.01, allow_auto=True) == ("auto", 0.01)
    with pytest.raises(FieldError, match="lr must be a finite number > 0, got 'auto'"):
        check_step_size("auto")  # only where the caller can choose η itself


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sdcompress: error: "), err
    return err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--lr", "0"], "--lr must be a finite number > 0 or 'auto', got 0.0"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number ≥ 0, got -1.0"),
        (["--batch-size", "0"], "--batch-size must be an integer ≥ 1, got 0"),
        (["--steps", "-5"], "--steps must be an integer ≥ 0, got -5"),
        (["--eval-tolerance", "0"], "--eval-tolerance must be a finite number > 0"),
        (["--budget", "1.5"], "--budget must be in (0, 1], got 1.5"),
        (["--set", "train.lr=0"], "--set: train.lr: must be a finite number > 0 or 'auto', got 0.0"),
        (["--set", "estimate.slq_runs=0"], "--set: estimate.slq_runs: must be an integer ≥ 1, got 0"),
    ],
)
def test_cli_reports_errors_under_the_option_typed(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    assert main(["mlp", *argv, "--output-dir", str(out)]) == 2
    err = _one_line_error(capsys)
    assert expected in err
    assert "smaller --batch-size" not in err
    if argv[0] != "--set":
        assert "--set" not in err
    assert not out.exists()


def test_too_many_lyapunov_exponents_are_refused_before_training_under_their_config_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDCOMPRESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["mlp", "--set", "estimate.lyapunov_exponents=5000", "--output-dir", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "estimate.lyapunov_exponents must be at most d = 1440" in err and "n_exponents" not in err
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing trained, nothing written


def test_estimate_cli_reports_its_own_options(tmp_path, capsys):
    out = tmp_path / "est"
    assert main(["estimate", "mlp", "--batch-size", "0", "--output-dir", str(out)]) == 2
    assert "--batch-size must be an integer ≥ 1, got 0" in _one_line_error(capsys)
    assert main(["estimate", "mlp", "--slq-runs", "0", "--output-dir", str(out)]) == 2
    assert "--slq-runs must be an integer ≥ 1, got 0" in _one_line_error(capsys)
    assert not out.exists()


def test_recipe_errors_name_the_key_path_once(tmp_path):
    from sdcompress.recipe import recipe_from_text

    with pytest.raises(ConfigError) as info:
        recipe_from_text("data: {batch_size: 0}\n", source="r.yaml")
    assert str(info.value).startswith("r.yaml: data.batch_size: must be an integer ≥ 1, got 0")


def test_no_other_range_check_of_the_step_size():
    """lr/wd are range-checked by check_step_size only (docstrings and plots may mention them)."""
    import re
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "sdcompress"
    check = re.compile(r"\bnot\b[^\n#]*\b(?:lr|eta)\s*>\s*0\b|\b(?:lr|eta)\s*<=\s*0\b|\bweight_decay\s*<\s*0\b")
    hits = [f"{p.relative_to(pkg)}:{i + 1}" for p in pkg.rglob("*.py") if p != pkg / "config.py"
            for i, line in enumerate(p.read_text().splitlines()) if check.search(line) and "Error:" not in line]
    assert hits == [], hits
    assert {"train/config.py", "estimator/estimate.py", "estimator/lyapunov_sgd.py", "linalg/operators.py", "callback.py",
            "experiments/common.py"} <= {str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if "check_step_size(" in p.read_text()}


def test_recipe_shortcut_options_are_reported_under_their_names(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: mlp}\n")
    assert main(["recipe", str(recipe), "--seed", "-1", "--check"]) == 2
    assert "--seed must be an integer ≥ 0, got -1" in _one_line_error(capsys)
    assert main(["recipe", str(recipe), "--set", "seed=-1", "--check"]) == 2
    assert "seed: must be an integer ≥ 0, got -1" in _one_line_error(capsys)
