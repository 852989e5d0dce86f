"""YAML for recipes: YAML 1.2 scalars on load, unambiguous quoting on dump.

PyYAML implements YAML 1.1, where ``off``/``on``/``yes``/``no`` are booleans, ``1e-3`` is a
string, ``1:20`` is 80 and ``010`` is 8. Recipes hold values such as ``bits: off`` and
``lr: 1e-3``, so the loader here reads scalars as YAML 1.2 does (only ``true``/``false``
are booleans; ``1e-3`` is a float; decimal and ``0x`` integers only), refuses duplicate
keys, and the dumper quotes every string that either reading would take for something else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sdcompress.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-3``) and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans,
# which would turn ``bits: off`` into False and a key ``on:`` into True.
# Sexagesimal (1:20 → 80) and octal (010 → 8) integers go too.
_YAML11_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][\d_]*)|0x[\da-fA-F_]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.[\d_]*(?:[eE][-+]?\d+)?|\.\d[\d_]*(?:[eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+)$"),
    list("-+0123456789."),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+.")
)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that either YAML 1.1 or our loader would read as something
    else (``'off'``, ``'1e3'``), so a dumped recipe reads back the same everywhere."""


_Dumper.yaml_implicit_resolvers = {
    first: list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, [])) + list(_Loader.yaml_implicit_resolvers.get(first, []))
    for first in set(yaml.SafeDumper.yaml_implicit_resolvers) | set(_Loader.yaml_implicit_resolvers)
}


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    # short lists of scalars on one line ([64, 16, 10]); anything else in block style
    flow = all(isinstance(x, (str, int, float, bool)) or x is None for x in data) and len(data) <= 16
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def load_yaml_text(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML: {detail}") from exc


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe file {str(path)!r} does not exist; check the path (recipes ship in recipes/)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {str(path)!r}: {exc.strerror}") from exc
    data = load_yaml_text(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got a {type(data).__name__}")
    return data


def dump_yaml(data: Any) -> str:
    """Block-style YAML of plain data, keys in insertion order, readable by any YAML loader."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
