"""The main job end to end on tiny-gpt2 offline (small settings), resume, refusals, closed loop."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdcompress.config import DataConfig, ModelConfig
from sdcompress.errors import ModelError, OutputExistsError, PlanError
from sdcompress.estimator import EstimateConfig
from sdcompress.evaluate import EvalConfig, dataset_metrics
from sdcompress.pipeline import OutputConfig, RunConfig, run_pipeline
from sdcompress.plan import Plan, PlanConfig
from sdcompress.train import TrainConfig

NUMBERS = ("sd_before", "sd_after", "d_before", "d_after", "test_loss_before", "test_loss_after", "params_before",
           "params_after", "bytes_before", "bytes_after")
LATER = ("plan.json", "compression.json", "model", "evaluation_after.json", "report.json", "report.md",
         "modules.png", "loss.png", "exponents.png", "training.png")


def small_config(out: Path, **plan) -> RunConfig:
    return RunConfig(
        model=ModelConfig("tiny-gpt2", options=dict(n_embd=8, n_layer=1, n_head=2)),
        data=DataConfig(batch_size=8, block_size=16),
        train=TrainConfig(lr=0.3, steps=12, log_every=6, sharpness_steps=3, eval_batches=1, checkpoint_every=1000),
        estimate=EstimateConfig(method="ps", slq_runs=3, lanczos_steps=8, n_quantiles=200, n_bootstrap=10,
                                lyapunov_exponents=3, lyapunov_steps=4, lyapunov_warmup=1),
        plan=PlanConfig(**{"budget": {"params_fraction": 0.5}, "below_floor": True, **plan}),
        evaluate=EvalConfig(max_test_examples=48, max_train_examples=48, batch_size=24),
        output=OutputConfig(dir=str(out)),
    )


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    report = run_pipeline(small_config(out))
    return out, report


def test_main_job_writes_every_artifact(finished):
    out, report = finished
    for name in ("report.json", "plan.json", "model", "report.md", "estimates.json", "config.json", "trained",
                 "train_log.json", "evaluation_before.json", "evaluation_after.json", "compression.json",
                 "modules.png", "loss.png", "exponents.png", "lyapunov"):
        assert (out / name).exists(), name
    data = json.loads((out / "report.json").read_text())
    for key in NUMBERS + ("verdict", "environment"):
        assert key in data
    assert data["environment"]["torch"] == torch.__version__ and "git" in data["environment"]
    v = data["verdict"]
    assert v["preserved"] == (data["test_loss_after"] - data["test_loss_before"] <= v["tolerance"])
    plan = Plan.load(out / "plan.json")
    assert any(m.rank is not None for m in plan.modules)  # the 50% budget factorised something
    # whole-model sizes: the plan's predicted change of the target weights is what happened
    assert data["params_after"] == data["params_before"] - plan.params_before() + plan.params_after()
    assert data["params_after"] < data["params_before"] and data["bytes_after"] < data["bytes_before"]
    assert any("BELOW the SD floor" in n or "SD" in n for n in plan.notes)
    md = (out / "report.md").read_text()
    assert "Before and after" in md and "![modules](modules.png)" in md and str(round(data["sd_before"], 1)) in md


def test_saved_model_reproduces_the_reported_test_loss(finished):
    from sdcompress.api import load_model
    from sdcompress.data import load_data

    out, report = finished
    loaded = load_model(out / "model")
    assert type(loaded.model.transformer.h[0].mlp.c_fc).__name__ in ("LowRankLinear", "Conv1D")
    data = load_data("pydoc", block_size=16)
    loss, _, _ = dataset_metrics(loaded, data.test, batch_size=24, limit=48)
    assert loss == pytest.approx(report.test_loss_after, rel=1e-6)


def test_resume_after_interruption_gives_the_same_numbers(finished, tmp_path):
    out, report = finished
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    for name in LATER:  # interrupted right after the estimates and the first evaluation
        p = copy / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    again = run_pipeline(small_config(copy))
    for key in NUMBERS:
        assert getattr(again, key) == getattr(report, key), key
    assert again.verdict == report.verdict
    assert Plan.load(copy / "plan.json").to_dict() == Plan.load(out / "plan.json").to_dict()


def test_refusals_leave_folders_untouched(finished, tmp_path):
    out, _ = finished
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputExistsError, match="already holds a finished run; pass --overwrite"):
        run_pipeline(small_config(out))
    assert sorted(p.name for p in out.iterdir()) == before
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    (unfinished / "report.json").unlink()
    listing = sorted(p.name for p in unfinished.iterdir())
    with pytest.raises(OutputExistsError, match=r"different config \(differs in: plan.target_rank\)"):
        run_pipeline(small_config(unfinished, target_rank=2))
    assert sorted(p.name for p in unfinished.iterdir()) == listing
    (unfinished / "plan.json").write_text("{not json")
    for name in ("model", "evaluation_after.json", "compression.json"):
        p = unfinished / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(PlanError, match="plan.json' is not valid JSON"):
        run_pipeline(small_config(unfinished))


def test_bad_targets_and_rank_write_nothing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ModelError, match=r"'blocks\.0' matches no Linear/Conv1D module; compressible modules include: transformer\.h\.0"):
        run_pipeline(small_config(out, targets=["blocks.0"]))
    with pytest.raises(PlanError, match=r"target rank 9 is larger than the 24×8 weight of module .*c_attn. allows \(at most 8\)"):
        run_pipeline(small_config(out, target_rank=9, budget={}))
    assert not out.exists()


def test_dry_run_then_closed_loop(finished, tmp_path):
    run = tmp_path / "loop"  # the trained model comes from the cache the first run filled
    cfg = small_config(run, target_rank=1, budget={}, tolerance=1e-4, max_tries=3, growth=3.0)
    dry = run_pipeline(replace(cfg, dry_run=True))
    assert (run / "plan.json").exists() and not (run / "report.json").exists() and not (run / "model").exists()
    assert dry.test_loss_after is None and dry.params_after < dry.params_before
    final = run_pipeline(cfg)  # resumes from the dry run's folder
    tries = final.tries
    assert 1 <= len(tries) <= 3
    sizes = [t["params_after"] for t in tries]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # every try keeps more
    assert all(not t["preserved"] for t in tries[:-1])
    assert final.verdict["tolerance"] == 1e-4
    assert final.test_loss_after == pytest.approx(tries[-1]["test_loss"])
    for i in range(1, len(tries) + 1):
        assert (run / "tries" / f"{i:02d}" / "plan.json").exists()


# ---------------------------------------------------------------------------- CLI

SMALL_SETS = [
    "model.options.n_embd=8", "model.options.n_layer=1", "model.options.n_head=2", "data.batch_size=8",
    "data.block_size=16", "train.steps=12", "train.log_every=6", "train.sharpness_steps=3", "train.eval_batches=1",
    "train.checkpoint_every=1000", "estimate.slq_runs=3", "estimate.lanczos_steps=8", "estimate.n_quantiles=200",
    "estimate.n_bootstrap=10", "estimate.lyapunov_exponents=3", "estimate.lyapunov_steps=4", "estimate.lyapunov_warmup=1",
    "evaluate.max_test_examples=48", "evaluate.max_train_examples=48", "evaluate.batch_size=24",
]


def cli(*argv):
    from sdcompress.cli.main import main

    return main([*argv])


def test_cli_main_job_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli-run"
    args = ["tiny-gpt2", "--target-rank", "auto", "--budget", "0.5", "--set", "plan.below_floor=true", "--output-dir", str(out)]
    for s in SMALL_SETS:
        args += ["--set", s]
    assert cli(*args) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "test loss" in printed and "generalization" in printed and str(out) in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["estimate"]["slq_runs"] == 3 and report["config"]["train"]["lr"] == 0.3  # tiny-gpt2's EoS default
    # the same command again: refused with one line, exit 2
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run; pass --overwrite" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["tiny-gpt2", "--tolerance", "0"], "tolerance must be a positive number"),
    (["tiny-gpt2", "--set", "plan.target_rnak=3"], "target_rnak"),
    (["tiny-gpt2", "--targets", "nothing.here"], "matches no Linear/Conv1D module"),  # refused before any training
])
def test_cli_bad_input_one_line(tmp_path, capsys, argv, message):
    assert cli(*argv, "--output-dir", str(tmp_path / "x")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdcompress")]
    assert len(err) == 1 and err[0].startswith("sdcompress: error: ") and message in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_bits_choice_is_checked(capsys):
    with pytest.raises(SystemExit) as exc:
        cli("tiny-gpt2", "--bits", "3")
    assert exc.value.code == 2 and "bits '3' is not supported" in capsys.readouterr().err


def test_cli_report_plan_evaluate_on_a_finished_run(finished, tmp_path, capsys):
    out, report = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "report.md").unlink()
    (copy / "loss.png").unlink()
    assert cli("report", str(copy)) == 0
    assert (copy / "report.md").exists() and (copy / "loss.png").exists()
    assert "test loss" in capsys.readouterr().out
    plan_path = tmp_path / "p.json"
    assert cli("plan", str(copy), "--output", str(plan_path), "--target-rank", "2") == 0
    assert {m.rank for m in Plan.load(plan_path).modules} == {2}
    assert cli("plan", str(copy), "--output", str(plan_path)) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    capsys.readouterr()
    assert cli("evaluate", str(copy / "model"), "--no-sd", "--block-size", "16", "--max-test-examples", "48") == 0
    assert f"test loss {report.test_loss_after:.4f}" in capsys.readouterr().out
    assert cli("report", str(tmp_path)) == 2
    assert "holds no report.json" in capsys.readouterr().err


def test_overwrite_replaces_a_finished_run(finished, tmp_path):
    out, report = finished
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    (copy / "notes.txt").write_text("mine")  # not a run artifact: left alone
    old = (copy / "report.json").stat().st_mtime_ns
    again = run_pipeline(replace(small_config(copy), output=OutputConfig(dir=str(copy), overwrite=True)))
    assert (copy / "report.json").stat().st_mtime_ns != old and (copy / "notes.txt").read_text() == "mine"
    for key in NUMBERS:  # same config, same numbers
        assert getattr(again, key) == getattr(report, key), key


def test_finished_run_has_a_model_card_and_a_dense_export(finished, tmp_path):
    """model/README.md holds report.json's numbers; `sdcompress export RUN --format dense`
    loads with plain from_pretrained and gives the compressed model's logits."""
    from transformers import AutoModelForCausalLM

    from sdcompress.compress import load_compressed
    from sdcompress.report.model_card import read_front_matter

    out, _ = finished
    data = json.loads((out / "report.json").read_text())
    meta = read_front_matter((out / "model" / "README.md").read_text())
    assert {key: meta["sdcompress"][key] for key in NUMBERS} == {key: data[key] for key in NUMBERS}
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["perplexity (after compression)"] == data["evaluation_after"]["perplexity"]
    assert meta["sdcompress"]["preserved"] == data["verdict"]["preserved"]
    assert cli("export", str(out), "--format", "dense", "--output-dir", str(tmp_path / "dense")) == 0
    dense = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dense"))
    x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((dense(x).logits - load_compressed(out / "model").model(x).logits).abs().max()) <= 1e-5
