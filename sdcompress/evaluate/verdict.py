"""The verdict: is generalization preserved after compression? (pure)

    preserved  ⇔  test_loss_after − test_loss_before ≤ tolerance      (tolerance > 0, nats)

The test loss decides, because it is what a user of the compressed model sees; the
train/test gap and SD are reported next to it (they explain the change but do not
decide it). A non-finite test loss after compression is never "preserved".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sdcompress.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    """The decision and the numbers that made it.

    Attributes:
        preserved: ``delta_test_loss ≤ tolerance``.
        tolerance: the allowed rise of the test loss (nats).
        test_loss_before, test_loss_after, delta_test_loss: the deciding numbers.
        gap_before, gap_after: train/test gaps (test − train loss), when known.
        sd_before, sd_after: SD before and after, when measured.
        d_before, d_after: parameters SD was measured over.
        message: one sentence saying all of the above.
    """

    preserved: bool
    tolerance: float
    test_loss_before: float
    test_loss_after: float
    delta_test_loss: float
    gap_before: float | None = None
    gap_after: float | None = None
    sd_before: float | None = None
    sd_after: float | None = None
    d_before: int | None = None
    d_after: int | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(**{k: (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v) for k, v in data.items()})


def check_tolerance(tolerance: Any) -> float:
    """The tolerance as a float.

    Raises:
        ConfigError: not a finite number > 0.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance <= 0:
        raise ConfigError(f"tolerance must be a finite number > 0 (nats of test loss), got {tolerance!r}")
    return float(tolerance)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def verdict(
    test_loss_before: float,
    test_loss_after: float,
    tolerance: float,
    *,
    gap_before: float | None = None,
    gap_after: float | None = None,
    sd_before: float | None = None,
    sd_after: float | None = None,
    d_before: int | None = None,
    d_after: int | None = None,
) -> Verdict:
    """Decide whether generalization is preserved (see the module docstring).

    Args:
        test_loss_before, test_loss_after: mean test loss of the original and compressed model.
        tolerance: allowed rise of the test loss, > 0.
        gap_before, gap_after, sd_before, sd_after, d_before, d_after: reported, not deciding.

    Returns:
        A :class:`Verdict`.

    Raises:
        ConfigError: tolerance ≤ 0 or not finite.
    """
    tol = check_tolerance(tolerance)
    delta = float(test_loss_after) - float(test_loss_before)
    preserved = math.isfinite(delta) and delta <= tol
    head = "generalization preserved" if preserved else "generalization NOT preserved"
    cmp = "≤" if preserved else ">"
    if not math.isfinite(delta):
        why = f"test loss {_fmt(test_loss_before)} → {test_loss_after} (not finite)"
    else:
        why = f"test loss {test_loss_before:.4f} → {test_loss_after:.4f} ({delta:+.4g} {cmp} tolerance {tol:g})"
    parts = [f"{head}: {why}"]
    if gap_before is not None or gap_after is not None:
        parts.append(f"train/test gap {_fmt(gap_before)} → {_fmt(gap_after)}")
    if sd_before is not None or sd_after is not None:
        dd = f" (d {d_before} → {d_after})" if d_before is not None and d_after is not None else ""
        parts.append(f"SD {_fmt(sd_before, '.1f')} → {_fmt(sd_after, '.1f')}{dd}")
    return Verdict(preserved, tol, float(test_loss_before), float(test_loss_after), delta, gap_before, gap_after,
                   sd_before, sd_after, d_before, d_after, "; ".join(parts))


__all__ = ["Verdict", "check_tolerance", "verdict"]
