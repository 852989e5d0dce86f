"""Name patterns: the one definition of how ``targets``, ``ignore`` and ``params`` match names.

A pattern matches a name when it equals it, when it names a parent (``"transformer.h.0"``
matches ``"transformer.h.0.attn.c_attn"`` and ``"transformer.h.0.attn.c_attn.weight"``),
or, written ``re:<regex>``, when the regular expression matches the start of the name
(``re.match``). The planner's module targets, ``compress_``'s module names and the
estimator's parameter subsets all use :func:`match_names`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

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


__all__ = ["REGEX_PREFIX", "compile_pattern", "match_names"]
