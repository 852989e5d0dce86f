"""``compress_(model, plan)``: apply a :class:`~sdcompress.plan.schema.Plan` in place.

Like ``torchao.quantize_``, the trailing underscore says the model is mutated: each
planned ``nn.Linear`` or transformers ``Conv1D`` is swapped for a
:class:`LowRankLinear`, :class:`MaskedLinear` or :class:`QuantizedLinear` (in the
``nn.Linear`` convention; see :mod:`sdcompress.compress.base`). Every target is checked
before anything is changed, so a bad plan leaves the model untouched.

Weights shared with another module (GPT-2's ``lm_head`` is tied to the token
embedding) are not eligible: replacing one would silently untie them and store the
matrix twice.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import Tensor, nn

from sdcompress.compress.base import CompressedLinear, Source
from sdcompress.compress.lowrank import LowRankLinear
from sdcompress.compress.prune import MaskedLinear, prune_mask
from sdcompress.compress.qlinear import QuantizedLinear
from sdcompress.compress.report import CompressionReport, ModuleReport, count_storage
from sdcompress.errors import CompressionError, PlanError
from sdcompress.models.targets import compressible_modules, is_linear_like, linear_shape, why_not_compressible
from sdcompress.plan.schema import ModulePlan, Plan, kept_count
from sdcompress.progress import progress

logger = logging.getLogger(__name__)


def linear_view(module: nn.Module) -> tuple[Tensor, Tensor | None, Source]:
    """``(W (out, in), bias, source)`` of an ``nn.Linear`` or ``Conv1D`` (weight transposed)."""
    if not is_linear_like(module):
        raise CompressionError(f"{type(module).__name__} is not an nn.Linear or Conv1D")
    _, _, transposed = linear_shape(module)
    if transposed:
        return module.weight.detach().t(), module.bias, "conv1d"
    return module.weight.detach(), module.bias, "linear"


def eligible_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Modules ``compress_`` can replace, with their ``(out, in)`` shapes.

    These are :func:`sdcompress.models.targets.compressible_modules` (the planner's
    candidates too): ``nn.Linear`` and ``Conv1D`` modules whose weight is not tied to
    another module.
    """
    return {name: linear_shape(mod)[:2] for name, mod in compressible_modules(model).items()}


def _hint(name: str, eligible: dict[str, tuple[int, int]]) -> str:
    close = difflib.get_close_matches(name, list(eligible), n=3)
    some = close or list(eligible)[:8]
    more = "" if close or len(eligible) <= 8 else f" (and {len(eligible) - 8} more)"
    return f"eligible modules {'close to it' if close else 'are'}: {some}{more}"


def check_plan_against_model(model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
    """Check every planned module exists, is eligible and has the planned shape.

    Returns:
        name → the current module, for each planned module.

    Raises:
        CompressionError: unknown or ineligible module, shape mismatch.
        PlanError: an otherwise invalid plan (a rank above the weight's full rank, bad
            bits, keep fraction, ...): :meth:`ModulePlan.validate`, the one check of rank
            against shape.
    """
    modules = dict(model.named_modules())
    eligible = eligible_modules(model)
    found: dict[str, nn.Module] = {}
    for mp in plan.modules:
        mod = modules.get(mp.name)
        if mod is None:
            raise CompressionError(f"plan module {mp.name!r} is not in the model; {_hint(mp.name, eligible)}")
        if isinstance(mod, CompressedLinear):
            raise CompressionError(f"module {mp.name!r} is already compressed ({mod.kind}); start from the original model")
        if mp.name not in eligible:
            why = why_not_compressible(model, mp.name, mod)
            raise CompressionError(f"module {mp.name!r} cannot be compressed: {why}; {_hint(mp.name, eligible)}")
        out_f, in_f = eligible[mp.name]
        if (mp.out_features, mp.in_features) != (out_f, in_f):
            raise CompressionError(
                f"plan says module {mp.name!r} is {mp.out_features}×{mp.in_features} (out×in) but the model's is "
                f"{out_f}×{in_f}; the plan was made for another model: make a new plan"
            )
        # the shapes agree, so the plan's own check of rank against shape is the model's
        mp.validate()
        found[mp.name] = mod
    return found


@torch.no_grad()
def build_compressed(mp: ModulePlan, w: Tensor, bias: Tensor | None, source: Source = "linear") -> nn.Module | None:
    """The compressed module for weight ``w`` ``(out, in)`` under ``mp`` (``None``: keep as is)."""
    mask = prune_mask(w, mp.keep_fraction, mp.row_weights, mp.col_weights) if mp.keep_fraction is not None else None
    if mp.bits is not None:
        return QuantizedLinear.from_weight(
            w, bias, mp.bits, mp.group_size, mp.rank, mask, mp.row_weights, mp.col_weights, source
        )
    if mp.rank is not None:
        return LowRankLinear.from_weight(w, bias, mp.rank, mp.row_weights, mp.col_weights, source)
    if mask is not None:
        return MaskedLinear.from_weight(w, bias, mask, source)
    return None


def empty_compressed(mp: ModulePlan, bias: bool, source: Source, dtype: torch.dtype, device: torch.device) -> nn.Module | None:
    """The module structure ``mp`` describes, with placeholder tensors (for loading saved weights)."""
    i, o = mp.in_features, mp.out_features
    if mp.bits is not None:
        n_kept = kept_count(o * i, mp.keep_fraction) if mp.keep_fraction is not None else None
        return QuantizedLinear(i, o, mp.bits, mp.group_size, mp.rank, n_kept, bias, source, dtype, device)
    if mp.rank is not None:
        return LowRankLinear(i, o, mp.rank, bias, source, dtype, device)
    if mp.keep_fraction is not None:
        return MaskedLinear(i, o, bias, source, dtype, device)
    return None


@torch.no_grad()
def _rel_error(new: Tensor, old: Tensor) -> float:
    diff = torch.linalg.norm((new.to(torch.float64) - old.to(torch.float64)))
    ref = torch.linalg.norm(old.to(torch.float64))
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / ref)


