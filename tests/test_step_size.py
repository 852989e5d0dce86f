"""``lr: auto``: η = 2(1 + μ)/(λ_0 + wd) from the sharpness at the start, against dense
float64 Hessians; deterministic, resumable, and used by every stage of the main job."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from sdcompress.cli.main import main
from sdcompress.cli.options import step_size
from sdcompress.config import DataConfig, FieldError, ModelConfig
from sdcompress.data import ArrayDataset, DatasetBundle
from sdcompress.errors import ConfigError
from sdcompress.estimator import EstimateConfig
from sdcompress.evaluate import EvalConfig
from sdcompress.models import MLP, FunctionalLoss, LoadedModel, tiny_gpt2
from sdcompress.pipeline import OutputConfig, RunConfig, run_pipeline
from sdcompress.plan import PlanConfig
from sdcompress.train import TrainConfig, default_train_config, read_train_log, train_sgd
from sdcompress.train.step_size import AUTO_LR_FRACTION, auto_step_size, resolve_auto, trained_lr


def test_closed_form_and_refusals():
    assert auto_step_size(4.0) == pytest.approx(0.5 * AUTO_LR_FRACTION)
    assert auto_step_size(4.0, weight_decay=1.0, momentum=0.5) == pytest.approx(2 * 1.5 / 5.0 * AUTO_LR_FRACTION)
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="pass an explicit --lr"):
            auto_step_size(bad)
    cfg = TrainConfig(lr="auto", weight_decay=0.0)
    assert resolve_auto(cfg, 8.0).lr == pytest.approx(0.25 * AUTO_LR_FRACTION)
    assert resolve_auto(TrainConfig(lr=0.3), 8.0).lr == 0.3  # a number stays
    assert trained_lr({"config": {"lr": 0.25}}) == 0.25 and trained_lr({"config": {"lr": "auto"}}) is None
    assert trained_lr({}) is None


def test_config_and_cli_accept_auto_and_name_it_in_errors():
    assert default_train_config("/some/checkpoint").lr == "auto"  # not built in: nobody knows its η
    assert default_train_config("tiny-gpt2").lr == 0.3  # built-ins keep their measured EoS step
    for bad in ("fast", 0, -0.1, True):
        with pytest.raises(FieldError, match=r"train.lr must be a finite number > 0 or 'auto'"):
            TrainConfig(lr=bad)
    assert step_size("auto") == "auto" and step_size("AUTO") == "auto" and step_size("0.05") == 0.05
    with pytest.raises(argparse.ArgumentTypeError, match="number or auto"):
        step_size("fast")


def test_cli_bad_lr_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["mlp", "--lr", "fast", "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--lr" in err and "number or auto" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def _convex_mlp() -> tuple[LoadedModel, DatasetBundle, float]:
    """A float64 MLP on 12 points, and λ_max of its full-batch Hessian from a dense eigh."""
    torch.manual_seed(0)
    model = MLP((3, 5, 3), bias=False).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    loaded = LoadedModel(model, "auto-mlp", "classification", loss_fn=F.cross_entropy)
    fl = FunctionalLoss(model, loss_fn=F.cross_entropy)
    w = fl.params_vector()
    dense = torch.func.jacrev(torch.func.grad(lambda v: fl(v, (x, y))))(w)  # reverse-over-reverse, float64
    top = float(torch.linalg.eigvalsh((dense + dense.T) / 2)[-1])
    split = ArrayDataset({"inputs": x, "targets": y}, task="classification")
    return loaded, DatasetBundle("twelve", train=split, test=split), top


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_auto_step_is_the_stability_edge_of_the_first_batch(momentum):
    loaded, data, top = _convex_mlp()
    d = sum(p.numel() for p in loaded.model.parameters())
    cfg = TrainConfig(lr="auto", steps=3, momentum=momentum, weight_decay=1e-2, log_every=1, sharpness_steps=d, eval_batches=1)
    result = train_sgd(loaded, data, cfg, data_config=DataConfig(batch_size=12))  # one batch = the whole set
    expected = AUTO_LR_FRACTION * 2 * (1 + momentum) / (top + 1e-2)
    assert result.config.lr == pytest.approx(expected, rel=1e-9)
    first = result.log[0]
    assert first["sharpness"] == pytest.approx(top, rel=1e-9)  # λ_0 is the step-0 record's value (no extra products)
    assert first["two_over_lr"] == pytest.approx(2 / expected, rel=1e-12)
    assert first["stability_threshold"] + 1e-2 == pytest.approx(2 * (1 + momentum) / expected, rel=1e-12)


def test_auto_is_deterministic_and_resumes_to_the_same_run(tmp_path):
    def run(steps: int, out: str) -> tuple:
        loaded, data, _ = _convex_mlp()
        cfg = TrainConfig(lr="auto", steps=steps, log_every=2, sharpness_steps=6, eval_batches=1, checkpoint_every=2)
        res = train_sgd(loaded, data, cfg, data_config=DataConfig(batch_size=4), output_dir=tmp_path / out)
        return res, {n: p.detach().clone() for n, p in loaded.model.named_parameters()}

    whole, w_whole = run(8, "whole")
    _, _ = run(4, "part")  # stops at 4 (checkpointed); "steps" is not in the fingerprint, so 8 resumes it
    resumed, w_resumed = run(8, "part")
    assert resumed.resumed_from == 4 and resumed.config.lr == whole.config.lr
    assert all(torch.equal(w_whole[n], w_resumed[n]) for n in w_whole) and resumed.log == whole.log
    assert read_train_log(tmp_path / "part").config.lr == whole.config.lr  # the log records the η used


def test_main_job_on_a_checkpoint_uses_the_auto_step_everywhere(tmp_path):
    folder = tmp_path / "ckpt"
    tiny_gpt2(seed=0, n_embd=8, n_layer=1, n_head=2, block_size=16).save_pretrained(folder)
    out = tmp_path / "run"
    cfg = RunConfig(
        model=ModelConfig(str(folder)),
        data=DataConfig(name="pydoc", batch_size=8, block_size=16),
        train=TrainConfig(lr="auto", steps=6, log_every=3, sharpness_steps=4, eval_batches=1, checkpoint_every=1000),
        estimate=EstimateConfig(method="ps", slq_runs=2, lanczos_steps=6, n_quantiles=100, n_bootstrap=0,
                                lyapunov_exponents=2, lyapunov_steps=3, lyapunov_warmup=1),
        plan=PlanConfig(budget={"params_fraction": 0.5}, below_floor=True),
        evaluate=EvalConfig(max_test_examples=16, max_train_examples=16, batch_size=8),
        output=OutputConfig(dir=str(out)), dry_run=True, allow_untrained=True,
    )
    report = run_pipeline(cfg)
    log = json.loads((out / "train_log.json").read_text())
    lam0 = log["log"][0]["sharpness"]
    eta = log["config"]["lr"]
    assert eta == pytest.approx(AUTO_LR_FRACTION * 2 / (lam0 + cfg.train.weight_decay), rel=1e-12)
    estimates = json.loads((out / "estimates.json").read_text())
    assert estimates["lr"] == eta  # SD is measured with the η the SGD phase used
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == "auto"  # the run's settings as given
    assert report is not None


def test_chance_level_of_a_language_model_is_over_its_own_outputs():
    """A GPT-2 with 300 output rows on byte text (a data vocabulary of 257): a uniform guess
    over its outputs scores ln 300, and that is the level a dead network sits at."""
    from sdcompress.data import load_data
    from sdcompress.models import MLP, load_model
    from sdcompress.pipeline.run import _n_outputs, output_size
    from sdcompress.pipeline.stages import Trained

    data = load_data("pydoc", block_size=16)
    assert data.info["vocab_size"] == 257
    loaded = load_model("tiny-gpt2", seed=0, vocab_size=300, n_embd=8, n_layer=1, n_head=2, block_size=16)
    assert output_size(loaded.model) == 300
    assert _n_outputs(Trained(loaded, data, {}, "test")) == 300
    same = load_model("tiny-gpt2", seed=0, n_embd=8, n_layer=1, n_head=2, block_size=16)
    assert _n_outputs(Trained(same, data, {}, "test")) == 257
    digits = load_data("digits")
    mlp = load_model("mlp", seed=0)
    assert _n_outputs(Trained(mlp, digits, {}, "test")) == 10 and output_size(MLP((4, 3))) is None
