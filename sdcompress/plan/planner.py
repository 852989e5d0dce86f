"""The SD-guided planner: estimates + module shapes (+ curvature) + config → :class:`Plan` (pure).

How many degrees of freedom: from SD
------------------------------------
SD (PAPER.md §2) is the dimension of the set SGD wanders on at the edge of stability:
about SD directions of parameter space are not contracted away. A compressed model that
keeps fewer than SD degrees of freedom cannot follow the attractor, so SD is a floor on
the degrees of freedom kept. A rank-k ``out × in`` matrix has ``k(out + in − k)``
degrees of freedom (the dimension of the manifold of rank-k matrices); a mask keeps its
kept weights.

1. **Per-module SD.** ``SD_m`` is the attractor's directions living in module m's
   weight: ``SDEstimate.module_sd[weight name]`` when the estimate measured it (exact:
   dense; density methods: the mixed-form Lanczos estimator, PAPER.md §8). Without it,
   SD is allotted by water-filling ``SD_m = min(n_m, c · share_m)`` (``share_m`` the
   module's size share, mixed with its energy in a *converged* Lyapunov subspace as
   ``a · e_m + (1 − a) n_m/d``, ``a = min(1, m/SD)``). Either way the target modules
   together carry ``T = t · Σ_m SD_m`` degrees of freedom (``t = sd_scale``; 1 for the
   floor, raised by the closed loop ``--tolerance``).

Where they go: from the measured curvature, not from size
----------------------------------------------------------
2. **Split across modules (curvature greedy).** With the per-module curvature of
   :func:`sdcompress.plan.curvature.module_curvature` (``curvature=``), each module's
   truncation to rank k is priced by its second-order loss increase
   ``c_m(k) = ½ δ_kᵀ H_mm δ_k`` (δ_k = W − W_k, H_mm the minibatch Hessian restricted to
   the module, averaged over ``curvature_batches`` minibatches). Every module starts at
   rank 1; :func:`sdcompress.plan.sizing.greedy_path` then raises, one move at a time,
   the module whose next rank (or dense) buys the largest predicted loss reduction per
   stored value, until the total degrees of freedom would exceed ``T``. So the count is
   SD's and the split is the dynamics': H_mm is the curvature the EoS dynamics sit on
   (its top eigenvalues are the expanding directions' ``|1 − η λ| > 1``), and c_m(k)
   weighs each removed direction by it, which neither size nor the expansion share does.
   A module may end below its own ``SD_m`` while another gets more; the plan records
   per module ``sd_share`` (SD_m / SD), ``expansion_share`` (E_m from
   ``SDEstimate.module_expansion``) and ``dof`` (given), and the notes the predicted
   total Σ c_m.

   Why not split in proportion to the expansion share E_m or to SD_m? Measured (PAPER.md
   §8): SD_m tracks size within ~0.03 (SD counts the weight-decay-contracted bulk, spread
   evenly), so an SD_m split *is* a size split; and a split in proportion to E_m loses on
   the digits MLP (+1.31 nats at 50% of stored values against +0.68 for uniform rank):
   a share of where the dynamics expand is not a number of degrees of freedom. The
   benchmark (``benchmarks/compression.py``, ``results/compression/``) compares this
   rule with the size-, trace- (HAWQ-like) and HAWQ-v2-proportional baselines at equal
   size; read it for where it wins and where it does not.

   Without curvature (the planner is pure and may be called without a model) each
   module keeps its own floor: the smallest k with ``k(out + in − k) ≥ SD_m``, dense when
   ``k(out + in) ≥ out·in``; the notes say the split is then SD_m's (≈ size).

3. **Within a module.** The rank-k subspace is the plain truncated SVD, unless the
   Lyapunov frame passed its convergence test (``SDEstimate.converged is True``): then
   its energy in each output row ``a`` and input column ``b`` of the weight gives the
   weighted SVD's row/column weights ``(1 − γ) + γ · energy / mean(energy)``
   (γ = ``subspace_weighting``), and pruning scores become ``|W_ab| · √(r_a c_b)``. An
   unconverged frame (``converged`` false or unknown) sits in the neutral bulk
   (PAPER.md §8) and is not used; the notes say which.

4. **Pruning and bits.** A pruning mask keeps ``⌈t · SD_m⌉`` weights; ``bits = "auto"``
   gives 4 bits to the least attractor-dense modules covering ``1 − t·SD/d`` of the
   target weights, 8 to the rest.

5. **Budgets.** With ``budget`` the scale ``t`` is the largest (bisection) whose plan
   fits; if that needs ``t < sd_scale`` the floor wins unless ``below_floor`` (then the
   notes say the plan keeps fewer degrees of freedom than SD).

The floor is a count, not a guarantee that the loss is kept: the plan notes give the
predicted loss, the evaluation measures it, and ``--tolerance`` (closed loop) raises
``t`` until the test loss is within tolerance. When SD ≈ d (models trained without
weight decay, PAPER.md §7) the floor permits little compression; the notes say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from sdcompress.errors import ConfigError, PlanError
from sdcompress.estimator.result import SDEstimate
from sdcompress.plan.config import PlanConfig
from sdcompress.plan.curvature import ModuleCurvature
from sdcompress.plan.schema import ModulePlan, Plan
from sdcompress.plan.sizing import RankOption, budget_key, fit_budget, greedy_path, path_prefix, rank_options, size_fraction
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
    """Whichever of the two estimates carries a *converged* Lyapunov subspace (``subspace``
    first); ``None`` when neither does (an unconverged frame is not used, step 3)."""
    for est in (subspace, estimate):
        if est is not None and est.subspace is not None and est.converged is True:
            return est
    return None


def unconverged_subspace(estimate: SDEstimate, subspace: SDEstimate | None) -> SDEstimate | None:
    """An estimate carrying a subspace that did not pass (or never ran) its convergence test."""
    for est in (subspace, estimate):
        if est is not None and est.subspace is not None and est.converged is not True:
            return est
    return None


def measured_shares(estimate: SDEstimate, subspace: SDEstimate | None,
                    modules: Sequence[ModuleInfo]) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """Per module (by module name) the measured ``SD_m`` and expansion share ``E_m``.

    Read from ``module_sd`` / ``module_expansion`` (keyed by parameter name; the module's
    weight tensor is used) of ``estimate``, else of ``subspace``. Each is ``None`` when
    neither estimate measured it or it misses a module's weight.
    """
    def pick(attr: str) -> dict[str, float] | None:
        for est in (estimate, subspace):
            table = getattr(est, attr, None) if est is not None else None
            if table and all(m.weight in table for m in modules):
                return {m.name: float(table[m.weight]) for m in modules}
        return None

    return pick("module_sd"), pick("module_expansion")


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


def curvature_options(modules: Sequence[ModuleInfo], curvature: Mapping[str, ModuleCurvature]) -> dict[str, list[RankOption]]:
    """Per module the rank options priced by ``½ δ_kᵀ H_mm δ_k`` (step 2)."""
    return {m.name: rank_options(m.out_features, m.in_features, curvature[m.name].cost) for m in modules}


@dataclass(frozen=True)
class _Split:
    """The curvature split's inputs, computed once per plan (the path is independent of t)."""

    options: dict[str, list[RankOption]]
    path: list[tuple[str, int]]


