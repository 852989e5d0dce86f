"""Training at the edge of stability: determinism, resume, λ_max, EoS, divergence, cache, CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F

from sdcompress.cli.main import main
from sdcompress.config import DataConfig
from sdcompress.data import ArrayDataset, BatchStream, DatasetBundle, load_data
from sdcompress.errors import ConfigError, DivergenceError, ModelError
from sdcompress.models import MLP, FunctionalLoss, LoadedModel, load_model
from sdcompress.train import (
    TrainConfig,
    builtin_for_data,
    default_data_config,
    default_train_config,
    eos_verdict,
    pretrained_builtin,
    read_train_log,
    sharpness,
    train_sgd,
)

MLP_DATA = DataConfig(name="digits", batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _short(**kw) -> TrainConfig:
    base = dict(lr=0.2, steps=30, log_every=10, sharpness_steps=8, eval_batches=2, checkpoint_every=10)
    return TrainConfig(**{**base, **kw})


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------- determinism and resume


def test_same_seed_gives_bit_identical_training(digits):
    cfg = _short(momentum=0.5)
    runs = []
    for seed in (0, 0, 1):
        loaded = builtin_for_data("mlp", digits, seed=0)  # (initialisation seeds the global RNG)
        rng_before = torch.get_rng_state()
        result = train_sgd(loaded, digits, cfg, data_config=replace(MLP_DATA, seed=seed))
        # training reads no global RNG stream (the batches and Lanczos have their own generators)
        assert torch.equal(torch.get_rng_state(), rng_before)
        runs.append((_params(loaded.model), result.log))
    assert _same_params(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not _same_params(runs[0][0], runs[2][0])  # another ω is another trajectory
    assert [r["step"] for r in runs[0][1]] == [0, 10, 20, 30]


@dataclass(frozen=True)
class _InterruptedStream(BatchStream):
    """The seeded stream, but the run is interrupted when it asks for batch ``stop_at``."""

    stop_at: int = -1

    def batch(self, step: int):
        if step == self.stop_at:
            raise KeyboardInterrupt
        return super().batch(step)


def test_resume_from_checkpoint_equals_uninterrupted_run(digits, tmp_path):
    cfg = _short(steps=25, momentum=0.9)  # momentum: the optimizer state must be restored too
    whole = builtin_for_data("mlp", digits)
    ref = train_sgd(whole, digits, cfg, data_config=MLP_DATA, output_dir=tmp_path / "a")
    assert ref.resumed_from is None

    stream = _InterruptedStream(digits.train, 64, seed=0, stop_at=17)
    with pytest.raises(KeyboardInterrupt):
        train_sgd(builtin_for_data("mlp", digits), digits, cfg, stream=stream, output_dir=tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "b" / "train_log.json").exists()  # no finished-run marker

    again = builtin_for_data("mlp", digits)  # a fresh process would rebuild the same initial model
    res = train_sgd(again, digits, cfg, data_config=MLP_DATA, output_dir=tmp_path / "b")
    assert res.resumed_from == 10
    assert _same_params(_params(again.model), _params(whole.model))
    assert res.log == ref.log
    on_disk = read_train_log(tmp_path / "b")
    assert on_disk.log == ref.log and on_disk.verdict == ref.verdict
    saved = load_model(str(tmp_path / "b" / "model"))
    assert _same_params(_params(saved.model), _params(whole.model))

    # a checkpoint of other settings is not resumed
    other = train_sgd(builtin_for_data("mlp", digits), digits, replace(cfg, lr=0.1), data_config=MLP_DATA, output_dir=tmp_path / "b")
    assert other.resumed_from is None


# ------------------------------------------------------------------------------- λ_max


def _saddle_model() -> tuple[LoadedModel, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny float64 MLP whose loss CE − mean(logits²) has its most negative Hessian
    eigenvalue larger in magnitude than its largest one (checked against eigh below)."""
    torch.manual_seed(0)
    model = MLP((3, 4, 3), bias=False).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets) - (logits**2).mean()

    return LoadedModel(model, "saddle-mlp", "classification", loss_fn=loss_fn), (x, y)


