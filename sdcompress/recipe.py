"""Recipes: YAML views of the run's config dataclasses (strict, with presets and overrides).

A recipe is the YAML form of :class:`sdcompress.pipeline.RunConfig`: one mapping per
section (``model``, ``data``, ``train``, ``estimate``, ``plan``, ``evaluate``,
``output``) plus top-level fields (``seed``, ``device``). Loading is strict, as in
llm-compressor: an unknown key or a value of the wrong type is a
:class:`~sdcompress.errors.ConfigError` naming the file and the key path, e.g.
``recipes/x.yaml: plan.target_rnak: unknown key (did you mean 'target_rank'?); known keys: ...``.

Resolution order (later wins, mappings merge key by key, lists are replaced):

1. presets named by ``preset: NAME`` / ``presets: [A, B]`` at the top of the recipe or
   at the top of a section (``estimate: {preset: estimator-fast}``); ``NAME`` is looked
   up as ``NAME.yaml`` in ``$SDCOMPRESS_CONFIG_PATH`` (``os.pathsep``-separated), then
   ``configs/`` beside the recipe, beside its folder, and in the working directory; a
   name with a ``/`` or a ``.yaml`` suffix is a path relative to the referring file.
   A preset file is itself a (partial) recipe and may name presets; a section preset
   may be a whole recipe (its matching section is used) or a bare section;
2. the recipe's own keys;
3. ``--set section.key=value`` overrides, parsed by the field's type (``int``,
   ``float``, ``bool``, ``str``, ``None``, ``Literal``, lists, unions such as
   ``int | Literal["auto"]``; a list also takes ``a,b,c``).

The machinery is generic over nested dataclasses (:func:`from_dict`, :func:`to_dict`,
:func:`parse_override`), so it is tested on small stand-ins as well as on RunConfig.
YAML floats follow YAML 1.2 (``1e-3`` is a float, not the string PyYAML 1.1 makes of it).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from sdcompress.errors import ConfigError
from sdcompress.io import write_text_atomic

T = TypeVar("T")
RESOLVED_RECIPE_FILE = "resolved_recipe.yaml"
PRESET_KEYS = ("preset", "presets")
CONFIG_PATH_ENV = "SDCOMPRESS_CONFIG_PATH"


class _Invalid(Exception):
    """A problem at a key path; turned into a ConfigError once the file is known."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where or '(top level)'}: {message}")


# --------------------------------------------------------------------------- YAML I/O


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


def _yaml_load(text: str, source: str) -> Any:
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
    data = _yaml_load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got a {type(data).__name__}")
    return data


# --------------------------------------------------------------------- type handling


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, Any]:
    """init fields of a dataclass -> resolved type."""
    hints = _hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__
    return str(tp).replace("typing.", "")


