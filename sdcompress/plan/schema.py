"""The compression plan: what each module becomes, serialised to ``plan.json``.

A :class:`Plan` is pure data. It is written before anything is changed, it can be made
without a model (planners size plans to a budget from shapes alone with
:meth:`Plan.params_after` / :meth:`Plan.bytes_after`), and ``compress_`` applies it.

Per module (a weight seen as a linear map ``W`` of shape ``(out, in)``; GPT-2's ``Conv1D``
stores it transposed, ``(in, out)``) a :class:`ModulePlan` says:

- ``rank = k``: replace ``W`` by ``U @ V`` with ``U (out, k)``, ``V (k, in)``. With row
  weights ``r`` (length out) and column weights ``c`` (length in) the factorisation is
  the weighted SVD: ``W̃ = diag(√r) W diag(√c) = Ũ S Ṽᵀ``, truncated to rank k, then
  unscaled, ``U = diag(1/√r) Ũ_k S_k^{1/2}``, ``V = S_k^{1/2} Ṽ_kᵀ diag(1/√c)``. It
  minimises ``Σ_ij r_i c_j (W − UV)_ij²`` over rank-k matrices (Eckart–Young in the
  weighted norm). Without weights it is the plain truncated SVD.
- ``keep_fraction = f``: a pruning mask keeping exactly :func:`kept_count` ``(out·in, f)``
  weights, those with the largest score ``|W_ij|·√(r_i c_j)`` (plain magnitude without
  weights).
- ``bits ∈ {8, 4}``: symmetric per-group weight-only quantization of what is stored
  (the dense weight, both low-rank factors, or the kept weights of a mask), groups of
  ``group_size`` consecutive entries along each row's input dimension.

A module may have ``rank`` or ``keep_fraction``, not both; ``bits`` combines with either.

Storage accounting (what :meth:`ModulePlan.bytes_after` predicts and ``compress_``
stores, for the weight only; the bias is unchanged):

- float tensors: ``numel × float_bytes`` (4 for float32);
- int8: 1 byte per value; int4: two values per byte, ``ceil(numel / 2)`` bytes per
  packed tensor; plus one float scale per group, ``rows × ceil(cols / group_size)``
  scales per tensor (``float_bytes`` each);
- masks: a packed bitmap, 1 bit per weight of the dense shape (``ceil(out·in / 8)``
  bytes), plus the kept values only (float, or quantized with per-group scales laid out
  on the dense shape).

Parameter counts (:meth:`ModulePlan.params_after`) count stored weight values: ``out·in``
dense, ``k(out + in)`` low-rank, the kept weights of a mask; quantization does not
change the count (scales are bookkeeping, counted in bytes only).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sdcompress.errors import PlanError
from sdcompress.io import write_json_atomic

PLAN_VERSION = 1
ALLOWED_BITS = (8, 4)
#: Strategies the toolkit's planners write. ``Plan.validate`` accepts any non-empty
#: name so that a new planner needs no schema change; these are the documented ones.
KNOWN_STRATEGIES = ("sd", "uniform-rank", "size", "trace", "hawq", "energy", "fisher", "magnitude", "uniform-bits", "manual")
Strategy = Literal["sd", "uniform-rank", "size", "trace", "hawq", "energy", "fisher", "magnitude", "uniform-bits", "manual"]


def kept_count(numel: int, keep_fraction: float) -> int:
    """Number of weights a mask keeps: ``round(keep_fraction · numel)``, half up, at least 1.

    One function used by planners, ``compress_`` and the size predictions, so that the
    three always agree (Python's ``round`` rounds half to even; this rounds half up).
    """
    return max(1, min(numel, math.floor(keep_fraction * numel + 0.5)))


def quantized_bytes(rows: int, cols: int, bits: int, group_size: int, float_bytes: int = 4) -> int:
    """Bytes of a ``(rows, cols)`` tensor quantized per group along ``cols``.

    ``ceil(rows·cols·bits / 8)`` bytes of packed integers plus ``rows·ceil(cols/group_size)``
    float scales of ``float_bytes`` each.
    """
    return math.ceil(rows * cols * bits / 8) + rows * math.ceil(cols / group_size) * float_bytes


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class ModulePlan:
    """What one module becomes. See the module docstring for the exact semantics.

    Attributes:
        name: module name in ``model.named_modules()``.
        out_features: rows of the weight seen as a linear map ``(out, in)``.
        in_features: columns of that map (GPT-2 ``Conv1D`` stores ``(in, out)``).
        rank: low-rank factorisation ``W ≈ U @ V`` of this rank; ``None`` keeps it dense.
        keep_fraction: fraction of weights a pruning mask keeps, by score; ``None``: no mask.
        bits: 8 or 4 for weight-only quantization of what is stored; ``None``: float.
        group_size: quantization group along the input dimension.
        row_weights: importance of the output rows (length ``out_features``, > 0).
        col_weights: importance of the input columns (length ``in_features``, > 0).
        reason: why this choice, in words.
        sd_share: the module's share of the model's SD, ``SD_m / SD`` (PAPER.md §8; from
            ``SDEstimate.module_sd`` when measured, else the allotment); ``None``: not an SD plan.
        expansion_share: the module's share of the expansion ``E_m`` (``SDEstimate.module_expansion``);
            ``None``: not measured.
        dof: degrees of freedom the plan gives the module (``k(out + in − k)`` for rank k,
            kept weights for a mask, ``out·in`` dense); ``None``: not recorded.
        predicted_cost: the planner's second-order prediction of the loss this module's
            compression adds, ``½ δᵀ H_mm δ`` (nats); ``None``: not measured.
    """

    name: str
    out_features: int
    in_features: int
    rank: int | None = None
    keep_fraction: float | None = None
    bits: int | None = None
    group_size: int = 64
    row_weights: tuple[float, ...] | None = None
    col_weights: tuple[float, ...] | None = None
    reason: str = ""
    sd_share: float | None = None
    expansion_share: float | None = None
    dof: float | None = None
    predicted_cost: float | None = None

    @property
    def kind(self) -> str:
        """``"lowrank"``, ``"masked"``, ``"quantized"``, ``"lowrank+quantized"``,
        ``"masked+quantized"`` or ``"dense"`` (nothing planned)."""
        base = "lowrank" if self.rank is not None else "masked" if self.keep_fraction is not None else ""
        if self.bits is not None:
            return f"{base}+quantized" if base else "quantized"
        return base or "dense"

    def validate(self) -> None:
        """Check ranges and consistency.

        Raises:
            PlanError: naming the module, the bad value and what is allowed.
        """
        where = f"plan module {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise PlanError(f"plan module name must be a non-empty string, got {self.name!r}")
        for attr in ("out_features", "in_features"):
            v = getattr(self, attr)
            if not _is_int(v) or v < 1:
                raise PlanError(f"{where}: {attr} must be a positive integer, got {v!r}")
        lim = min(self.out_features, self.in_features)
        if self.rank is not None and (not _is_int(self.rank) or not 1 <= self.rank <= lim):
            raise PlanError(
                f"{where}: rank {self.rank!r} is not allowed for a {self.out_features}×{self.in_features} weight; "
                f"use an integer in [1, {lim}] (or null to keep it dense)"
            )
        kf = self.keep_fraction
        if kf is not None and (not _is_num(kf) or not 0 < kf <= 1):
            raise PlanError(f"{where}: keep_fraction {kf!r} must be in (0, 1] (or null for no mask)")
        if self.rank is not None and kf is not None:
            raise PlanError(
                f"{where}: has both rank={self.rank} and keep_fraction={kf}; a module may be low-rank or masked, "
                "not both: drop one of them"
            )
        if self.bits is not None and (not _is_int(self.bits) or self.bits not in ALLOWED_BITS):
            raise PlanError(f"{where}: bits {self.bits!r} is not supported; allowed values are 8, 4 or null (float)")
        if not _is_int(self.group_size) or self.group_size < 1:
            raise PlanError(f"{where}: group_size must be a positive integer, got {self.group_size!r}")
        for attr, n in (("row_weights", self.out_features), ("col_weights", self.in_features)):
            w = getattr(self, attr)
            if w is None:
                continue
            if not isinstance(w, (tuple, list)) or len(w) != n:
                got = len(w) if isinstance(w, (tuple, list)) else type(w).__name__
                raise PlanError(f"{where}: {attr} must have length {n}, got {got}")
            bad = [x for x in w if not _is_num(x) or not math.isfinite(x) or x <= 0]
            if bad:
                raise PlanError(f"{where}: {attr} must be finite and > 0, got e.g. {bad[0]!r}")
        if not isinstance(self.reason, str):
            raise PlanError(f"{where}: reason must be a string, got {self.reason!r}")
        for attr in ("sd_share", "expansion_share", "dof", "predicted_cost"):
            v = getattr(self, attr)
            if v is not None and (not _is_num(v) or not math.isfinite(v)):
                raise PlanError(f"{where}: {attr} must be a finite number or null, got {v!r}")
        for attr in ("sd_share", "expansion_share", "dof"):
            v = getattr(self, attr)
            if v is not None and v < 0:
                raise PlanError(f"{where}: {attr} must be ≥ 0, got {v!r}")

    def params_before(self) -> int:
        """Dense weight values, ``out·in``."""
        return self.out_features * self.in_features

    def params_after(self) -> int:
        """Stored weight values after compression (see the module docstring)."""
        o, i = self.out_features, self.in_features
        if self.rank is not None:
            return self.rank * (o + i)
        if self.keep_fraction is not None:
            return kept_count(o * i, self.keep_fraction)
        return o * i

    def bytes_before(self, float_bytes: int = 4) -> int:
        """Bytes of the dense float weight."""
        return self.params_before() * float_bytes

    def bytes_after(self, float_bytes: int = 4) -> int:
        """Bytes of the stored weight after compression (see the module docstring).

        Args:
            float_bytes: bytes per float value (4 for float32, 2 for bf16/fp16); float
                scales of quantized tensors use the same width.
        """
        o, i, b, g = self.out_features, self.in_features, self.bits, self.group_size
        if self.rank is not None:
            k = self.rank
            if b is None:
                return k * (o + i) * float_bytes
            return quantized_bytes(o, k, b, g, float_bytes) + quantized_bytes(k, i, b, g, float_bytes)
        if self.keep_fraction is not None:
            kept = kept_count(o * i, self.keep_fraction)
            bitmap = math.ceil(o * i / 8)
            if b is None:
                return kept * float_bytes + bitmap
            return math.ceil(kept * b / 8) + o * math.ceil(i / g) * float_bytes + bitmap
        if b is None:
            return o * i * float_bytes
        return quantized_bytes(o, i, b, g, float_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("row_weights", "col_weights"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: Any) -> ModulePlan:
        """Build from a JSON object, rejecting unknown fields and wrong types.

        Raises:
            PlanError: not an object, unknown or missing fields, wrong types or ranges.
        """
        if not isinstance(data, dict):
            raise PlanError(f"each plan module must be a JSON object, got {type(data).__name__}: {data!r:.80}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"plan module {data.get('name')!r}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        missing = [k for k in ("name", "out_features", "in_features") if k not in data]
        if missing:
            raise PlanError(f"plan module {data.get('name')!r}: missing field(s) {missing}")
        kw = dict(data)
        for k in ("row_weights", "col_weights"):
            if kw.get(k) is not None:
                if not isinstance(kw[k], list):
                    raise PlanError(f"plan module {data.get('name')!r}: {k} must be a list of numbers, got {kw[k]!r:.80}")
                kw[k] = tuple(kw[k])
        if kw.get("keep_fraction") is not None and _is_int(kw["keep_fraction"]):
            kw["keep_fraction"] = float(kw["keep_fraction"])
        mp = cls(**kw)
        mp.validate()
        return mp


@dataclass(frozen=True)
class Plan:
    """A compression plan: per module a rank, a mask rule and a bit width.

    Attributes:
        modules: one :class:`ModulePlan` per target module (unique names).
        strategy: which planner made it (see ``KNOWN_STRATEGIES``).
        sd: SD of the model the plan was made from (``None`` for plans made without one).
        d: number of parameters SD was measured over.
        budget: the budget asked for, e.g. ``{"params_fraction": 0.5}``.
        notes: plain-language caveats (e.g. "SD ≈ d: little compression is safe").
        version: schema version (currently 1).
    """

    modules: tuple[ModulePlan, ...]
    strategy: str
    sd: float | None = None
    d: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    version: int = PLAN_VERSION

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def module(self, name: str) -> ModulePlan:
        """The plan of module ``name``.

        Raises:
            PlanError: ``name`` is not in the plan.
        """
        for m in self.modules:
            if m.name == name:
                return m
        raise PlanError(f"module {name!r} is not in the plan; planned modules: {list(self.names)[:8]}")

    def validate(self) -> None:
        """Check every module and the plan-level fields.

        Raises:
            PlanError: the first problem found, with the value and what is allowed.
        """
        if not isinstance(self.modules, (tuple, list)):
            raise PlanError(f"plan 'modules' must be a list, got {type(self.modules).__name__}")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise PlanError(f"plan 'strategy' must be a non-empty string such as {KNOWN_STRATEGIES}, got {self.strategy!r}")
        if self.version != PLAN_VERSION:
            raise PlanError(f"plan version {self.version!r} is not supported (this sdcompress reads version {PLAN_VERSION})")
        if self.sd is not None and (not _is_num(self.sd) or self.sd < 0):  # nan (unknown) passes
            raise PlanError(f"plan 'sd' must be a number ≥ 0 or null, got {self.sd!r}")
        if self.d is not None and (not _is_int(self.d) or self.d < 1):
            raise PlanError(f"plan 'd' must be a positive integer or null, got {self.d!r}")
        if not isinstance(self.budget, dict):
            raise PlanError(f"plan 'budget' must be an object, got {self.budget!r:.80}")
        if not isinstance(self.notes, (tuple, list)) or not all(isinstance(n, str) for n in self.notes):
            raise PlanError(f"plan 'notes' must be a list of strings, got {self.notes!r:.80}")
        seen: set[str] = set()
        for m in self.modules:
            if not isinstance(m, ModulePlan):
                raise PlanError(f"plan modules must be ModulePlan objects, got {type(m).__name__}")
            m.validate()
            if m.name in seen:
                raise PlanError(f"module {m.name!r} appears twice in the plan; give each module one entry")
            seen.add(m.name)

    # ---- sizes from shapes alone (pure) ----------------------------------------
    def params_before(self) -> int:
        """Dense weight values of the planned modules."""
        return sum(m.params_before() for m in self.modules)

    def params_after(self) -> int:
        """Stored weight values of the planned modules after compression.

        Only the planned weights: biases and unplanned parameters are unchanged, so the
        whole model's count is ``total_before − params_before() + params_after()``.
        """
        return sum(m.params_after() for m in self.modules)

    def bytes_before(self, float_bytes: int = 4) -> int:
        """Bytes of the planned modules' dense float weights."""
        return sum(m.bytes_before(float_bytes) for m in self.modules)

    def bytes_after(self, float_bytes: int = 4) -> int:
        """Bytes of the planned modules' stored weights after compression (module docstring)."""
        return sum(m.bytes_after(float_bytes) for m in self.modules)

    # ---- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "strategy": self.strategy,
            "sd": self.sd,
            "d": self.d,
            "budget": dict(self.budget),
            "notes": list(self.notes),
            "modules": [m.to_dict() for m in self.modules],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """Build and validate a plan from its JSON object.

        Raises:
            PlanError: not an object, unknown or missing fields, wrong types or ranges.
        """
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"unknown plan field(s) {unknown}; known fields are {sorted(known)}")
        for k in ("modules", "strategy"):
            if k not in data:
                raise PlanError(f"plan is missing the field {k!r}")
        if not isinstance(data["modules"], list):
            raise PlanError(f"plan 'modules' must be a list, got {type(data['modules']).__name__}")
        notes = data.get("notes", [])
        if not isinstance(notes, list):
            raise PlanError(f"plan 'notes' must be a list of strings, got {notes!r:.80}")
        sd = data.get("sd")
        if sd in ("nan", "inf"):  # how write_json_atomic stores non-finite floats
            sd = float(sd)
        plan = cls(
            modules=tuple(ModulePlan.from_dict(m) for m in data["modules"]),
            strategy=data["strategy"],
            sd=sd,
            d=data.get("d"),
            budget=data.get("budget", {}),
            notes=tuple(notes),
            version=data.get("version", PLAN_VERSION),
        )
        plan.validate()
        return plan

    def save(self, path: str | Path) -> Path:
        """Validate, then write the plan as JSON atomically (temporary file, then rename)."""
        self.validate()
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and validate a ``plan.json``.

        Raises:
            PlanError: missing file, corrupt JSON or an invalid plan; the message names
                the path and what is wrong.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PlanError(f"cannot read plan {str(path)!r}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(
                f"plan {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                "rewrite it or make a new one with 'sdcompress plan'"
            ) from exc
        try:
            return cls.from_dict(data)
        except (PlanError, TypeError) as exc:
            raise PlanError(f"plan {str(path)!r}: {exc}") from exc

    def summary(self) -> str:
        """One line: strategy, modules, predicted weight parameters before → after."""
        b, a = self.params_before(), self.params_after()
        frac = a / b if b else float("nan")
        return f"plan '{self.strategy}': {len(self.modules)} modules, weights {b} → {a} parameters ({frac:.1%})"
