"""Evaluation of a (compressed) model and the verdict on its generalization.

``evaluate(loaded, data, ...)`` is :func:`sdcompress.evaluate.evaluator.evaluate`. The
package itself is callable with the same arguments, because ``from sdcompress import
evaluate`` can return this package instead of the function once it has been imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from sdcompress.evaluate.evaluator import EvalConfig, EvalReport, dataset_metrics, evaluate, measure_sd
from sdcompress.evaluate.verdict import Verdict, check_tolerance, verdict

__all__ = ["EvalConfig", "EvalReport", "Verdict", "check_tolerance", "dataset_metrics", "evaluate", "measure_sd", "verdict"]


class _CallablePackage(types.ModuleType):
    """``sdcompress.evaluate(...)`` is ``evaluate(...)`` (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> EvalReport:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