def _unknown_key(key: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; known keys: {', '.join(known)}"


def _got(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"got {type(value).__name__} {shown}"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _convert(value: Any, tp: Any, where: str, build: bool) -> Any:
    """Check ``value`` against type ``tp``; return it converted (dataclass instances when
    ``build``, plain mappings of checked values otherwise).

    Raises:
        _Invalid: naming the key path.
    """
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is not None:
            raise _Invalid(where, f"expected null, {_got(value)}")
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        problems = []
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(value, member, where, build)
            except _Invalid as exc:
                problems.append(exc)
        # a union of one dataclass (X | None): its own message is the useful one
        if len(problems) == 1:
            raise problems[0]
        raise _Invalid(where, f"expected {_type_name(tp)}, {_got(value)}")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise _Invalid(where, f"expected one of {', '.join(repr(a) for a in args)}, {_got(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(value, tp, where, build)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Invalid(where, f"expected a list, {_got(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Invalid(where, f"expected a list of {len(args)} items, {_got(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]", build) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]", build) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _Invalid(where, f"expected a mapping, {_got(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, where, build): _convert(v, val_tp, _join(where, k), build) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(where, f"expected true or false, {_got(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(where, f"expected an integer, {_got(value)}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Invalid(where, f"expected a number, {_got(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a string, {_got(value)} (quote it in YAML)")
        return value
    if isinstance(tp, type) and issubclass(tp, Path):
        if not isinstance(value, (str, Path)):
            raise _Invalid(where, f"expected a path, {_got(value)}")
        return Path(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return value if isinstance(value, tp) else tp(value)
        except ValueError:
            raise _Invalid(where, f"expected one of {', '.join(repr(m.value) for m in tp)}, {_got(value)}") from None
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Invalid(where, f"expected {_type_name(tp)}, {_got(value)}")
    return value


def _convert_dataclass(value: Any, cls: type, where: str, build: bool) -> Any:
    if isinstance(value, cls):
        value = to_dict(value)
    if not isinstance(value, Mapping):
        raise _Invalid(where, f"expected a mapping of {cls.__name__} fields, {_got(value)}")
    fields = _fields(cls)
    out = {}
    for key, item in value.items():
        if key not in fields:
            raise _Invalid(_join(where, key), _unknown_key(key, list(fields)))
        out[key] = _convert(item, fields[key], _join(where, key), build)
    if not build:
        return out
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [k for k in required if k not in out]
    if missing:
        raise _Invalid(where, f"missing required key(s): {', '.join(missing)}")
    try:
        return cls(**out)
    except ConfigError as exc:  # the dataclass's own validation (__post_init__)
        raise _Invalid(where, str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise _Invalid(where, f"invalid {cls.__name__}: {exc}") from exc


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a plain mapping, strictly.

    Args:
        cls: a dataclass whose fields may be nested dataclasses, scalars, ``Literal``,
            unions, lists, tuples and dicts.
        data: the mapping (e.g. a parsed YAML file); missing keys take the defaults.
        source: named in error messages (a file name).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: ``"{source}: {key.path}: {problem}"`` for an unknown key, a value of the
            wrong type, a missing required key, or a value the dataclass itself rejects.
    """
    try:
        return _convert_dataclass(data, cls, "", build=True)
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON types: mappings, lists, str, numbers, bool, None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return obj.item()
    return obj


# ------------------------------------------------------------------------ overrides

_NULLS = {"null", "none", "~", ""}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _parse_text(text: str, tp: Any, where: str) -> Any:
    """The value of a ``--set`` right-hand side, read as type ``tp``.

    Raises:
        _Invalid: the text is not a value of that type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return _yaml_load(text, f"--set {where}")
    if tp is type(None):
        if text.strip().lower() in _NULLS:
            return None
        raise _Invalid(where, f"expected null, got {text!r}")
    if _is_union(tp):
        if type(None) in args and text.strip().lower() in _NULLS:
            return None
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _parse_text(text, member, where)
            except _Invalid:
                continue
        raise _Invalid(where, f"expected {_type_name(tp)}, got {text!r}")
    if origin is Literal:
        for choice in args:
            if str(choice) == text.strip():
                return choice
        raise _Invalid(where, f"expected one of {', '.join(str(a) for a in args)}, got {text!r}")
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise _Invalid(where, f"expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise _Invalid(where, f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise _Invalid(where, f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, Path):
        return Path(text)
    value = _yaml_load(text, f"--set {where}")
    is_seq = origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple)
    if is_seq and not isinstance(value, list):
        # "a,b,c": each item read by the item type
        item = args[0] if args else Any
        value = [_parse_text(part, item, where) for part in text.split(",")] if text.strip() else []
    return _convert(value, tp, where, build=False)


def _field_type_at(cls: type, keys: list[str], override: str) -> Any:
    """The type of the field at ``keys`` (dataclass fields, then dict keys)."""
    tp: Any = cls
    walked: list[str] = []
    for key in keys:
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            fields = _fields(inner)
            if key not in fields:
                section = ".".join(walked) or "the recipe's top level"
                raise ConfigError(f"--set {override}: {_join('.'.join(walked), key)}: {_unknown_key(key, list(fields))} (in {section})")
            tp = fields[key]
        elif typing.get_origin(inner) in (dict, Mapping, typing.Mapping) or inner is dict:
            tp = typing.get_args(inner)[1] if typing.get_args(inner) else Any
        elif inner is Any:
            tp = Any
        else:
            raise ConfigError(f"--set {override}: {'.'.join(walked)} is of type {_type_name(tp)} and has no key {key!r}")
        walked.append(key)
    return tp


def _strip_optional(tp: Any) -> Any:
    if _is_union(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def parse_override(text: str, cls: type) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` against dataclass ``cls``.

    Args:
        text: the override, e.g. ``"plan.target_rank=8"`` or ``"model.options.n_layer=1"``.
        cls: the root dataclass (RunConfig).

    Returns:
        (key path, value read by the field's type).

    Raises:
        ConfigError: no ``=``, an unknown field, or a value of the wrong type.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. train.steps=50)")
    keys = key.split(".")
    if any(not k for k in keys):
        raise ConfigError(f"--set {text!r}: empty name in key path {key!r}")
    tp = _field_type_at(cls, keys, text)
    try:
        return keys, _parse_text(raw, tp, key)
    except _Invalid as exc:
        raise ConfigError(f"--set {text}: {exc}") from None


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = to_dict(value)


# -------------------------------------------------------------------------- presets


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``top`` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_dirs(referrer: Path) -> list[Path]:
    """Where ``preset: NAME`` is looked up, in order (see the module docstring)."""
    env = [Path(p) for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    here = referrer.resolve().parent
    dirs = [*env, here / "configs", here.parent / "configs", Path.cwd() / "configs"]
    return list(dict.fromkeys(dirs))


def find_preset(name: str, referrer: Path) -> Path:
    """The file a preset name refers to.

    Raises:
        ConfigError: naming the file(s) looked for.
    """
    if "/" in name or name.endswith((".yaml", ".yml")):
        path = (referrer.parent / name) if not Path(name).is_absolute() else Path(name)
        if path.is_file():
            return path
        raise ConfigError(f"{referrer}: preset {name!r} not found: looked for {path}")
    tried = [d / f"{name}.yaml" for d in preset_dirs(referrer)]
    for path in tried:
        if path.is_file():
            return path
    available = sorted({p.stem for d in preset_dirs(referrer) if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"{referrer}: preset {name!r} not found: looked for {', '.join(_rel(p) for p in tried)}; "
        f"available presets: {', '.join(available) or 'none'}"
    )


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _preset_names(data: dict[str, Any], source: Path, where: str) -> list[str]:
    names: list[str] = []
    for key in PRESET_KEYS:
        if key not in data:
            continue
        value = data.pop(key)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{source}: {_join(where, key)}: expected a preset name or a list of names, {_got(value)}")
        names.extend(values)
    return names


def _expand(data: dict[str, Any], cls: type, source: Path, where: str, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``data`` (one file's view of ``cls`` at key path ``where``) with its presets merged
    under it, checked strictly against ``cls`` so errors name the file that holds them."""
    data = dict(data)
    merged: dict[str, Any] = {}
    for name in _preset_names(data, source, where):
        path = find_preset(name, source)
        if path.resolve() in chain:
            cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
            raise ConfigError(f"{source}: preset {name!r} includes itself: {cycle}")
        preset = read_yaml(path)
        section = where.rsplit(".", 1)[-1]
        if where and section in preset and section not in _fields(cls):
            preset = preset[section]  # a whole-recipe preset used for one section
            if not isinstance(preset, dict):
                raise ConfigError(f"{path}: {section}: expected a mapping, {_got(preset)}")
        merged = _merge(merged, _expand(preset, cls, path, where, (*chain, path.resolve())))
    fields = _fields(cls)
    for key, value in list(data.items()):
        sub = _strip_optional(fields.get(key, Any))
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            data[key] = _expand(value, sub, source, _join(where, key), chain)
    try:
        _convert_dataclass(data, cls, where, build=False)
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return _merge(merged, data)


# ------------------------------------------------------------------------ public API


def _run_config_class() -> type:
    from sdcompress.pipeline import RunConfig

    return RunConfig


def resolve_recipe(path: str | Path, overrides: Sequence[str] = (), *, cls: type | None = None) -> dict[str, Any]:
    """The recipe at ``path`` as one plain mapping: presets, then the file, then overrides.

    Args:
        path: the YAML recipe.
        overrides: ``section.key=value`` strings (``--set``).
        cls: the root dataclass (default: :class:`sdcompress.pipeline.RunConfig`).

    Raises:
        ConfigError: see :func:`load_recipe`.
    """
    cls = cls or _run_config_class()
    path = Path(path)
    data = _expand(read_yaml(path), cls, path, "", (path.resolve(),))
    for text in overrides:
        keys, value = parse_override(text, cls)
        _set_path(data, keys, value)
    return data


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, cls: type[T] | None = None) -> T:
    """Load a YAML recipe into a RunConfig (or ``cls``), strictly.

    Args:
        path: the recipe file.
        overrides: ``section.key=value`` strings applied after presets and the file.
        cls: the root dataclass (default: :class:`sdcompress.pipeline.RunConfig`).

    Returns:
        The config, every field type-checked.

    Raises:
        ConfigError: one line naming the file and key path: a missing file or preset,
            invalid YAML, an unknown key (with the known keys), a value of the wrong type,
            or an override of an unknown field.
    """
    cls = cls or _run_config_class()
    data = resolve_recipe(path, overrides, cls=cls)
    label = f"{path} (with presets and --set)" if overrides else str(path)
    return from_dict(cls, data, source=label)


def dump_recipe(config: Any, *, header: str | None = None) -> str:
    """The YAML text of a config dataclass; :func:`load_recipe` reads it back to an equal config.

    Args:
        config: a RunConfig (or any dataclass tree).
        header: comment lines put at the top (``#`` is added).
    """
    body = yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    if header:
        body = "".join(f"# {line}\n" for line in header.splitlines()) + body
    return body


def recipe_from_text(text: str, *, cls: type[T] | None = None, source: str = "<text>") -> T:
    """A config from YAML text (no presets); the inverse of :func:`dump_recipe`."""
    cls = cls or _run_config_class()
    data = _yaml_load(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections, got a {type(data).__name__}")
    return from_dict(cls, data, source=source)


def save_resolved_recipe(config: Any, folder: str | Path, *, source: str | None = None) -> Path:
    """Write ``resolved_recipe.yaml`` (the full config, every default spelled out) into ``folder``."""
    from sdcompress import __version__

    header = f"resolved recipe (sdcompress {__version__})" + (f" from {source}" if source else "")
    header += "\nrerun with: sdcompress recipe resolved_recipe.yaml"
    return write_text_atomic(Path(folder) / RESOLVED_RECIPE_FILE, dump_recipe(config, header=header))
