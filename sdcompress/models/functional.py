"""The loss as a function of a flat parameter vector: what every later stage differentiates.

:class:`FunctionalLoss` closes over a model and a parameter subset and exposes
``loss(w, batch)`` with ``w`` a flat (d,) tensor holding only the chosen parameters;
everything else is held fixed at the model's current values. It is built on
``torch.func.functional_call``, so ``torch.func.grad``/``jvp``/``vmap`` compose with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from sdcompress.data.core import Batch
from sdcompress.errors import ModelError
from sdcompress.models.targets import match_names

LossFn = Callable[[Tensor, Tensor], Tensor]


def model_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None = F.cross_entropy) -> Tensor:
    """Mean loss of ``model`` on ``batch``.

    Dict batches go to the model as keyword arguments and its ``.loss`` is used (Hugging
    Face models compute the shifted LM loss from ``labels``); ``(inputs, targets)``
    batches use ``loss_fn(model(inputs), targets)``.
    """
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = out.loss if hasattr(out, "loss") else out["loss"]
        if loss is None:
            raise ModelError("the model returned no loss for a dict batch: the batch needs 'labels'")
        return loss
    inputs, targets = batch
    if loss_fn is None:
        raise ModelError("a (inputs, targets) batch needs a loss_fn")
    return loss_fn(model(inputs), targets)


def active_dropout(model: nn.Module) -> list[str]:
    """Names of dropout modules that are random right now (training mode and p > 0)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            names.append(name)
    return names


def check_deterministic(model: nn.Module) -> None:
    """Refuse a model whose forward pass is random (active dropout).

    Curvature of a random function is not defined; we never switch modes silently.

    Raises:
        ModelError: naming the dropout modules and the fix.
    """
    names = active_dropout(model)
    if names:
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        raise ModelError(
            f"the model is in training mode with active dropout ({shown}): its loss is random; "
            "call model.eval() or set the dropout probabilities to 0 before estimating curvature"
        )


def select_parameters(model: nn.Module, patterns: str | Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters matched by ``patterns``.

    A pattern matches a parameter when it equals the parameter's name, equals the name
    of a module that owns it (``"transformer.h.0.attn"``), or, prefixed with ``re:``,
    when the regular expression matches the start of the name (``re.match``): the rules
    of :func:`sdcompress.models.targets.match_names`. ``None`` selects every parameter
    that requires grad.

    Raises:
        ModelError: a pattern matches nothing; the message lists some real names.
        ConfigError: an invalid ``re:`` regular expression.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if patterns is None:
        return names
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: list[str] = []
    for pattern in patterns:
        hits = match_names(pattern, names)
        if not hits:
            some = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ModelError(
                f"parameter pattern {pattern!r} matches no parameter; real names include: {some} "
                "(use an exact name, a module name, or 're:<regex>')"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return [n for n in names if n in chosen]  # model order


@dataclass(frozen=True)
class ParamLayout:
    """How a flat vector maps onto named parameter tensors."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def d(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def slices(self) -> dict[str, slice]:
        """Where each parameter lives in the flat vector."""
        out, start = {}, 0
        for n, size in zip(self.names, self.sizes):
            out[n] = slice(start, start + size)
            start += size
        return out


class FunctionalLoss:
    """``loss(w, batch)`` over a flat vector of a chosen parameter subset.

    Args:
        model: the model; parameters outside the subset stay at their current values.
        params: parameter patterns (see :func:`select_parameters`); ``None`` for all.
        loss_fn: loss on ``(logits, targets)`` for tuple batches.

    Attributes:
        layout: the flat layout of the chosen parameters.
        d: number of chosen parameters.
    """

    def __init__(self, model: nn.Module, params: str | Sequence[str] | None = None, loss_fn: LossFn | None = F.cross_entropy) -> None:
        check_deterministic(model)
        self.model = model
        self.loss_fn = loss_fn
        named = dict(model.named_parameters())
        names = select_parameters(model, params)
        self.layout = ParamLayout(tuple(names), tuple(named[n].shape for n in names))
        self._fixed = {n: p.detach() for n, p in named.items() if n not in set(names)}
        self._fixed.update({n: b for n, b in model.named_buffers()})

    @property
    def d(self) -> int:
        return self.layout.d

    def params_vector(self) -> Tensor:
        """Current values of the chosen parameters as a detached flat vector."""
        named = dict(self.model.named_parameters())
        return self.layout.flatten({n: named[n].detach() for n in self.layout.names}).clone()

    def __call__(self, w: Tensor, batch: Batch) -> Tensor:
        tensors = {**self._fixed, **self.layout.unflatten(w)}
        if isinstance(batch, Mapping):
            out = functional_call(self.model, tensors, args=(), kwargs=dict(batch))
            return out.loss if hasattr(out, "loss") else out["loss"]
        inputs, targets = batch
        if self.loss_fn is None:
            raise ModelError("a (inputs, targets) batch needs a loss_fn")
        return self.loss_fn(functional_call(self.model, tensors, (inputs,)), targets)

    def write_back(self, w: Tensor) -> None:
        """Copy a flat vector into the model's parameters (in place, no grad)."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in self.layout.unflatten(w).items():
                named[n].copy_(t)
