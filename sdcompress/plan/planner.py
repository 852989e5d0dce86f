"""The SD-guided planner: estimates + module shapes + config → :class:`Plan` (pure).

What "k ≥ SD" means here
------------------------
SD (PAPER.md §2) is the dimension of the set SGD wanders on at the edge of stability:
about SD directions of parameter space are not contracted away. A compressed model that
keeps fewer than SD degrees of freedom cannot follow the attractor, so SD is a floor on
the degrees of freedom kept, split over modules:

1. **Per-module SD by allotment.** Module m receives ``SD_m`` of the whole-model SD by
   water-filling: ``SD_m = min(n_m, c · share_m)`` with ``c`` chosen so that the
   allotments of all parameters (targets, plus one lump for everything else) sum to
   ``t · SD`` (``t = sd_scale``, 1 for the floor). ``n_m = out·in`` caps a module at
   its size. ``share_m = a · e_m + (1 − a) · n_m / d`` mixes the module's share ``e_m``
   of the Lyapunov subspace energy ``‖Q[rows of m]‖²_F / ‖Q‖²_F`` with its share of
   the parameters, where ``a = min(1, m / SD)``: the subspace tracks m of the ~SD
   attractor directions, so it decides that fraction and the rest is spread
   uniformly. Without a subspace the allotment is by size (``a = 0``).

   Why allotment and not a per-module estimate (the estimator restricted to the
   diagonal Hessian block of each module): that costs a full SLQ per module (hundreds
   of Hessian-vector products each; ~8 modules × ~300 HVPs × 0.03 s on tiny-gpt2, and
   ~72 modules at seconds per HVP on GPT-2), and diagonal-block SDs do not add up to
   the model's SD (they ignore coupling between modules), so they would not partition
   the floor. Allotment costs nothing beyond the estimates already made and sums to SD
   exactly. Per-module values can still be passed in (``module_sd``) and then win.

2. **Floor per module.** A rank-k ``out × in`` matrix has ``k(out + in − k)`` degrees
   of freedom (the dimension of the manifold of rank-k matrices), so ``target_rank =
   "auto"`` takes the smallest ``k ≥ 1`` with ``k(out + in − k) ≥ SD_m``. Storage is
   ``k(out + in)`` values; when that is not below ``out·in`` the module stays dense
   (a factorisation would not shrink it). A pruning mask keeps ``⌈SD_m⌉`` weights.
   ``bits = "auto"``: quantization keeps every degree of freedom but coarsens it;
   modules are ranked by attractor density ``share_m / (n_m / d)`` and the least dense
   ones, covering a fraction ``1 − t·SD/d`` of the target weights, get 4 bits, the rest
   8 (so SD ≈ d leaves everything at 8 bits).

3. **Which directions.** The subspace's energy in each output row ``a`` and input
   column ``b`` of a module's weight gives the weighted SVD's row/column weights
   ``(1 − γ) + γ · energy / mean(energy)`` (γ = ``subspace_weighting``), so the kept
   rank-k subspace favours the rows/columns the attractor moves; pruning scores become
   ``|W_ab| · √(r_a c_b)`` (applied by ``compress_``).

4. **Budgets.** With ``budget`` the scale ``t`` is the largest (bisection) whose plan
   fits; if that needs ``t < sd_scale`` the floor wins unless ``below_floor`` (then the
   notes say the plan keeps fewer degrees of freedom than SD).

When SD ≈ d (models trained without weight decay, PAPER.md §7) the floor permits
little compression; the plan's notes say so plainly rather than hiding it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from sdcompress.errors import ConfigError, PlanError
from sdcompress.estimator.result import SDEstimate
from sdcompress.plan.config import PlanConfig
from sdcompress.plan.schema import ModulePlan, Plan
from sdcompress.plan.sizing import budget_key, fit_budget, size_fraction
from sdcompress.plan.targets import ModuleInfo, ModuleStats, check_rank


def rank_floor(out_features: int, in_features: int, dof: float) -> int:
    """Smallest ``k ≥ 1`` with ``k(out + in − k) ≥ dof`` (at most ``min(out, in)``).

    ``k(o + i − k)`` increases on ``[0, min(o, i)]`` and equals ``o·i`` there, so the root
    of ``k² − (o + i)k + dof = 0`` below ``(o + i)/2`` is the answer, rounded up.
    """
    o, i = out_features, in_features
    full = min(o, i)
    if dof >= o * i:
        return full
    s = o + i
    k = math.ceil((s - math.sqrt(max(s * s - 4.0 * dof, 0.0))) / 2 - 1e-9)
    k = max(1, min(full, k))
    while k < full and k * (s - k) < dof:  # guard against rounding
        k += 1
    return k


def water_fill(sizes: Sequence[float], shares: Sequence[float], total: float) -> list[float]:
    """Allocations ``a_g = min(size_g, c · share_g)`` summing to ``total``.

    Groups are capped at their size and the excess goes to the others in proportion to
    their shares (exact, by sorting groups by ``size/share``). ``total ≥ Σ size`` gives
    every group its size.
    """
    n = len(sizes)
    if total >= sum(sizes):
        return [float(s) for s in sizes]
    alloc = [0.0] * n
    order = sorted((g for g in range(n) if shares[g] > 0), key=lambda g: sizes[g] / shares[g])
    remaining, share_left = float(total), float(sum(shares[g] for g in order))
    for pos, g in enumerate(order):
        c = remaining / share_left if share_left > 0 else 0.0
        if c * shares[g] >= sizes[g]:
            alloc[g] = float(sizes[g])
            remaining -= sizes[g]
            share_left -= shares[g]
        else:
            for h in order[pos:]:
                alloc[h] = c * shares[h]
            break
    return alloc


@dataclass(frozen=True)
class Allotment:
    """Per-module share of the attractor.

    Attributes:
        share: ``share_m`` of the module docstring (mixed energy/size share).
        energy: the module's share of the subspace energy (``None`` without a subspace).
        density: ``share / (n_m / d)``: > 1 means the module holds more than its size's worth.
        row_energy, col_energy: subspace energy per output row / input column.
    """

    share: float
    energy: float | None
    density: float
    row_energy: tuple[float, ...] | None = None
    col_energy: tuple[float, ...] | None = None


def subspace_of(estimate: SDEstimate, subspace: SDEstimate | None) -> SDEstimate | None:
    """Whichever of the two estimates carries a Lyapunov subspace (``subspace`` first)."""
    for est in (subspace, estimate):
        if est is not None and est.subspace is not None:
            return est
    return None


def allot(estimate: SDEstimate, modules: Sequence[ModuleInfo], subspace: SDEstimate | None = None) -> dict[str, Allotment]:
    """Each covered module's share of the attractor (see the module docstring, step 1).

    Raises:
        PlanError: a module's offset falls outside the subspace's rows.
    """
    d = estimate.d
    sub = subspace_of(estimate, subspace)
    Q = None if sub is None else sub.subspace.detach().to(torch.float64).cpu()
    if Q is not None and Q.ndim != 2:
        raise PlanError(f"the Lyapunov subspace must be a (d, m) matrix, got shape {tuple(Q.shape)}")
    total = float((Q**2).sum()) if Q is not None else 0.0
    m_cols = Q.shape[1] if Q is not None else 0
    a = min(1.0, m_cols / max(estimate.sd, 1.0)) if total > 0 else 0.0
    out = {}
    for mod in modules:
        size_share = mod.numel / d
        energy = rows = cols = None
        if Q is not None and mod.offset is not None:
            if mod.offset + mod.numel > Q.shape[0]:
                raise PlanError(
                    f"module {mod.name!r} sits at rows {mod.offset}..{mod.offset + mod.numel} of the flat parameter vector, "
                    f"but the Lyapunov subspace has {Q.shape[0]} rows: the estimate was made over other parameters; "
                    "re-run the estimate on this model"
                )
            block = Q[mod.offset : mod.offset + mod.numel].reshape(*mod.stored_shape, m_cols) ** 2
            energy = float(block.sum()) / total
            r, c = block.sum(dim=(1, 2)), block.sum(dim=(0, 2))
            rows, cols = (c, r) if mod.transposed else (r, c)
            rows, cols = tuple(rows.tolist()), tuple(cols.tolist())
        share = a * energy + (1 - a) * size_share if energy is not None else size_share
        out[mod.name] = Allotment(share, energy, share / size_share, rows, cols)
    return out


def importance_weights(energy: Sequence[float] | None, gamma: float) -> tuple[float, ...] | None:
    """``(1 − γ) + γ · e / mean(e)``, rounded to 6 significant digits (> 0 for γ < 1)."""
    if energy is None or gamma == 0:
        return None
    mean = sum(energy) / len(energy)
    if not mean > 0:
        return None
    return tuple(float(f"{(1 - gamma) + gamma * e / mean:.6g}") for e in energy)


def module_floors(
    estimate: SDEstimate,
    modules: Sequence[ModuleInfo],
    allotments: Mapping[str, Allotment],
    scale: float,
    module_sd: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """``SD_m`` for every covered module at scale ``t`` (water-filled, see step 1)."""
    covered = [m for m in modules if m.name in allotments]
    rest = max(estimate.d - sum(m.numel for m in covered), 0)
    sizes = [m.numel for m in covered] + [rest]
    shares = [allotments[m.name].share for m in covered]
    shares.append(max(1.0 - sum(shares), 0.0) if rest else 0.0)
    base = estimate.sd if estimate.sd > 0 else 0.0
    alloc = water_fill(sizes, shares, scale * base)
    floors = {m.name: a for m, a in zip(covered, alloc)}
    for name, v in (module_sd or {}).items():
        if name in floors:
            floors[name] = min(float(v) * scale, float(dict((m.name, m.numel) for m in covered)[name]))
    return floors


def _auto_bits(modules: Sequence[ModuleInfo], allotments: Mapping[str, Allotment], fraction4: float) -> dict[str, int]:
    """4 bits for the least attractor-dense modules covering ``fraction4`` of the weights."""
    total = sum(m.numel for m in modules)
    order = sorted(modules, key=lambda m: (allotments[m.name].density if m.name in allotments else 0.0, -m.numel, m.name))
    bits, used = {}, 0
    for m in order:
        if used + m.numel <= fraction4 * total + 1e-9:
            bits[m.name], used = 4, used + m.numel
        else:
            bits[m.name] = 8
    return bits


def _sd_modules(
    estimate: SDEstimate,
    modules: Sequence[ModuleInfo],
    config: PlanConfig,
    allotments: Mapping[str, Allotment],
    scale: float,
    module_sd: Mapping[str, float] | None,
) -> list[ModulePlan]:
    floors = module_floors(estimate, modules, allotments, scale, module_sd)
    gamma = config.subspace_weighting
    sd_frac = scale * estimate.sd / estimate.d if estimate.d else 1.0
    bits_auto = _auto_bits(modules, allotments, max(0.0, 1.0 - sd_frac)) if config.bits_mode == "auto" else {}
    plans = []
    for m in modules:
        o, i = m.out_features, m.in_features
        bits = config.bits if config.bits_mode == "manual" else bits_auto.get(m.name)
        kw = dict(name=m.name, out_features=o, in_features=i, group_size=config.group_size, bits=bits)
        if m.name not in floors:
            plans.append(ModulePlan(**{**kw, "bits": None}, reason="not covered by the estimate: kept as is"))
            continue
        dof, al = floors[m.name], allotments[m.name]
        share = f"SD share {dof:.1f}" if scale == 1 else f"{scale:.3g} × SD share = {dof:.1f}"
        rows, cols = importance_weights(al.row_energy, gamma), importance_weights(al.col_energy, gamma)
        bit_note = f"; {bits} bits (attractor density {al.density:.2f})" if config.bits_mode == "auto" else ""
        if config.rank_mode == "manual":
            k = int(config.target_rank)
            if k >= min(o, i) and config.clip_rank:
                plans.append(ModulePlan(**kw, reason=f"rank {k} ≥ full rank {min(o, i)}: kept dense{bit_note}"))
                continue
            check_rank(m, k)
            below = "" if k * (o + i - k) >= dof else f" (below its SD floor of {dof:.0f})"
            plans.append(ModulePlan(**kw, rank=k, row_weights=rows, col_weights=cols,
                                    reason=f"rank {k} set by hand: {k * (o + i - k)} degrees of freedom{below}"))
        elif config.rank_mode == "auto":
            k = rank_floor(o, i, dof)
            why = f"{share}: rank {k} keeps k(o+i−k) = {k * (o + i - k)} ≥ {dof:.1f} degrees of freedom"
            if k * (o + i) >= o * i:
                plans.append(ModulePlan(**kw, reason=f"{why}, but k(o+i) = {k * (o + i)} ≥ o·i = {o * i}: kept dense{bit_note}"))
            else:
                plans.append(ModulePlan(**kw, rank=k, row_weights=rows, col_weights=cols, reason=why + bit_note))
        elif config.prune_mode != "off":
            if config.prune_mode == "manual":
                kf = float(config.prune)
                below = "" if kf * o * i >= dof else f" (below its SD floor of {dof:.0f} weights)"
                why = f"keeps a fraction {kf:g} set by hand{below}"
            else:
                kept = min(o * i, max(1, math.ceil(dof - 1e-9)))
                kf = kept / (o * i)
                why = f"{share}: keeps {kept} of {o * i} weights by subspace-weighted magnitude"
            if kf >= 1.0:
                plans.append(ModulePlan(**kw, reason=f"{why}: all weights kept, dense{bit_note}"))
            else:
                plans.append(ModulePlan(**kw, keep_fraction=kf, row_weights=rows, col_weights=cols, reason=why + bit_note))
        else:
            plans.append(ModulePlan(**kw, reason=f"bits only{bit_note}" if bits else "nothing asked: kept as is"))
    return plans


def _notes(estimate: SDEstimate, modules: Sequence[ModuleInfo], allotments: Mapping[str, Allotment], sub: SDEstimate | None,
           config: PlanConfig, scale: float, plans: Sequence[ModulePlan]) -> list[str]:
    ratio = estimate.sd / estimate.d if estimate.d else float("nan")
    notes = [
        f"SD ({estimate.method}) = {estimate.sd:.1f} of d = {estimate.d} parameters (SD/d = {ratio:.3f}); "
        f"each target module keeps at least {scale:g} × its share of SD degrees of freedom "
        "(rank k: k(out+in−k); mask: kept weights)."
    ]
    if ratio >= config.near_full:
        head = (f"SD ≈ d (SD/d = {ratio:.3f} ≥ {config.near_full:g}): the attractor spans almost every direction, so the SD "
                "floor permits little compression.")
        if estimate.weight_decay > 0:
            why = (f" This is with weight decay wd = {estimate.weight_decay:g} in the step map, so the neutral bulk should "
                   "contract; a short EoS run, a small η·wd, or a coarse estimate (few SLQ runs) can leave SD this high. "
                   "Train longer or with more weight decay, or compress below the floor knowing that SD then gives no "
                   "support for keeping generalization (the evaluation still measures it).")
        else:
            why = (" This is what plain SGD without weight decay gives (PAPER.md §7): every zero-curvature direction is "
                   "neutral. Train with weight decay (the built-in EoS training uses it by default), or compress below the "
                   "floor knowing that SD then gives no support for keeping generalization (the evaluation still measures it).")
        notes.append(head + why)
    if estimate.lower_bound:
        notes.append(f"SD is a lower bound (the {estimate.method} estimate's running sum stayed ≥ 0 over the tracked exponents): "
                     "the true floor may be higher.")
    if sub is None:
        notes.append("no Lyapunov subspace: SD is allotted to modules by parameter count and the SVD/pruning are unweighted.")
    else:
        m_cols = sub.subspace.shape[1]
        if m_cols < estimate.sd:
            notes.append(f"the Lyapunov subspace tracks m = {m_cols} of ~{estimate.sd:.0f} attractor directions: it decides "
                         f"{m_cols / max(estimate.sd, 1):.1%} of each module's share and the row/column weights; the rest of "
                         "SD is spread by parameter count.")
    covered = [p for p in plans if p.name in allotments]
    if config.rank_mode == "auto" and covered and all(p.rank is None for p in covered):
        notes.append("no module can be factorised without dropping below its SD floor: every module stays dense.")
    return notes


def plan_sd(
    estimate: SDEstimate,
    modules: Sequence[ModuleInfo],
    config: PlanConfig | None = None,
    *,
    subspace: SDEstimate | None = None,
    module_sd: Mapping[str, float] | None = None,
) -> Plan:
    """The SD-guided plan (see the module docstring for the rule).

    Args:
        estimate: the whole-model SD estimate (its ``d`` counts the parameters SD is of).
        modules: target modules (:func:`sdcompress.plan.targets.describe_modules`).
        config: planner settings; default ``PlanConfig()``.
        subspace: a Lyapunov estimate carrying ``subspace`` (d, m); ``estimate`` itself
            is used when it carries one.
        module_sd: optional per-module SD values that replace the allotment.

    Returns:
        The validated :class:`Plan` (strategy ``"sd"``, or ``"manual"`` for a hand-set rank).

    Raises:
        ConfigError: invalid settings. PlanError: a rank larger than a matrix.
    """
    config = (config or PlanConfig()).validate()
    if not modules:
        raise PlanError("no target modules to plan for")
    if estimate.d < 1 or not estimate.sd >= 0:
        raise PlanError(f"the estimate has d = {estimate.d} and SD = {estimate.sd}: re-run the estimate")
    sub = subspace_of(estimate, subspace)
    covered = [m for m in modules if m.offset is not None or estimate.params is None]
    allotments = allot(estimate, covered, sub)
    budget = budget_key(config.budget)
    notes_extra: list[str] = []
    scale = float(config.sd_scale)
    auto = config.rank_mode == "auto" or config.rank_mode == "off" and (config.prune_mode == "auto" or config.bits_mode == "auto")
    if budget is not None and auto:
        key, target = budget
        hi = max(estimate.d / max(estimate.sd, 1e-12), scale) if estimate.sd > 0 else scale
        lo = 1e-6 if config.below_floor else scale
        scale, plans, met = fit_budget(lambda t: _sd_modules(estimate, modules, config, allotments, t, module_sd), lo, hi, key, target)
        if not met:
            notes_extra.append(f"budget {key} = {target:g} is not met: the SD floor needs {size_fraction(plans, key):.3f}; "
                               "the floor wins (set below_floor to trade it for size)")
        elif scale < config.sd_scale:
            notes_extra.append(f"the budget {key} = {target:g} keeps only {scale:.3f} × SD degrees of freedom: BELOW the SD "
                               "floor, so SD gives no support for keeping generalization here")
    else:
        plans = _sd_modules(estimate, modules, config, allotments, scale, module_sd)
        if budget is not None:
            notes_extra.append(f"budget {budget[0]} = {budget[1]:g} ignored: ranks / fractions / bits were set by hand")
    notes = _notes(estimate, modules, allotments, sub, config, scale, plans) + notes_extra
    realised = {k: round(size_fraction(plans, k), 6) for k in ("params_fraction", "bytes_fraction")}
    plan = Plan(
        modules=tuple(plans),
        strategy="manual" if config.rank_mode == "manual" or config.prune_mode == "manual" else "sd",
        sd=float(estimate.sd),
        d=int(estimate.d),
        budget={**dict(config.budget), "sd_scale": scale, "achieved": realised},
        notes=tuple(notes),
    )
    plan.validate()
    return plan


def make_plan(
    estimate: SDEstimate | None,
    modules: Sequence[ModuleInfo],
    config: PlanConfig | None = None,
    *,
    subspace: SDEstimate | None = None,
    stats: Mapping[str, ModuleStats] | None = None,
    module_sd: Mapping[str, float] | None = None,
) -> Plan:
    """Plan with ``config.strategy``: the SD-guided planner or a baseline.

    A baseline without a budget is sized to the SD plan's size (parameters, or bytes when
    bits are planned), so the two compare at equal size.

    Args:
        estimate: SD estimate (needed by ``"sd"``, and by baselines without a budget).
        modules: target modules.
        config: planner settings.
        subspace: Lyapunov estimate with the subspace.
        stats: per-module statistics for the baselines (:func:`module_statistics`).
        module_sd: per-module SD values (SD planner only).

    Raises:
        ConfigError, PlanError: see :func:`plan_sd` and :mod:`sdcompress.plan.baselines`.
    """
    from sdcompress.plan.baselines import plan_baseline

    config = (config or PlanConfig()).validate()
    if config.strategy == "sd":
        if estimate is None:
            raise ConfigError("the 'sd' strategy needs an SD estimate; run 'sdcompress estimate' first or pick a baseline")
        return plan_sd(estimate, modules, config, subspace=subspace, module_sd=module_sd)
    budget = dict(config.budget)
    if not budget:
        if estimate is None:
            raise ConfigError(f"baseline {config.strategy!r} needs a budget (e.g. params_fraction) or an SD estimate to match")
        sd_cfg = replace(config, strategy="sd", prune="off" if config.rank_mode != "off" else config.prune)
        ref = plan_sd(estimate, modules, sd_cfg, subspace=subspace, module_sd=module_sd)
        key = "bytes_fraction" if config.strategy == "uniform-bits" or any(m.bits for m in ref.modules) else "params_fraction"
        budget = {key: max(size_fraction(ref.modules, key), 1e-6)}
    return plan_baseline(config.strategy, modules, stats or {}, config, budget=budget, estimate=estimate)


__all__ = ["Allotment", "allot", "importance_weights", "make_plan", "module_floors", "plan_sd", "rank_floor", "water_fill"]
