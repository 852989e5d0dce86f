"""SDTracker / SDCallback: right numbers at the asked steps, and training left bit-identical."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdcompress.callback import SDCallback, SDTracker
from sdcompress.errors import ConfigError, ModelError
from sdcompress.estimator import EstimateConfig, sharpness_dimension

LR, WD = 0.5, 0.01


def _classification_batches(n_batches: int = 2, n: int = 24, dim: int = 6, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randint(classes, (n,), generator=g))
        for _ in range(n_batches)
    ]


def _mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(6, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers).double()


def _dense_reference(model: nn.Module, batches) -> tuple[float, float]:
    """(λ_max of batch 0, exact SD over the batches) from reverse-over-reverse float64 Hessians."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(w, batch):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(torch.Size(s).numel())
            params[n] = w[i : i + k].view(s)
            i += k
        x, y = batch
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    spectra = []
    for batch in batches:
        H = torch.func.jacrev(torch.func.grad(lambda w: loss(w, batch)))(w0)
        spectra.append(torch.linalg.eigvalsh(H))
    exps = np.mean([np.sort(np.log(np.abs(1 - LR * WD - LR * a.numpy())))[::-1] for a in spectra], axis=0)
    return float(spectra[0].max()), sharpness_dimension(exps)


def test_tracker_matches_dense_reference_at_the_asked_steps(tmp_path: Path) -> None:
    model, batches = _mlp(), _classification_batches()
    d = sum(p.numel() for p in model.parameters())
    tracker = SDTracker(
        model, batches, lr=LR, weight_decay=WD, every=3, sharpness_steps=d,
        estimate=EstimateConfig(method="exact", n_batches=2, n_bootstrap=0), path=tmp_path / "sd.json",
    )
    logged = [s for s in range(1, 8) if tracker.maybe_log(s) is not None]
    assert logged == [3, 6]
    sharp, sd = _dense_reference(model, batches)
    for rec in tracker.history:
        assert rec["sharpness"] == pytest.approx(sharp, rel=1e-8)
        assert rec["sharpness_threshold"] == pytest.approx(2 / LR) and rec["at_eos"] == (sharp + WD >= 2 / LR)
        assert rec["sd"] == pytest.approx(sd, rel=1e-8) and rec["d"] == d and rec["sd_method"] == "exact"
        assert rec["n_hvp"] > 0
    on_disk = json.loads((tmp_path / "sd.json").read_text())["records"]
    assert [r["step"] for r in on_disk] == [3, 6] and on_disk[0]["sd"] == pytest.approx(sd, rel=1e-8)
    explicit = SDTracker(model, batches, lr=LR, steps=[1, 4], estimate=False)
    assert [s for s in range(1, 8) if explicit.maybe_log(s)] == [1, 4]
    assert "sd" not in explicit.history[0] and explicit.history[0]["sharpness"] == pytest.approx(sharp, rel=1e-3)


def test_tracker_leaves_weights_grads_rng_and_modes_alone() -> None:
    model, batches = _mlp(dropout=0.2), _classification_batches()
    model.train()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    tracker = SDTracker(model, batches, lr=LR, weight_decay=WD, every=1)  # the cheap default (SD-PS)
    rec = tracker.maybe_log(1)
    assert rec is not None and rec["sd_method"] == "ps" and 0 < rec["sd"] <= rec["d"]
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), rng[2]))
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(m.training for m in model.modules())
    with pytest.raises(ModelError, match="active dropout"):
        SDTracker(model, batches, lr=LR, every=1, eval_mode=False, estimate=False).maybe_log(1)
    assert all(m.training for m in model.modules())


def test_tracker_bad_input() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match="every must be a positive integer"):
        SDTracker(model, None, lr=LR, every=0)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got -1"):
        SDTracker(model, None, lr=-1)
    with pytest.raises(ConfigError, match="no batch to measure on"):
        SDTracker(model, None, lr=LR, every=1).maybe_log(1)
    with pytest.raises(ConfigError, match="no step size"):
        SDTracker(model, _classification_batches(1), every=1, estimate=False).maybe_log(1)
    rec = SDTracker(model, None, every=1, estimate=False).maybe_log(1, _classification_batches(1)[0], lr=LR)
    assert rec is not None and rec["lr"] == LR  # custom loops may pass the batch and η per call


# ------------------------------------------------------------------ transformers.Trainer


def _train(tmp_path: Path, callback: SDCallback | None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

    from sdcompress.data import pydoc
    from sdcompress.models import tiny_gpt2_config

    blocks = pydoc(block_size=16).train.tensors["input_ids"][:64]
    dataset = [{"input_ids": b, "labels": b} for b in blocks]
    cfg = tiny_gpt2_config(block_size=16, n_embd=16, n_layer=1, n_head=2)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.1  # dropout draws from the RNG every step
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=0.05,
        optim="sgd", lr_scheduler_type="constant", weight_decay=0.01, logging_steps=2, save_strategy="no",
        report_to="none", use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback] if callback else [])
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.state.log_history


def test_trainer_callback_is_bit_identical_and_logs_at_asked_steps(tmp_path: Path) -> None:
    from sdcompress.data import pydoc

    blocks = pydoc(block_size=16).train.tensors["input_ids"]
    tracking = [{"input_ids": blocks[100:104], "labels": blocks[100:104]}]
    plain, _ = _train(tmp_path / "plain", None)
    callback = SDCallback(tracking, every=3)
    tracked, history = _train(tmp_path / "tracked", callback)
    assert plain.keys() == tracked.keys()
    assert all(torch.equal(plain[k], tracked[k]) for k in plain), "the callback changed training"
    records = [h for h in history if "sd" in h]
    assert [h["step"] for h in records] == [3, 6]
    for h in records:
        assert h["sharpness"] > 0 and h["sharpness_threshold"] == pytest.approx(2 / 0.05)
        assert 0 < h["sd"] and h["sd_method"] == "ps"
    on_disk = json.loads((tmp_path / "tracked" / "sd_log.json").read_text())["records"]
    assert [r["step"] for r in on_disk] == [3, 6]
    assert on_disk[1]["sd"] == records[1]["sd"] and on_disk[1]["weight_decay"] == 0.01