def test_lambda_max_is_the_largest_algebraic_eigenvalue():
    loaded, batch = _saddle_model()
    fl = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
    w = fl.params_vector()
    dense = torch.func.jacrev(torch.func.grad(lambda v: fl(v, batch)))(w)  # reverse-over-reverse, float64
    evals = torch.linalg.eigvalsh((dense + dense.T) / 2)
    lo, hi = float(evals[0]), float(evals[-1])
    assert lo < 0 < hi and abs(lo) > 1.2 * hi  # the case PyHessian's power iteration gets wrong

    s = sharpness(loaded, batch, steps=fl.d)  # a full Krylov space: exact to rounding
    assert s.value == pytest.approx(hi, rel=1e-9, abs=1e-12)
    assert s.residual < 1e-8 and s.n_hvp == fl.d  # value and free residual bound: no extra product for a Ritz vector

    # the training loop logs the same number at step 0 (weights before any update)
    split = ArrayDataset({"inputs": batch[0], "targets": batch[1]}, task="classification")
    tiny = DatasetBundle("saddle", train=split, test=split)
    result = train_sgd(loaded, tiny, TrainConfig(lr=0.1, steps=0, sharpness_steps=fl.d, eval_batches=1), data_config=DataConfig(batch_size=8))
    assert result.log[0]["sharpness"] == pytest.approx(hi, rel=1e-9, abs=1e-12)


def test_eos_verdict_on_known_logs():
    lr, wd = 0.5, 0.1  # 2/η = 4
    rising = [{"step": 10 * i, "sharpness": s, "train_loss": 3.0 - 0.1 * i} for i, s in enumerate([0.5, 1.5, 3.2, 3.7, 4.2, 3.5, 4.1, 3.9])]
    v = eos_verdict(rising, lr=lr, weight_decay=wd, window=0.5, tolerance=0.1)
    # window = last 4 points: (λ + wd)/4 = 1.075, 0.9, 1.05, 1.0 -> all ≥ 0.9
    assert v.at_eos and v.n_points == 4 and v.n_at_eos == 4 and v.window_steps == (40, 70)
    assert v.progressive_sharpening and v.first_crossing_step == 30  # (3.7 + 0.1)/4 = 0.95
    assert v.loss_falling and v.median_ratio == pytest.approx((1.0 + 1.05) / 2)
    # without the wd term 3.5 would be below the bar: the comparison is λ + wd vs 2/η
    v0 = eos_verdict(rising, lr=lr, weight_decay=0.0, window=0.5, tolerance=0.1)
    assert v0.n_at_eos == 3
    # heavy-ball momentum μ moves the threshold to 2(1 + μ)/η = 7.6 for μ = 0.9: nothing is at EoS
    vm = eos_verdict(rising, lr=lr, weight_decay=wd, momentum=0.9, window=0.5, tolerance=0.1)
    assert vm.n_at_eos == 0 and not vm.at_eos and vm.threshold == pytest.approx(0.9 * 7.6)
    flat = [dict(r, sharpness=1.0) for r in rising]
    v = eos_verdict(flat, lr=lr, window=0.5, tolerance=0.1)
    assert not v.at_eos and v.first_crossing_step is None and "not at the edge" in v.message
    # a window of one point has no trend: the message reports the whole run instead
    two = eos_verdict(rising[:2], lr=lr, weight_decay=wd, window=0.5, tolerance=0.1)
    assert two.n_points == 1 and "train loss 3 → 2.9 over the run (one logged point in the window" in two.message
    assert "not falling" not in two.message and "still falling" not in two.message
    one = eos_verdict(rising[:1], lr=lr, weight_decay=wd, window=0.5, tolerance=0.1)
    assert one.message.endswith("one logged point: no trend")


# ------------------------------------------------------------------------- EoS runs


