"""Which modules a plan may touch, described as plain data the planner can use without a model.

:func:`describe_modules` is the only place the planner's inputs come from a model: it
finds the target modules among the compressible ones
(:func:`sdcompress.models.targets.compressible_modules`) and records their shapes and
where their weights sit in the flat parameter vector the estimator used (so the planner
can read the Lyapunov subspace rows of each weight). :func:`module_statistics`
computes the baselines' inputs (singular values, Fisher row weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import torch
from torch import nn

from sdcompress.data.core import Batch
from sdcompress.errors import ModelError, PlanError
from sdcompress.models.functional import model_loss, select_parameters
from sdcompress.models.targets import compressible_modules, linear_shape, match_names
from sdcompress.plan.config import PlanConfig
from sdcompress.progress import progress


@dataclass(frozen=True)
class ModuleInfo:
    """A target module, as the planner sees it.

    Attributes:
        name: module name in ``model.named_modules()``.
        out_features: rows of the weight as a linear map ``(out, in)``.
        in_features: columns of that map.
        transposed: the weight is stored ``(in, out)`` (GPT-2 ``Conv1D``).
        weight: the weight parameter's name.
        offset: where the weight starts in the estimator's flat parameter vector
            (``None`` when the estimate did not cover it).
    """

    name: str
    out_features: int
    in_features: int
    transposed: bool = False
    weight: str = ""
    offset: int | None = None

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def stored_shape(self) -> tuple[int, int]:
        return (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)


@dataclass(frozen=True)
class ModuleStats:
    """Per-module statistics of the weights that baselines plan from.

    Attributes:
        singular_values: of the weight as an (out, in) map, decreasing.
        fisher_rows: empirical Fisher summed over each output row, ``Σ_j E[(∂L/∂W_ij)²]``
            (the row weights of Fisher-weighted SVD, Hsu et al. 2022).
    """

    singular_values: tuple[float, ...]
    fisher_rows: tuple[float, ...] | None = None


#: every module a plan may touch (one definition, in sdcompress.models.targets)
candidate_modules = compressible_modules


def default_targets(model: nn.Module) -> list[str]:
    """Compressible layers inside the blocks / hidden layers: not the output head.

    The output head is the model's ``get_output_embeddings()`` (Hugging Face) or, for
    plain modules, the last Linear layer, unless that would leave nothing to compress.
    Layers whose weight is shared with an embedding (tied heads) are not compressible at
    all (:func:`~sdcompress.models.targets.compressible_modules`).
    """
    cands = compressible_modules(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {name for name, m in cands.items() if m is head}
    if head is None and len(cands) > 1:
        skip.add(list(cands)[-1])
    return [n for n in cands if n not in skip]


def resolve_targets(model: nn.Module, targets: Sequence[str] | None, ignore: Sequence[str] = ()) -> list[str]:
    """Names of the modules to plan for, in model order.

    Args:
        model: the model.
        targets: exact module names (a parent name selects the layers under it) or
            ``re:<regex>`` patterns matched at the start of names
            (:func:`~sdcompress.models.targets.match_names`); ``None``: defaults.
        ignore: patterns of modules to leave out.

    Raises:
        ModelError: a pattern matches no compressible module (the message lists real
            names), or nothing is left to compress.
    """
    cands = compressible_modules(model)
    some = ", ".join(list(cands)[:6]) + (", ..." if len(cands) > 6 else "")
    chosen = default_targets(model) if targets is None else []
    for pattern in targets or ():
        hits = match_names(pattern, cands)
        if not hits:
            raise ModelError(
                f"target pattern {pattern!r} matches no Linear/Conv1D module; compressible modules include: "
                f"{some} (use an exact module name or 're:<regex>')"
            )
        chosen.extend(h for h in hits if h not in chosen)
    for pattern in ignore:
        hits = match_names(pattern, cands)
        if not hits:
            raise ModelError(f"ignore pattern {pattern!r} matches no Linear/Conv1D module; compressible modules include: {some}")
        chosen = [c for c in chosen if c not in hits]
    if not chosen:
        raise ModelError(f"no module left to compress (targets={targets!r}, ignore={list(ignore)!r}); compressible modules: {some}")
    return [n for n in cands if n in chosen]


def check_rank(module: ModuleInfo, rank: int) -> None:
    """The one check of a hand-set rank against a module's shape: 1 ≤ rank ≤ min(out, in).

    Raises:
        PlanError: naming the rank, the module, its shape and the largest rank allowed.
    """
    full = min(module.out_features, module.in_features)
    if not 1 <= rank <= full:
        raise PlanError(
            f"target rank {rank} is larger than the {module.out_features}×{module.in_features} weight of module "
            f"{module.name!r} allows (at most {full}); use --target-rank ≤ {full}, --target-rank auto, "
            "or leave that module out with --ignore"
        )


def check_target_rank(config: PlanConfig, modules: Sequence[ModuleInfo]) -> None:
    """Refuse a hand-set ``target_rank`` above a target module's full rank (unless
    ``clip_rank``, which keeps such modules dense), before anything is computed.

    Raises:
        PlanError: see :func:`check_rank`.
    """
    if config.rank_mode == "manual" and not config.clip_rank and config.strategy == "sd":
        for m in modules:
            check_rank(m, int(config.target_rank))


def describe_modules(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    *,
    params: str | Sequence[str] | None = None,
) -> list[ModuleInfo]:
    """Shapes and flat-vector offsets of the target modules.

    Args:
        model: the model (not changed).
        targets, ignore: see :func:`resolve_targets`.
        params: the parameter patterns the estimate was restricted to (``SDEstimate.params``);
            offsets index that flat vector, in :func:`select_parameters` order.

    Raises:
        ModelError: see :func:`resolve_targets`.
    """
    cands = compressible_modules(model)
    shapes = dict(model.named_parameters())
    offsets, start = {}, 0
    for n in select_parameters(model, params):
        offsets[n] = start
        start += shapes[n].numel()
    infos = []
    for name in resolve_targets(model, targets, ignore):
        o, i, t = linear_shape(cands[name])
        weight = f"{name}.weight" if name else "weight"
        infos.append(ModuleInfo(name, o, i, t, weight, offsets.get(weight)))
    return infos


def module_statistics(
    model: nn.Module,
    modules: Sequence[ModuleInfo],
    batches: Sequence[Batch] = (),
    *,
    loss_fn=torch.nn.functional.cross_entropy,
) -> dict[str, ModuleStats]:
    """Singular values and (with ``batches``) Fisher row sums of each module's weight.

    The empirical Fisher of weight ``W_ij`` is the mean over batches of ``(∂L_B/∂W_ij)²``;
    its row sums are the row weights of Fisher-weighted SVD. The model's weights are not
    changed (``torch.autograd.grad`` leaves ``.grad`` untouched).

    Args:
        model: the model.
        modules: from :func:`describe_modules`.
        batches: minibatches for the Fisher; empty: singular values only.
        loss_fn: loss on (logits, targets) for tuple batches.
    """
    named = dict(model.named_parameters())
    weights = {m.name: named[m.weight] for m in modules}
    fisher = {m.name: torch.zeros(m.out_features, dtype=torch.float64, device=weights[m.name].device) for m in modules}
    if batches:
        device = next(model.parameters()).device
        from sdcompress.data.core import move_batch

        for batch in progress(batches, desc="fisher"):
            grads = torch.autograd.grad(model_loss(model, move_batch(batch, device), loss_fn), list(weights.values()))
            for m, g in zip(modules, grads):
                g2 = (g.detach().double() ** 2)
                fisher[m.name] += (g2.sum(0) if m.transposed else g2.sum(1)) / len(batches)
    out = {}
    for m in modules:
        W = weights[m.name].detach().double()
        W = W.T if m.transposed else W  # (out, in)
        s = torch.linalg.svdvals(W).cpu().tolist()
        fr = tuple(fisher[m.name].cpu().tolist()) if batches else None
        out[m.name] = ModuleStats(tuple(s), fr)
    return out


def stats_to_dict(stats: Mapping[str, ModuleStats]) -> dict[str, dict]:
    """JSON view of :func:`module_statistics`' result."""
    return {k: {"singular_values": list(v.singular_values), "fisher_rows": None if v.fisher_rows is None else list(v.fisher_rows)} for k, v in stats.items()}


__all__ = [
    "ModuleInfo",
    "ModuleStats",
    "candidate_modules",
    "check_rank",
    "check_target_rank",
    "default_targets",
    "describe_modules",
    "module_statistics",
    "resolve_targets",
    "stats_to_dict",
]