def _sd_modules(
    estimate: SDEstimate,
    modules: Sequence[ModuleInfo],
    config: PlanConfig,
    allotments: Mapping[str, Allotment],
    scale: float,
    module_sd: Mapping[str, float] | None,
    split: _Split | None = None,
    expansion: Mapping[str, float] | None = None,
) -> list[ModulePlan]:
    floors = module_floors(estimate, modules, allotments, scale, module_sd)
    chosen: dict[str, RankOption] = {}
    if split is not None and config.rank_mode == "auto":
        total = sum(floors.values())
        cur = path_prefix(split.options, split.path, total, key="dof")
        chosen = {n: split.options[n][j] for n, j in cur.items()}
    sd_total = estimate.sd if estimate.sd > 0 else 0.0
    base_floors = floors if scale == 1 else module_floors(estimate, modules, allotments, 1.0, module_sd)
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
        base_sd = base_floors[m.name]
        share = f"SD share {dof:.1f}" if scale == 1 else f"{scale:.3g} × SD share = {dof:.1f}"
        kw["sd_share"] = round(base_sd / sd_total, 6) if sd_total > 0 else 0.0
        if expansion is not None:
            kw["expansion_share"] = round(max(expansion[m.name], 0.0), 6)
        rows, cols = importance_weights(al.row_energy, gamma), importance_weights(al.col_energy, gamma)
        bit_note = f"; {bits} bits (attractor density {al.density:.2f})" if config.bits_mode == "auto" else ""
        if m.name in chosen:
            opt = chosen[m.name]
            cost = opt.cost
            rel = "≥" if opt.dof >= dof - 1e-9 else "BELOW"
            why = (f"SD_m = {base_sd:.1f}; curvature split of {scale:.3g} × Σ SD_m: "
                   f"{'dense' if opt.rank is None else f'rank {opt.rank}'} keeps {opt.dof} degrees of freedom ({rel} "
                   f"{dof:.1f}), predicted ½δᵀHδ = {cost:.3g} nats")
            extra = dict(dof=float(opt.dof), predicted_cost=round(float(cost), 9))
            if opt.rank is None:
                plans.append(ModulePlan(**kw, **extra, reason=why + bit_note))
            else:
                plans.append(ModulePlan(**kw, **extra, rank=opt.rank, row_weights=rows, col_weights=cols, reason=why + bit_note))
            continue
        if config.rank_mode == "manual":
            k = int(config.target_rank)
            if k >= min(o, i) and config.clip_rank:
                plans.append(ModulePlan(**kw, reason=f"rank {k} ≥ full rank {min(o, i)}: kept dense{bit_note}"))
                continue
            check_rank(m, k)
            below = "" if k * (o + i - k) >= dof else f" (below its SD floor of {dof:.0f})"
            plans.append(ModulePlan(**kw, rank=k, row_weights=rows, col_weights=cols, dof=float(k * (o + i - k)),
                                    reason=f"rank {k} set by hand: {k * (o + i - k)} degrees of freedom{below}"))
        elif config.rank_mode == "auto":
            k = rank_floor(o, i, dof)
            why = f"{share}: rank {k} keeps k(o+i−k) = {k * (o + i - k)} ≥ {dof:.1f} degrees of freedom"
            if k * (o + i) >= o * i:
                plans.append(ModulePlan(**kw, dof=float(o * i),
                                        reason=f"{why}, but k(o+i) = {k * (o + i)} ≥ o·i = {o * i}: kept dense{bit_note}"))
            else:
                plans.append(ModulePlan(**kw, rank=k, row_weights=rows, col_weights=cols, dof=float(k * (o + i - k)),
                                        reason=why + bit_note))
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
                plans.append(ModulePlan(**kw, dof=float(o * i), reason=f"{why}: all weights kept, dense{bit_note}"))
            else:
                from sdcompress.plan.schema import kept_count

                plans.append(ModulePlan(**kw, keep_fraction=kf, row_weights=rows, col_weights=cols,
                                        dof=float(kept_count(o * i, kf)), reason=why + bit_note))
        else:
            plans.append(ModulePlan(**kw, dof=float(o * i),
                                    reason=f"bits only{bit_note}" if bits else "nothing asked: kept as is"))
    return plans


