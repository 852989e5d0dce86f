"""Sizing plans to a budget: the size of a list of module plans, and a bisection on one knob.

Every planner here has one scalar knob (SD scale, rank fraction, energy threshold, kept
fraction) whose plans grow monotonically with it, so "the largest plan within the
budget" is a bisection on that knob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sdcompress.errors import ConfigError
from sdcompress.plan.schema import ModulePlan


def size_fraction(modules: Sequence[ModulePlan], key: str) -> float:
    """Compressed size of the planned weights over their dense size.

    Args:
        modules: module plans.
        key: ``"params_fraction"`` (stored weight values) or ``"bytes_fraction"`` (bytes).
    """
    if key == "params_fraction":
        before = sum(m.params_before() for m in modules)
        after = sum(m.params_after() for m in modules)
    elif key == "bytes_fraction":
        before = sum(m.bytes_before() for m in modules)
        after = sum(m.bytes_after() for m in modules)
    else:
        raise ConfigError(f"unknown budget key {key!r}; use 'params_fraction' or 'bytes_fraction'")
    return after / before if before else 1.0


def budget_key(budget: Mapping[str, float]) -> tuple[str, float] | None:
    """The (key, value) of a one-entry budget, or ``None`` for no budget."""
    if not budget:
        return None
    (key, value), = budget.items()
    return key, float(value)


def fit_budget(
    make: Callable[[float], list[ModulePlan]],
    lo: float,
    hi: float,
    key: str,
    target: float,
    *,
    iters: int = 48,
) -> tuple[float, list[ModulePlan], bool]:
    """The largest knob ``x`` in ``[lo, hi]`` whose plan fits the budget.

    Args:
        make: knob → module plans, monotone (a larger knob never makes a smaller plan).
        lo, hi: knob range.
        key: budget key (see :func:`size_fraction`).
        target: the budget's fraction.
        iters: bisection steps.

    Returns:
        ``(x, modules, met)``; ``met`` is false when even ``lo`` exceeds the budget (then
        ``x = lo``).
    """
    top = make(hi)
    if size_fraction(top, key) <= target:
        return hi, top, True
    bottom = make(lo)
    if size_fraction(bottom, key) > target:
        return lo, bottom, False
    best = (lo, bottom)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        mods = make(mid)
        if size_fraction(mods, key) <= target:
            lo, best = mid, (mid, mods)
        else:
            hi = mid
    return best[0], best[1], True


@dataclass(frozen=True)
class RankOption:
    """One choice for a module in a greedy split: a rank, or dense (``rank=None``).

    Attributes:
        rank: the rank, or ``None`` for the dense weight.
        stored: stored weight values (``k(out + in)`` or ``out·in``).
        dof: degrees of freedom kept (``k(out + in − k)`` or ``out·in``).
        cost: the predicted loss of this choice (0 for dense).
    """

    rank: int | None
    stored: int
    dof: int
    cost: float


def rank_options(out_features: int, in_features: int, cost: Callable[[int], float]) -> list[RankOption]:
    """Ranks ``1..`` whose factorisation stores fewer values than the dense weight, then dense.

    Args:
        out_features, in_features: the weight's shape as a linear map.
        cost: rank → predicted loss (dense costs 0).
    """
    o, i = out_features, in_features
    opts = [RankOption(k, k * (o + i), k * (o + i - k), float(cost(k))) for k in range(1, min(o, i) + 1) if k * (o + i) < o * i]
    opts.append(RankOption(None, o * i, o * i, 0.0))
    return opts


def greedy_path(options: Mapping[str, Sequence[RankOption]]) -> list[tuple[str, int]]:
    """The order in which a greedy split raises modules, from option 0 of every module to dense.

    Each move raises, by one option, the module whose best jump ``j → j'`` (``j' > j``,
    any later option, so non-convex costs are ranked by their lower hull) has the largest
    cost reduction per stored value added, ``(cost_j − cost_j') / (stored_j' − stored_j)``;
    ties go to the earlier module in ``options`` order, then the smaller jump. Moving one
    option at a time (not the whole jump) keeps every move small, so a budget is met to
    within one rank step. Any prefix of the path is a split, and a longer prefix never
    stores less, so a budget is a prefix (monotone for :func:`fit_budget`).

    Args:
        options: per module its options in increasing size (:func:`rank_options`).

    Returns:
        moves ``(module, option index after the move)`` in order.
    """
    names = list(options)
    cur = {n: 0 for n in names}

    def best_jump(n: str) -> tuple[float, int] | None:
        opts, j = options[n], cur[n]
        best = None
        for jj in range(j + 1, len(opts)):
            ratio = (opts[j].cost - opts[jj].cost) / max(opts[jj].stored - opts[j].stored, 1)
            if best is None or ratio > best[0] * (1 + 1e-12) + 1e-300:
                best = (ratio, jj)
        return best

    jumps = {n: best_jump(n) for n in names}
    path: list[tuple[str, int]] = []
    while True:
        pick = None
        for n in names:
            b = jumps[n]
            if b is not None and (pick is None or b[0] > jumps[pick][0] * (1 + 1e-12) + 1e-300):
                pick = n
        if pick is None:
            return path
        cur[pick] += 1
        path.append((pick, cur[pick]))
        jumps[pick] = best_jump(pick)


def path_prefix(options: Mapping[str, Sequence[RankOption]], path: Sequence[tuple[str, int]], limit: float,
                key: str = "dof") -> dict[str, int]:
    """Option index per module after the longest prefix of ``path`` whose total ``key``
    (``"dof"`` or ``"stored"``) stays ≤ ``limit`` (the start, option 0 everywhere, always)."""
    cur = {n: 0 for n in options}
    total = sum(getattr(options[n][0], key) for n in options)
    for n, j in path:
        new = total - getattr(options[n][cur[n]], key) + getattr(options[n][j], key)
        if new > limit + 1e-9:
            break
        cur[n], total = j, new
    return cur


__all__ = ["RankOption", "budget_key", "fit_budget", "greedy_path", "path_prefix", "rank_options", "size_fraction"]
