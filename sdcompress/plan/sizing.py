"""Sizing plans to a budget: the size of a list of module plans, and a bisection on one knob.

Every planner here has one scalar knob (SD scale, rank fraction, energy threshold, kept
fraction) whose plans grow monotonically with it, so "the largest plan within the
budget" is a bisection on that knob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


__all__ = ["budget_key", "fit_budget", "size_fraction"]
