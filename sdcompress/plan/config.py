"""``PlanConfig``: what the planner is asked to do, in plain types (a YAML view).

The rank, pruning and bit-width settings each take ``"auto"`` (decided by SD and the
Lyapunov subspace, see :mod:`sdcompress.plan.planner`), ``"off"``, or a number set by
hand. ``strategy`` picks the SD-guided planner (``"sd"``) or one of the baselines of
:mod:`sdcompress.plan.baselines`, which are sized to the same budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sdcompress.config import FieldError, Validated, is_int, is_number, need_int
from sdcompress.errors import ConfigError
from sdcompress.models.targets import compile_pattern

#: planner names accepted by ``PlanConfig.strategy`` (the schema's ``KNOWN_STRATEGIES``
#: less "manual", which is what a hand-set ``target_rank`` records)
STRATEGIES = ("sd", "uniform-rank", "size", "trace", "hawq", "energy", "fisher", "magnitude", "uniform-bits")
#: strategies that split by the curvature restricted to each module (:mod:`sdcompress.plan.curvature`)
CURVATURE_STRATEGIES = ("sd", "trace", "hawq")
BASELINES = STRATEGIES[1:]
BUDGET_KEYS = ("params_fraction", "bytes_fraction")
SUPPORTED_BITS = (8, 4)


_is_int = is_int


@dataclass
class PlanConfig(Validated):
    """Settings of the planner.

    Attributes:
        target_rank: ``"auto"`` (the smallest rank whose degrees of freedom cover the
            module's share of SD), ``"off"`` (no low-rank factorisation), or an integer
            rank used for every target module.
        prune: ``"auto"`` (keep as many weights as the module's share of SD), ``"off"``,
            or the fraction of weights kept, in (0, 1].
        bits: ``"auto"`` (4 bits for the modules holding the least of the attractor,
            covering a fraction 1 − SD/d of the weights; 8 bits for the rest), ``"off"``
            (float), 8 or 4.
        tolerance: closed loop: raise ranks / kept weights / bits until the test loss is
            within ``tolerance`` (nats) of the original; ``None``: one try. Also the
            verdict's tolerance when set.
        targets: module names (exact, or a parent module's name) or ``"re:<regex>"``
            patterns; ``None``: the Linear/Conv1D layers inside transformer blocks or
            hidden layers (not embeddings, not the output head).
        ignore: patterns of modules to leave alone.
        budget: ``{"params_fraction": f}`` or ``{"bytes_fraction": f}`` of the target
            modules' weights after compression; ``{}``: no budget (SD decides alone).
        strategy: ``"sd"`` or a baseline name (``uniform-rank``, ``size``, ``trace``,
            ``hawq``, ``energy``, ``fisher``, ``magnitude``, ``uniform-bits``).
        seed: seed of the batches used for planning statistics (Fisher baseline).
        sd_scale: each module keeps at least ``sd_scale`` × its share of SD degrees of
            freedom (1 = the floor; the closed loop raises it).
        below_floor: let a budget push modules below the SD floor (for benchmarks at
            equal size; the plan's notes then say so). Off: the floor wins over the budget.
        subspace_weighting: γ in [0, 1): row/column importance weights are
            ``(1 − γ) + γ · energy / mean(energy)`` of the Lyapunov subspace in that row or
            column (0: plain SVD and magnitude scores).
        near_full: SD/d at or above this is "SD ≈ d": the plan says plainly that the
            floor permits little compression.
        group_size: quantization group size.
        max_tries: closed-loop attempts at most (with ``tolerance``).
        growth: factor by which each closed-loop try raises ``sd_scale`` (or the kept
            size of a hand-set plan).
        fisher_batches: minibatches used for the Fisher baseline's squared gradients.
        clip_rank: a hand-set rank larger than a module's full rank keeps that module
            dense instead of being refused (the closed loop sets it as ranks grow).
        curvature_batches: minibatches the per-module curvature (Hessian trace and
            truncation costs, :mod:`sdcompress.plan.curvature`) is averaged over, for the
            ``sd``, ``trace`` and ``hawq`` strategies; 0: do not measure it (the SD plan
            then falls back to the per-module floors).
        curvature_probes: Hutchinson probes per minibatch for the per-module traces.
    """

    SECTION: ClassVar[str] = "plan"

    target_rank: int | Literal["auto", "off"] = "auto"
    prune: float | Literal["auto", "off"] = "off"
    bits: int | Literal["auto", "off"] = "off"
    tolerance: float | None = None
    targets: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)
    strategy: str = "sd"
    seed: int = 0
    sd_scale: float = 1.0
    below_floor: bool = False
    subspace_weighting: float = 0.5
    near_full: float = 0.9
    group_size: int = 64
    max_tries: int = 4
    growth: float = 1.5
    fisher_batches: int = 4
    clip_rank: bool = False
    curvature_batches: int = 2
    curvature_probes: int = 8

    # -- derived views ---------------------------------------------------------------
    @property
    def rank_mode(self) -> str:
        """``"auto"``, ``"off"`` or ``"manual"``."""
        return self.target_rank if isinstance(self.target_rank, str) else "manual"

    @property
    def prune_mode(self) -> str:
        return self.prune if isinstance(self.prune, str) else "manual"

    @property
    def bits_mode(self) -> str:
        return self.bits if isinstance(self.bits, str) else "manual"

    def escalated(self, attempt: int) -> "PlanConfig":
        """The config of closed-loop try ``attempt`` (0 = as given): each try keeps more.

        Auto settings and budgets scale by ``growth ** attempt`` (``sd_scale``, budget
        fractions, capped at 1); a hand-set rank and kept fraction grow by the same factor
        (a rank beyond a module's full rank keeps it dense, fraction capped at 1); hand-set
        4 bits become 8 on the next try, then float.
        """
        if attempt <= 0:
            return self
        g = self.growth**attempt
        from dataclasses import replace

        kw: dict[str, Any] = {"sd_scale": self.sd_scale * g}
        if self.budget:
            kw["budget"] = {k: min(1.0, v * g) for k, v in self.budget.items()}
        if self.rank_mode == "manual":
            kw["target_rank"] = math.ceil(int(self.target_rank) * g)
            kw["clip_rank"] = True
        if self.prune_mode == "manual":
            kw["prune"] = min(1.0, float(self.prune) * g)
        if self.bits_mode == "manual":
            kw["bits"] = (4, 8, "off", "off")[min(attempt + (self.bits == 8), 3)] if self.bits in (4, 8) else self.bits
        return replace(self, **kw)

    def validate(self) -> "PlanConfig":
        """Check every setting; returns ``self`` so calls chain (run on construction).

        Raises:
            FieldError: naming the setting (``plan.NAME``), the value received and what is allowed.
            ConfigError: two settings that contradict each other.
        """
        s = self.SECTION
        tr = self.target_rank
        if isinstance(tr, str) and tr not in ("auto", "off") or not isinstance(tr, str) and (not _is_int(tr) or tr < 1):
            raise FieldError(s, "target_rank", "'auto', 'off' or a positive integer", tr)
        pr = self.prune
        if isinstance(pr, str) and pr not in ("auto", "off") or not isinstance(pr, str) and (not is_number(pr) or not 0 < pr <= 1):
            raise FieldError(s, "prune", "'auto', 'off' or the fraction of weights kept, in (0, 1]", pr)
        b = self.bits
        if isinstance(b, str) and b not in ("auto", "off") or not isinstance(b, str) and (not _is_int(b) or b not in SUPPORTED_BITS):
            raise FieldError(s, "bits", "8, 4, 'auto' or 'off'", b)
        if self.strategy not in STRATEGIES:
            raise FieldError(s, "strategy", f"one of {list(STRATEGIES)}", self.strategy)
        if self.rank_mode != "off" and self.prune_mode != "off" and self.strategy == "sd":
            raise ConfigError(
                f"target_rank={tr!r} and prune={pr!r} both cut the same weights; a module is low-rank or pruned, "
                "not both: pass --target-rank off to prune (or --prune off)"
            )
        if self.tolerance is not None and (not is_number(self.tolerance) or not self.tolerance > 0):
            raise FieldError(s, "tolerance", "a positive number of nats of test loss, or null", self.tolerance)
        for name in ("targets", "ignore"):
            pats = getattr(self, name)
            if pats is None and name == "targets":
                continue
            if not isinstance(pats, (list, tuple)) or not all(isinstance(p, str) and p for p in pats):
                raise FieldError(s, name, "a list of module names or 're:<regex>' patterns", pats)
            for p in pats:
                try:
                    compile_pattern(p)
                except ConfigError as exc:
                    raise FieldError(s, name, "a list of module names or valid 're:<regex>' patterns", p, str(exc)) from None
        if not isinstance(self.budget, dict):
            raise FieldError(s, "budget", "a mapping such as {'params_fraction': 0.5}", self.budget)
        unknown = sorted(set(self.budget) - set(BUDGET_KEYS))
        if unknown or len(self.budget) > 1:
            raise FieldError(s, "budget", f"one entry, with key one of {list(BUDGET_KEYS)}", self.budget)
        for k, v in self.budget.items():
            if not is_number(v) or not 0 < v <= 1:
                raise FieldError(s, f"budget.{k}", "in (0, 1]", v, "the fraction of the target weights kept")
        if not is_number(self.sd_scale) or not self.sd_scale > 0:
            raise FieldError(s, "sd_scale", "> 0", self.sd_scale)
        if not is_number(self.subspace_weighting) or not 0 <= self.subspace_weighting < 1:
            raise FieldError(s, "subspace_weighting", "in [0, 1)", self.subspace_weighting)
        if not is_number(self.near_full) or not 0 < self.near_full <= 1:
            raise FieldError(s, "near_full", "in (0, 1]", self.near_full)
        need_int(s, "seed", self.seed, 0)
        for name in ("curvature_batches", "curvature_probes"):
            need_int(s, name, getattr(self, name), 0)
        for name in ("group_size", "max_tries", "fisher_batches"):
            need_int(s, name, getattr(self, name), 1)
        if not is_number(self.growth) or not self.growth > 1:
            raise FieldError(s, "growth", "> 1", self.growth, "each closed-loop try keeps more")
        for name in ("below_floor", "clip_rank"):
            if not isinstance(getattr(self, name), bool):
                raise FieldError(s, name, "true or false", getattr(self, name))
        return self


__all__ = ["BASELINES", "BUDGET_KEYS", "CURVATURE_STRATEGIES", "PlanConfig", "STRATEGIES", "SUPPORTED_BITS"]
