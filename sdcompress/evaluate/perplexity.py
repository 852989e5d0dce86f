"""Sliding-window perplexity of a causal language model ("perplexity of fixed-length
models", as the Hugging Face documentation computes it).

The text is one token stream x_0 … x_{N−1}. Windows of ``context`` tokens start every
``stride`` tokens: window w covers [b_w, e_w) with b_w = w·stride and
e_w = min(b_w + context, N). Window w scores only the tokens no earlier window scored,
the last e_w − e_{w−1} of it (all of the first window but x_0, which has no left
context), so with ``stride < context`` every token but x_0 is scored exactly once, with
at least ``context − stride`` tokens of left context (the first window's tokens with fewer).

    loss = (1 / n) Σ_{scored i} −ln p(x_i | x_{b(i)} … x_{i−1}),   perplexity = e^loss,

b(i) the start of the window that scores x_i, n the number scored. With
``stride == context`` the windows are disjoint blocks and each scores its tokens from the
second on (a window's first token has no left context): the plain blockwise loss.
Smaller strides give each token more context (lower loss) at context/stride times the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdcompress.errors import ConfigError
from sdcompress.progress import progress


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) go through the model; the last ``n_scored`` of them are scored."""

    begin: int
    end: int
    n_scored: int


def windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """The sliding windows over a stream of ``n_tokens`` (module docstring).

    Raises:
        ConfigError: ``context`` < 2, ``stride`` outside [1, context], or fewer than 2 tokens.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ConfigError(f"context length must be an integer ≥ 2, got {context!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context:
        raise ConfigError(f"stride must be an integer in [1, context length = {context}], got {stride!r}")
    if n_tokens < 2:
        raise ConfigError(f"perplexity needs at least 2 tokens of text, got {n_tokens}")
    out: list[Window] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        # a window cannot score its own first token (no left context): x_0, and with
        # stride == context each block's first token, as the blockwise loss does
        scored = min(end - prev_end, end - begin - 1)
        out.append(Window(begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


def model_context(model: nn.Module) -> int | None:
    """The longest input the model takes (``n_positions`` / ``max_position_embeddings``), if it says."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def sliding_window_nll(model: nn.Module, tokens: Tensor, *, context: int, stride: int, batch_size: int = 8,
                       desc: str = "perplexity") -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the scored tokens, and how many were scored.

    Args:
        model: a causal LM taking ``input_ids`` (B, T) and returning logits (B, T, V).
        tokens: (N,) the token stream.
        context: tokens per window (at most the model's context).
        stride: tokens between window starts, in [1, context].
        batch_size: windows per forward pass (windows of equal length are batched).
        desc: progress-bar label.

    Raises:
        ConfigError: bad context/stride, a context longer than the model takes.
    """
    limit = model_context(model)
    if limit is not None and context > limit:
        raise ConfigError(f"context length {context} is longer than the model takes ({limit} positions); "
                          f"use a context length ≤ {limit}")
    tokens = tokens.reshape(-1)
    wins = windows(len(tokens), context, stride)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    groups: list[list[Window]] = []
    for w in wins:  # consecutive windows of equal length share a forward pass
        if groups and len(groups[-1]) < batch_size and (groups[-1][0].end - groups[-1][0].begin) == (w.end - w.begin):
            groups[-1].append(w)
        else:
            groups.append([w])
    for group in progress(groups, desc=desc):
        ids = torch.stack([tokens[w.begin:w.end] for w in group]).to(device)  # (B, T)
        logp = torch.log_softmax(_logits(model, ids)[:, :-1].float(), dim=-1)  # (B, T-1, V): predicts ids[:, 1:]
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        for row, w in zip(nll, group):
            total += float(row[row.shape[0] - w.n_scored:].double().sum())
            count += w.n_scored
    return total, count


def sliding_window_perplexity(model: nn.Module, tokens: Tensor, *, context: int, stride: int,
                              batch_size: int = 8) -> tuple[float, float, int]:
    """Mean loss (nats per token), perplexity e^loss, and the number of scored tokens.

    See :func:`sliding_window_nll` for the arguments.
    """
    total, count = sliding_window_nll(model, tokens, context=context, stride=stride, batch_size=batch_size)
    loss = total / count
    return loss, (math.exp(loss) if loss < 700 else float("inf")), count


__all__ = ["Window", "model_context", "sliding_window_nll", "sliding_window_perplexity", "windows"]
