"""YAML for recipes: YAML 1.2 scalars on load, unambiguous quoting on dump.

PyYAML implements YAML 1.1, where ``off``/``on``/``yes``/``no`` are booleans, ``1e-3`` is a
string, ``1:20`` is 80 and ``010`` is 8. Recipes hold values such as ``bits: off`` and
``lr: 1e-3``, so the loader here reads scalars as YAML 1.2 does (only ``true``/``false``
are booleans; ``1e-3`` is a float; decimal and ``0x`` integers only), refuses duplicate
keys, and the dumper quotes every string that either reading would take for something else.

Hostile input: a recipe is plain data. Tags that build Python objects are refused (a
SafeLoader), binary files and empty files are refused, and so are documents larger than
:data:`MAX_YAML_CHARS` or whose aliases expand to more than :data:`MAX_YAML_NODES` nodes
(a "billion laughs" alias bomb builds a tiny graph that every later walk of the data,
copy or JSON dump, would expand exponentially).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sdcompress.errors import ConfigError

#: largest recipe/override text read (characters); recipes are a few kB
MAX_YAML_CHARS = 1_000_000
#: largest number of nodes a document may hold once its aliases are expanded
MAX_YAML_NODES = 100_000


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


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes in ``node`` with every alias expanded (shared subgraphs counted each time
    they are referenced), computed in time linear in the graph; stops past ``limit``."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node inside itself (recursive alias) is unbounded
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = total
    return total


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML ``text`` as plain data (module docstring).

    Raises:
        ConfigError: not valid YAML, too large, or an alias bomb.
    """
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{source}: {len(text):,} characters is too large for a recipe (at most {MAX_YAML_CHARS:,}); "
                          "is this the right file?")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"{source}: its YAML aliases (&anchor / *alias) expand to more than {MAX_YAML_NODES:,} "
                              "values (an alias bomb?); write the values out without nested aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML: {detail}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: nested too deeply to be a recipe") from exc
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping.

    An empty file (or one holding only comments) is refused rather than read as "all
    defaults": running the default job because a recipe came out empty would hide the
    mistake.

    Raises:
        ConfigError: the file is missing, unreadable, binary, empty, not YAML, or not a mapping.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe file {str(path)!r} does not exist; check the path (recipes ship in recipes/)") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"recipe file {str(path)!r} is a folder; pass a YAML file (recipes ship in recipes/)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {str(path)!r}: {exc.strerror}") from exc
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe file {str(path)!r} is not a text YAML file (binary content at byte {exc.start}); "
                          "pass a YAML recipe (see recipes/)") from exc
    data = load_yaml_text(text, str(path))
    if data is None:
        raise ConfigError(f"recipe file {str(path)!r} is empty; write the sections to change (see recipes/), "
                          "e.g. 'model: {name: mlp}'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got a {type(data).__name__}")
    return data


def dump_yaml(data: Any) -> str:
    """Block-style YAML of plain data, keys in insertion order, readable by any YAML loader."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
