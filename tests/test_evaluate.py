"""Evaluation metrics against direct references, and the verdict on hand-made numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

from sdcompress.data import load_data
from sdcompress.errors import ConfigError
from sdcompress.evaluate import EvalConfig, EvalReport, dataset_metrics, evaluate, verdict
from sdcompress.models import load_model


def test_verdict_on_hand_made_numbers():
    v = verdict(2.0, 2.04, 0.05, gap_before=0.1, gap_after=0.15, sd_before=300.0, sd_after=250.0, d_before=1000, d_after=600)
    assert v.preserved and v.delta_test_loss == pytest.approx(0.04)
    assert (v.test_loss_before, v.test_loss_after, v.tolerance) == (2.0, 2.04, 0.05)
    assert "preserved" in v.message and "+0.04 ≤ tolerance 0.05" in v.message
    assert "gap 0.1000 → 0.1500" in v.message and "SD 300.0 → 250.0 (d 1000 → 600)" in v.message
    no = verdict(2.0, 2.06, 0.05)
    assert not no.preserved and "NOT preserved" in no.message and "+0.06 > tolerance 0.05" in no.message
    assert verdict(2.0, 1.5, 0.01).preserved  # getting better is preserved
    assert not verdict(2.0, float("nan"), 0.05).preserved
    assert not verdict(2.0, float("inf"), 0.05).preserved
    assert verdict(1.0, 1.25, 0.25).preserved  # boundary: Δ = tolerance exactly (both exact in binary)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_tolerance_must_be_positive(bad):
    with pytest.raises(ConfigError, match="tolerance must be"):
        verdict(1.0, 1.0, bad)
    with pytest.raises(ConfigError, match="tolerance must be"):
        EvalConfig(tolerance=bad)


def test_classification_metrics_match_direct_computation():
    data = load_data("digits")
    loaded = load_model("mlp", seed=0)
    loss, acc, n = dataset_metrics(loaded, data.test, batch_size=97, limit=500)
    x, y = data.test.tensors["inputs"][:500], data.test.tensors["targets"][:500]
    with torch.no_grad():
        logits = loaded.model(x).double()
    assert n == 500
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    rep = evaluate(loaded, data, config=EvalConfig(remeasure_sd=False, max_train_examples=300))
    assert rep.n_train == 300 and rep.n_test == len(data.test)
    assert rep.gap == pytest.approx(rep.test_loss - rep.train_loss)
    assert rep.perplexity is None and rep.sd is None and rep.test_accuracy is not None
    assert EvalReport.from_dict(rep.to_dict()) == rep


def test_lm_loss_is_the_token_mean_and_perplexity():
    data = load_data("pydoc", block_size=16)
    loaded = load_model("tiny-gpt2", seed=0, block_size=16, n_embd=16, n_layer=1)
    rep = evaluate(loaded, data, config=EvalConfig(remeasure_sd=False, batch_size=7, max_test_examples=40, max_train_examples=20))
    ids = data.test.tensors["input_ids"][:40]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert rep.test_loss == pytest.approx(float(ref), rel=1e-5)
    assert rep.perplexity == pytest.approx(math.exp(rep.test_loss))
    assert rep.test_accuracy is None


def test_sd_needs_stream_and_lr():
    data = load_data("digits")
    with pytest.raises(ConfigError, match="needs the batch stream and lr"):
        evaluate(load_model("mlp"), data, config=EvalConfig(max_test_examples=10, max_train_examples=10))
