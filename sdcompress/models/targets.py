"""Which modules can be compressed, and how name patterns match: one definition of each.

Compressible modules (:func:`compressible_modules`): the ``nn.Linear`` layers and
transformers' GPT-2 ``Conv1D`` layers (``y = x @ W + b``, W stored ``(in, out)``) whose
weight is not shared with another module. A tied weight (GPT-2's ``lm_head`` is the token
embedding) is not compressible: replacing it would silently untie the two and store the
matrix twice. The planner plans only for these modules and ``compress_`` replaces only
these.

Name patterns. A pattern matches a name when it equals it, when it names a parent (``"transformer.h.0"``
matches ``"transformer.h.0.attn.c_attn"`` and ``"transformer.h.0.attn.c_attn.weight"``),
or, written ``re:<regex>``, when the regular expression matches the start of the name
(``re.match``). The planner's module targets, ``compress_``'s module names and the
estimator's parameter subsets all use :func:`match_names`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from sdcompress.errors import ConfigError

REGEX_PREFIX = "re:"


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A predicate on names for one pattern (see the module docstring).

    Raises:
        ConfigError: not a non-empty string, or an invalid ``re:`` regular expression.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"a name pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith(REGEX_PREFIX):
        try:
            rx = re.compile(pattern[len(REGEX_PREFIX):])
        except re.error as exc:
            raise ConfigError(f"pattern {pattern!r} is not a valid regular expression ({exc}); "
                              "write 're:' followed by a Python regex, e.g. 're:.*attn'") from None
        return lambda name: rx.match(name) is not None
    prefix = pattern + "."
    return lambda name: name == pattern or name.startswith(prefix)


def match_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names (in the given order) that ``pattern`` matches.

    Raises:
        ConfigError: an invalid pattern.
    """
    matches = compile_pattern(pattern)
    return [n for n in names if matches(n)]


def conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class (``None`` where transformers is not installed)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for the toolkit's own MLPs
        return None
    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D``."""
    conv1d = conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def linear_shape(module: nn.Module) -> tuple[int, int, bool]:
    """``(out_features, in_features, transposed)`` of a Linear (``transposed=False``) or a
    Conv1D (weight stored ``(in, out)``, ``transposed=True``).

    Raises:
        ConfigError: neither.
    """
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if is_linear_like(module):
        i, o = module.weight.shape
        return int(o), int(i), True
    raise ConfigError(f"{type(module).__name__} is not an nn.Linear or Conv1D")


def tied_with(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Name of another parameter that is the same tensor as ``module.weight``, if any."""
    for pname, p in model.named_parameters(remove_duplicate=False):
        if p is module.weight and pname != f"{name}.weight":
            return pname
    return None


def compressible_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that can be compressed, by name, in model order (module docstring)."""
    return {n: m for n, m in model.named_modules() if n and is_linear_like(m) and tied_with(model, n, m) is None}


def why_not_compressible(model: nn.Module, name: str, module: nn.Module) -> str:
    """Why ``module`` is not in :func:`compressible_modules` (for error messages)."""
    if not is_linear_like(module):
        return f"it is a {type(module).__name__}, not an nn.Linear or Conv1D"
    tied = tied_with(model, name, module)
    return f"its weight is tied to {tied}" if tied else "it is the model itself (no name)"


__all__ = [
    "REGEX_PREFIX",
    "compile_pattern",
    "compressible_modules",
    "conv1d_type",
    "is_linear_like",
    "linear_shape",
    "match_names",
    "tied_with",
    "why_not_compressible",
]