EOS_SETTINGS = {
    # short versions of the documented defaults (sdcompress.train.config): same η and wd,
    # fewer steps (and tiny-gpt2 on 32-byte blocks) to fit the test budget
    "tiny-gpt2": (TrainConfig(lr=0.3, steps=300, log_every=25, sharpness_steps=12, eval_batches=4, checkpoint_every=1000),
                  DataConfig(name="pydoc", batch_size=16, block_size=32)),
    "mlp": (TrainConfig(lr=0.2, steps=400, log_every=25, sharpness_steps=20, eval_batches=4, checkpoint_every=1000),
            DataConfig(name="digits", batch_size=64)),
}


@pytest.fixture(scope="module")
def eos_runs(tmp_path_factory):
    """Both built-ins trained at EoS once, through a private cache (shared by the tests below).

    (A module fixture is set up before conftest's per-test cache isolation, hence cache_dir.)
    """
    cache = tmp_path_factory.mktemp("eos-cache")
    return {name: pretrained_builtin(name, train_config=t, data_config=d, cache_dir=cache) for name, (t, d) in EOS_SETTINGS.items()}


@pytest.mark.parametrize("name", ["tiny-gpt2", "mlp"])
def test_builtins_reach_the_edge_of_stability(eos_runs, name):
    _, _, result = eos_runs[name]
    v = result.verdict
    assert v.at_eos, v.message
    log = result.log
    # λ_max(H_B) hovers around 2/η over the last half: not far below, not far above
    window = [r for r in log if r["step"] >= v.window_steps[0]]
    ratios = [(r["sharpness"] + result.config.weight_decay) / r["two_over_lr"] for r in window]
    assert 0.8 <= v.median_ratio <= 2.0 and sum(q >= 0.8 for q in ratios) > len(ratios) / 2
    # ... while the loss still falls: lower over the second half of the window than over
    # its first half (EoS makes single points oscillate), and far below the start
    assert v.loss_falling and v.loss_end < v.loss_start, v.message
    assert log[-1]["train_loss"] < 0.75 * log[0]["train_loss"]
    assert all(r["two_over_lr"] == pytest.approx(2 / result.config.lr) for r in log)


@pytest.mark.parametrize("name", ["tiny-gpt2", "mlp"])
def test_cached_model_is_the_trained_model(eos_runs, name):
    from sdcompress.train.eos import evaluate, fixed_subset

    loaded, data, result = eos_runs[name]
    t, d = EOS_SETTINGS[name]
    again, data2, result2 = pretrained_builtin(name, train_config=t, data_config=d, cache_dir=result.output_dir.parent)
    assert result2.output_dir == result.output_dir and result2.log == result.log and result2.verdict == result.verdict
    assert again.name == name and again.task == loaded.task
    assert _same_params(_params(again.model), _params(loaded.model))
    assert again.model.training == loaded.model.training
    batch = BatchStream(data.test, 8, seed=0).batch(0)
    with torch.no_grad():
        assert torch.equal(again.loss(batch), loaded.loss(batch))
    # the logged final test loss is the cached model's loss on the same fixed test subset
    rows = fixed_subset(data2.test, t.eval_batches * d.batch_size)
    assert evaluate(again, data2.test, rows, d.batch_size)[0] == pytest.approx(result.final_test_loss, rel=1e-6)


def test_defaults_are_documented_and_valid():
    for name in ("tiny-gpt2", "mlp", "modular-mlp"):
        cfg = default_train_config(name).validate()
        assert cfg.weight_decay > 0  # built-in EoS training uses weight decay (PAPER.md §7)
        assert default_data_config(name).name == {"tiny-gpt2": "pydoc", "mlp": "digits", "modular-mlp": "modular"}[name]
    assert default_train_config("mlp").lr == 0.2 and default_data_config("mlp").batch_size == 64
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0.0).validate()
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"lr": 0.1, "nope": 1})


# ------------------------------------------------------------------------ bad input


