"""Sliding-window perplexity against a brute-force per-token loop and the blockwise loss."""

import math

import pytest
import torch

from sdcompress.data import load_data
from sdcompress.errors import ConfigError
from sdcompress.evaluate import EvalConfig, EvalReport, dataset_metrics, evaluate
from sdcompress.evaluate.perplexity import sliding_window_nll, sliding_window_perplexity, windows
from sdcompress.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2", seed=0, block_size=16, n_embd=16, n_layer=1)


@pytest.mark.parametrize("n,context,stride", [(37, 8, 3), (40, 8, 8), (9, 8, 1), (5, 8, 4), (64, 16, 5)])
def test_windows_score_every_token_once_with_enough_context(n, context, stride):
    scored = []
    for w in windows(n, context, stride):
        assert 0 <= w.begin < w.end <= n and w.end - w.begin <= context
        first = w.end - w.n_scored
        scored += list(range(first, w.end))
        if w.begin > 0:  # after the first window: at least context − stride tokens of left context
            assert first - w.begin >= context - stride
    if stride < context:
        assert scored == list(range(1, n))
    else:  # disjoint blocks: each block's first token has no left context, as in the blockwise loss
        assert scored == [i for i in range(n) if i % context != 0]


def _brute_force(model, tokens, context, stride):
    """Token by token: x_i with exactly the left context of the window that scores it."""
    total, count = 0.0, 0
    for w in windows(len(tokens), context, stride):
        for i in range(w.end - w.n_scored, w.end):
            with torch.no_grad():
                logits = model(input_ids=tokens[None, w.begin:i]).logits[0, -1].double()
            total += float(-torch.log_softmax(logits, -1)[tokens[i]])
            count += 1
    return total, count


@pytest.mark.parametrize("context,stride", [(8, 3), (16, 16), (12, 1)])
def test_sliding_window_matches_a_per_token_loop(tiny, context, stride):
    tokens = load_data("pydoc", block_size=16).test.tensors["input_ids"][:3].reshape(-1)[:41]
    total, count = sliding_window_nll(tiny.model, tokens, context=context, stride=stride, batch_size=3)
    ref_total, ref_count = _brute_force(tiny.model, tokens, context, stride)
    assert count == ref_count == (40 if stride < context else 41 - 3)
    assert total == pytest.approx(ref_total, rel=1e-5)
    loss, ppl, n = sliding_window_perplexity(tiny.model, tokens, context=context, stride=stride)
    assert n == count and loss == pytest.approx(ref_total / count, rel=1e-5) and ppl == pytest.approx(math.exp(loss))


def test_stride_equal_to_context_is_the_blockwise_loss(tiny):
    data = load_data("pydoc", block_size=16)
    blockwise, _, _ = dataset_metrics(tiny, data.test, batch_size=8, limit=24)
    loss, _, n = sliding_window_perplexity(tiny.model, data.test.tensors["input_ids"][:24].reshape(-1), context=16, stride=16)
    assert n == 24 * 15 and loss == pytest.approx(blockwise, rel=1e-5)
    shorter, _, _ = sliding_window_perplexity(tiny.model, data.test.tensors["input_ids"][:24].reshape(-1), context=16, stride=4)
    assert shorter != pytest.approx(loss, rel=1e-6)  # more left context: a different (here measured) loss


def test_evaluate_reports_window_loss_on_a_local_text_file(tiny, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * i}" for i in range(200)))
    data = load_data(str(text), block_size=16)
    rep = evaluate(tiny, data, config=EvalConfig(remeasure_sd=False, max_test_examples=10, max_train_examples=10,
                                                 context_length=16, stride=8, batch_size=4))
    ids = data.test.tensors["input_ids"][:10].reshape(-1)
    loss, ppl, n = sliding_window_perplexity(tiny.model, ids, context=16, stride=8)
    assert (rep.context_length, rep.stride, rep.window_tokens) == (16, 8, n)
    assert rep.window_loss == pytest.approx(loss) and rep.window_perplexity == pytest.approx(ppl)
    assert "sliding window (context 16, stride 8)" in rep.summary()
    assert EvalReport.from_dict(rep.to_dict()) == rep
    default = evaluate(tiny, data, config=EvalConfig(remeasure_sd=False, max_test_examples=10, max_train_examples=10))
    assert (default.context_length, default.stride) == (16, 8)  # the block length and half of it
    off = evaluate(tiny, data, config=EvalConfig(remeasure_sd=False, max_test_examples=10, max_train_examples=10,
                                                 sliding_window=False))
    assert off.window_loss is None


def test_bad_windows_are_refused(tiny):
    with pytest.raises(ConfigError, match="evaluate.stride must be at most context_length"):
        EvalConfig(context_length=8, stride=9)
    with pytest.raises(ConfigError, match="context_length must be an integer ≥ 2"):
        EvalConfig(context_length=1)
    with pytest.raises(ConfigError, match="longer than the model takes"):
        sliding_window_nll(tiny.model, torch.zeros(100, dtype=torch.long), context=tiny.model.config.n_positions + 1, stride=4)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        windows(1, 8, 4)