def compress_(model: nn.Module, plan: Plan) -> CompressionReport:
    """Apply ``plan`` to ``model`` in place and report sizes and errors.

    Args:
        model: any ``nn.Module``; planned modules must be ``nn.Linear`` or ``Conv1D``.
        plan: the plan (see :mod:`sdcompress.plan.schema` for the exact semantics).

    Returns:
        A :class:`CompressionReport` (whole-model sizes before/after, per-module
        ``rel_error = ‖W' − W‖_F / ‖W‖_F``, stored values and bytes).

    Raises:
        CompressionError: a planned module is missing, ineligible, of another shape, or
            given a rank larger than its matrix; the message lists real module names.
        PlanError: an invalid plan (bits other than 8/4, keep_fraction outside (0, 1], ...).
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"compress_ needs a Plan, got {type(plan).__name__}; load one with Plan.load(path)")
    targets = check_plan_against_model(model, plan)  # everything checked before anything changes
    plan.validate()  # plan-level fields and duplicate names
    params_before, bytes_before = count_storage(model)
    rows: list[ModuleReport] = []
    for mp in progress(plan.modules, desc="compress", total=len(plan.modules)):
        old = targets[mp.name]
        w, bias, source = linear_view(old)
        new = build_compressed(mp, w, bias, source)
        dense_bytes = w.numel() * w.element_size()
        if new is None:
            rows.append(ModuleReport(mp.name, "dense", None, None, None, 0.0, w.numel(), dense_bytes, w.numel(), dense_bytes))
            continue
        model.set_submodule(mp.name, new)
        params, n_bytes = new.weight_storage()
        rows.append(
            ModuleReport(
                mp.name, mp.kind, mp.rank, mp.keep_fraction, mp.bits, _rel_error(new.to_dense(), w),
                params, n_bytes, w.numel(), dense_bytes,
            )
        )
    params_after, bytes_after = count_storage(model)
    report = CompressionReport(params_before, params_after, bytes_before, bytes_after, tuple(rows))
    logger.info("compressed %d modules: %s", len(plan.modules), report.summary())
    return report


def apply_structure_(model: nn.Module, plan: Plan) -> None:
    """Replace planned modules by empty compressed modules of the planned structure.

    Used when loading a saved compressed model: the tensors come from the file, so no
    SVD, mask or quantization is computed here.

    Raises:
        CompressionError: as :func:`compress_`.
    """
    targets = check_plan_against_model(model, plan)
    plan.validate()
    for mp in plan.modules:
        w, bias, source = linear_view(targets[mp.name])
        new = empty_compressed(mp, bias is not None, source, w.dtype, w.device)
        if new is not None:
            model.set_submodule(mp.name, new)