def test_divergence_raises_with_a_smaller_step_suggestion(digits, tmp_path):
    with pytest.raises(DivergenceError, match=r"try --lr 500\b"):
        train_sgd(builtin_for_data("mlp", digits), digits, _short(lr=1000.0), data_config=MLP_DATA)


def test_api_refuses_bad_models_and_data(digits):
    with pytest.raises(ConfigError, match="batch size"):
        train_sgd(builtin_for_data("mlp", digits), digits, _short(), data_config=DataConfig(batch_size=10**6))
    with pytest.raises(ConfigError, match="language model"):
        builtin_for_data("tiny-gpt2", digits)
    with pytest.raises(ModelError, match="not a built-in"):
        pretrained_builtin("gpt2")
    gpt = load_model("tiny-gpt2", block_size=32)
    gpt.model.transformer.drop.p = 0.1
    with pytest.raises(ModelError, match="dropout"):
        train_sgd(gpt, load_data("pydoc", block_size=32), _short(steps=1))


# ------------------------------------------------------------------------------- CLI


def test_cli_train_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "mlp", "--dataset", "digits", "--lr", "0.2", "--steps", "40", "--log-every", "20",
               "--sharpness-steps", "8", "--output-dir", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2/η = 10" in printed and "edge of stability" in printed
    log = json.loads((out / "train_log.json").read_text())
    assert [r["step"] for r in log["log"]] == [0, 20, 40]
    for r in log["log"]:
        assert {"step", "train_loss", "test_loss", "test_accuracy", "sharpness", "two_over_lr"} <= r.keys()
        assert r["two_over_lr"] == 10.0 and 0.0 <= r["test_accuracy"] <= 1.0
    assert log["config"]["lr"] == 0.2 and log["config"]["weight_decay"] > 0 and "at_eos" in log["verdict"]
    assert (out / "train_log.png").stat().st_size > 0
    assert load_model(str(out / "model")).task == "classification"
    # same command again: resumes the finished run and changes nothing
    assert main(["train", "mlp", "--lr", "0.2", "--steps", "40", "--log-every", "20", "--sharpness-steps", "8",
                 "--output-dir", str(out), "-q"]) == 0
    assert json.loads((out / "train_log.json").read_text())["log"] == log["log"]
    # other settings on the same folder: refused without --overwrite
    capsys.readouterr()
    assert main(["train", "mlp", "--lr", "0.1", "--steps", "40", "--output-dir", str(out), "-q"]) != 0
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-model"], "not built in"),
        (["gpt2"], "unreachable"),
        (["mlp", "--dataset", "no-such-dataset"], "unreachable"),
        (["mlp", "--lr", "0"], "--lr must be a finite number > 0 or 'auto', got 0.0"),
        (["mlp", "--lr", "-0.1"], "--lr must be a finite number > 0 or 'auto', got -0.1"),
        (["mlp", "--batch-size", "100000"], "batch size"),
        (["./missing-model-folder"], "does not exist"),
        (["mlp", "--dataset", "./missing.csv"], "does not exist"),
        (["tiny-gpt2", "--dataset", "digits"], "language model"),
    ],
)
def test_cli_bad_input_one_line_no_output(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    rc = main(["train", *argv, "--steps", "5", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and message in err and err.startswith("sdcompress: error:")
    assert not out.exists()


def test_cli_divergence_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "mlp", "--lr", "1000", "--steps", "20", "--output-dir", str(out), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "try --lr 500" in err
    assert not out.exists()


def test_cache_key_separates_thread_counts():
    """On a CPU the same seed trained with 1 and 2 torch threads ends at different weights
    (float reductions split by thread), so each thread count has its own cache entry."""
    from sdcompress.train.cache import cache_key

    t, d = default_train_config("mlp"), default_data_config("mlp")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cache_key("mlp", t, d, {}, 0)
        torch.set_num_threads(2)
        two = cache_key("mlp", t, d, {}, 0)
    finally:
        torch.set_num_threads(before)
    assert one != two
    assert cache_key("mlp", t, d, {}, 0) == cache_key("mlp", t, d, {}, 0)  # a pure function otherwise
