"""The artifact of ``compress_``: a frozen, JSON-serialisable :class:`CompressionReport`.

Counting rules (the same for "before" and "after", so the two compare):

- parameters: every parameter of the model once (tied embeddings count once); for a
  compressed module its stored weight values instead of its parameters (``k(out+in)``
  for low-rank, the kept weights of a mask, the quantized values; scales are not
  counted as parameters) plus its bias.
- bytes: float tensors at their element size; int8 at 1 byte per value; int4 packed two
  per byte; per-group float scales; masks as a packed bitmap of 1 bit per weight plus
  the kept values. Buffers of uncompressed modules (e.g. attention masks, which are
  rebuilt from the config) are not counted.

Per-module entries report the weight only (the bias is unchanged):
``rel_error = ‖W' − W‖_F / ‖W‖_F`` with ``W'`` the dense weight the module now computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from sdcompress.compress.base import CompressedLinear
from sdcompress.compress.quant import PackedTensor
from sdcompress.errors import CompressionError
from sdcompress.io import write_json_atomic


def count_storage(model: nn.Module) -> tuple[int, int]:
    """``(parameters, bytes)`` of ``model`` by the rules in the module docstring."""
    seen: set[int] = set()
    params = n_bytes = 0
    for mod in model.modules():
        if isinstance(mod, CompressedLinear):
            p, b = mod.weight_storage()
            params, n_bytes = params + p, n_bytes + b
            own = [mod.bias] if mod.bias is not None else []
        elif isinstance(mod, PackedTensor):
            continue  # buffers only, counted by the compressed module that owns it
        else:
            own = list(mod.parameters(recurse=False))
        for t in own:
            if id(t) in seen:
                continue
            seen.add(id(t))
            params += t.numel()
            n_bytes += t.numel() * t.element_size()
    return params, n_bytes


@dataclass(frozen=True)
class ModuleReport:
    """What happened to one module.

    Attributes:
        name: module name.
        kind: ``"lowrank"``, ``"masked"``, ``"quantized"``, ``"lowrank+quantized"``,
            ``"masked+quantized"`` or ``"dense"``.
        rank, keep_fraction, bits: as planned (``None`` when not used).
        rel_error: ``‖W' − W‖_F / ‖W‖_F`` (0 for an all-zero ``W`` reproduced exactly).
        params, bytes: the weight as stored now.
        params_before, bytes_before: the dense weight before.
    """

    name: str
    kind: str
    rank: int | None
    keep_fraction: float | None
    bits: int | None
    rel_error: float
    params: int
    bytes: int
    params_before: int
    bytes_before: int


@dataclass(frozen=True)
class CompressionReport:
    """Sizes before and after and per-module reconstruction errors.

    Attributes:
        params_before, params_after: whole-model parameter counts (module docstring).
        bytes_before, bytes_after: whole-model storage in bytes.
        modules: one :class:`ModuleReport` per planned module, in plan order.
    """

    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    modules: tuple[ModuleReport, ...]

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else float("nan")

    @property
    def bytes_ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "modules": [asdict(m) for m in self.modules],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionReport:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            CompressionError: missing or unknown fields.
        """
        try:
            known = {f.name for f in fields(ModuleReport)}
            mods = []
            for m in data["modules"]:
                if set(m) != known:
                    raise KeyError(sorted(set(m) ^ known))
                mods.append(ModuleReport(**m))
            return cls(
                int(data["params_before"]), int(data["params_after"]),
                int(data["bytes_before"]), int(data["bytes_after"]), tuple(mods),
            )
        except (KeyError, TypeError) as exc:
            raise CompressionError(f"not a compression report (bad or missing field {exc}); rerun compress") from exc

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically."""
        return write_json_atomic(path, self.to_dict())

    def summary(self) -> str:
        """One line: parameters and bytes before → after."""
        return (
            f"parameters {self.params_before:,} → {self.params_after:,} ({self.params_ratio:.1%}); "
            f"bytes {self.bytes_before:,} → {self.bytes_after:,} ({self.bytes_ratio:.1%})"
        )

    def table(self, max_rows: int = 40) -> str:
        """A small fixed-width table of the modules, then the summary line."""
        head = f"{'module':<32} {'kind':<18} {'rank':>5} {'keep':>6} {'bits':>4} {'rel.err':>8} {'params':>10} {'bytes':>10}"
        lines = [head, "-" * len(head)]
        for m in self.modules[:max_rows]:
            keep = f"{m.keep_fraction:.0%}" if m.keep_fraction is not None else "-"
            lines.append(
                f"{m.name[-32:]:<32} {m.kind:<18} {m.rank if m.rank is not None else '-':>5} {keep:>6} "
                f"{m.bits if m.bits is not None else '-':>4} {m.rel_error:>8.4f} {m.params:>10,} {m.bytes:>10,}"
            )
        if len(self.modules) > max_rows:
            lines.append(f"... {len(self.modules) - max_rows} more modules")
        lines.append(self.summary())
        return "\n".join(lines)