def _notes(estimate: SDEstimate, modules: Sequence[ModuleInfo], allotments: Mapping[str, Allotment], sub: SDEstimate | None,
           config: PlanConfig, scale: float, plans: Sequence[ModulePlan], *, subspace: SDEstimate | None = None,
           measured_sd: bool = False, split: bool = False) -> list[str]:
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
        raw = unconverged_subspace(estimate, subspace)
        if raw is not None:
            notes.append(f"the Lyapunov frame ({raw.method}, m = {raw.subspace.shape[1]}) has converged = {raw.converged}: an "
                         "unconverged frame sits in the neutral bulk (PAPER.md §8), so its subspace is NOT used; the SVD and "
                         "pruning are unweighted.")
        else:
            notes.append("no converged Lyapunov subspace: the SVD and pruning are unweighted.")
    else:
        m_cols = sub.subspace.shape[1]
        if m_cols < estimate.sd:
            notes.append(f"the Lyapunov subspace tracks m = {m_cols} of ~{estimate.sd:.0f} attractor directions: it decides "
                         f"{m_cols / max(estimate.sd, 1):.1%} of each module's share and the row/column weights; the rest of "
                         "SD is spread by parameter count.")
    if measured_sd:
        notes.append(f"SD_m measured per module (module_sd of the {estimate.method} estimate).")
    else:
        notes.append("SD_m allotted (the estimate has no module_sd): by parameter count, or by a converged subspace's energy.")
    covered = [p for p in plans if p.name in allotments]
    if config.rank_mode == "auto" and split:
        pred = sum(p.predicted_cost or 0.0 for p in covered)
        given = sum(p.dof or 0.0 for p in covered)
        notes.append(f"split by curvature: {given:.0f} degrees of freedom (≤ {scale:.3g} × Σ SD_m) placed greedily by the "
                     f"predicted loss ½ δᵀ H_mm δ of each module's truncation; predicted total {pred:.3g} nats (second order, "
                     "modules independent). The floor is a count, not a guarantee: if the evaluation shows the loss is not "
                     "preserved, re-run with --tolerance <nats> (the closed loop raises the scale until it is).")
    elif config.rank_mode == "auto":
        notes.append("no per-module curvature given: each module keeps its own floor k(out+in−k) ≥ SD_m, so the split follows "
                     "SD_m (≈ size, PAPER.md §8). The floor is a count, not a guarantee: if the loss is not preserved, "
                     "re-run with --tolerance <nats>.")
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
    curvature: Mapping[str, ModuleCurvature] | None = None,
) -> Plan:
    """The SD-guided plan (see the module docstring for the rule).

    Args:
        estimate: the whole-model SD estimate (its ``d`` counts the parameters SD is of).
        modules: target modules (:func:`sdcompress.plan.targets.describe_modules`).
        config: planner settings; default ``PlanConfig()``.
        subspace: a Lyapunov estimate carrying ``subspace`` (d, m); ``estimate`` itself
            is used when it carries one.
        module_sd: optional per-module SD values (by module name) that replace the
            allotment; default: the estimate's measured ``module_sd``.
        curvature: per-module curvature (:func:`sdcompress.plan.curvature.module_curvature`);
            with it ``target_rank="auto"`` splits by curvature (step 2), without it each
            module keeps its own floor.

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
    measured, expansion = measured_shares(estimate, subspace, covered)
    measured_sd = module_sd is None and measured is not None
    if module_sd is None:
        module_sd = measured
    split = None
    if config.rank_mode == "auto" and curvature and all(m.name in curvature for m in covered):
        options = curvature_options(covered, curvature)
        split = _Split(options, greedy_path(options))
    budget = budget_key(config.budget)
    notes_extra: list[str] = []
    scale = float(config.sd_scale)
    auto = config.rank_mode == "auto" or config.rank_mode == "off" and (config.prune_mode == "auto" or config.bits_mode == "auto")
    if budget is not None and auto:
        key, target = budget
        hi = max(estimate.d / max(estimate.sd, 1e-12), scale) if estimate.sd > 0 else scale
        lo = 1e-6 if config.below_floor else scale
        scale, plans, met = fit_budget(lambda t: _sd_modules(estimate, modules, config, allotments, t, module_sd, split, expansion),
                                       lo, hi, key, target)
        if not met:
            notes_extra.append(f"budget {key} = {target:g} is not met: the SD floor needs {size_fraction(plans, key):.3f}; "
                               "the floor wins (set below_floor to trade it for size)")
        elif scale < config.sd_scale:
            notes_extra.append(f"the budget {key} = {target:g} keeps only {scale:.3f} × SD degrees of freedom: BELOW the SD "
                               "floor, so SD gives no support for keeping generalization here")
    else:
        plans = _sd_modules(estimate, modules, config, allotments, scale, module_sd, split, expansion)
        if budget is not None:
            notes_extra.append(f"budget {budget[0]} = {budget[1]:g} ignored: ranks / fractions / bits were set by hand")
    notes = _notes(estimate, modules, allotments, sub, config, scale, plans, subspace=subspace,
                   measured_sd=measured_sd or module_sd is not None, split=split is not None) + notes_extra
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
    curvature: Mapping[str, ModuleCurvature] | None = None,
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
        curvature: per-module curvature (the SD planner's split; ``trace`` and ``hawq``).

    Raises:
        ConfigError, PlanError: see :func:`plan_sd` and :mod:`sdcompress.plan.baselines`.
    """
    from sdcompress.plan.baselines import plan_baseline

    config = (config or PlanConfig()).validate()
    if config.strategy == "sd":
        if estimate is None:
            raise ConfigError("the 'sd' strategy needs an SD estimate; run 'sdcompress estimate' first or pick a baseline")
        return plan_sd(estimate, modules, config, subspace=subspace, module_sd=module_sd, curvature=curvature)
    budget = dict(config.budget)
    if not budget:
        if estimate is None:
            raise ConfigError(f"baseline {config.strategy!r} needs a budget (e.g. params_fraction) or an SD estimate to match")
        sd_cfg = replace(config, strategy="sd", prune="off" if config.rank_mode != "off" else config.prune)
        ref = plan_sd(estimate, modules, sd_cfg, subspace=subspace, module_sd=module_sd, curvature=curvature)
        key = "bytes_fraction" if config.strategy == "uniform-bits" or any(m.bits for m in ref.modules) else "params_fraction"
        budget = {key: max(size_fraction(ref.modules, key), 1e-6)}
    return plan_baseline(config.strategy, modules, stats or {}, config, budget=budget, estimate=estimate, curvature=curvature)


__all__ = [
    "Allotment",
    "allot",
    "curvature_options",
    "importance_weights",
    "make_plan",
    "measured_shares",
    "module_floors",
    "plan_sd",
    "rank_floor",
    "subspace_of",
    "water_fill",
]
