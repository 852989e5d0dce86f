"""Strict conversion between plain data (parsed YAML) and nested config dataclasses.

:func:`from_dict` checks every key and value against the dataclass's type hints
(dataclasses, ``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal``, unions,
lists, tuples, dicts, ``Path``, enums) and builds it; :func:`to_dict` is the inverse;
:func:`parse_override` reads a ``section.key=value`` string by the type of that field.
Errors carry the key path (``plan.target_rank``) so the caller can name the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from sdcompress.config import FieldError, Validated
from sdcompress.errors import ConfigError
from sdcompress.recipe.yamlio import load_yaml_text

T = TypeVar("T")


class Invalid(Exception):
    """A problem at a key path; turned into a ConfigError once the file is known."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where or '(top level)'}: {message}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def dataclass_fields(cls: type) -> dict[str, Any]:
    """The init fields of dataclass ``cls``, name -> resolved type hint."""
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


def describe_value(value: Any) -> str:
    """``"got int 5"``: a received value for an error message (long reprs shortened)."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"got {type(value).__name__} {shown}"


def join_path(where: str, key: Any) -> str:
    """``plan`` + ``bits`` -> ``plan.bits`` (a key path for messages)."""
    return f"{where}.{key}" if where else str(key)


def _convert(value: Any, tp: Any, where: str, build: bool) -> Any:
    """Check ``value`` against type ``tp``; return it converted (dataclass instances when
    ``build``, plain mappings of checked values otherwise).

    Raises:
        Invalid: naming the key path.
    """
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is not None:
            raise Invalid(where, f"expected null, {describe_value(value)}")
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        problems = []
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(value, member, where, build)
            except Invalid as exc:
                problems.append(exc)
        # a union of one dataclass (X | None): its own message is the useful one
        if len(problems) == 1:
            raise problems[0]
        raise Invalid(where, f"expected {_type_name(tp)}, {describe_value(value)}")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise Invalid(where, f"expected one of {', '.join(repr(a) for a in args)}, {describe_value(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return convert_dataclass(value, tp, where, build)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise Invalid(where, f"expected a list, {describe_value(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise Invalid(where, f"expected a list of {len(args)} items, {describe_value(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]", build) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]", build) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise Invalid(where, f"expected a mapping, {describe_value(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, where, build): _convert(v, val_tp, join_path(where, k), build) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(where, f"expected true or false, {describe_value(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(where, f"expected an integer, {describe_value(value)}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Invalid(where, f"expected a number, {describe_value(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise Invalid(where, f"expected a string, {describe_value(value)} (quote it in YAML)")
        return value
    if isinstance(tp, type) and issubclass(tp, Path):
        if not isinstance(value, (str, Path)):
            raise Invalid(where, f"expected a path, {describe_value(value)}")
        return Path(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return value if isinstance(value, tp) else tp(value)
        except ValueError:
            raise Invalid(where, f"expected one of {', '.join(repr(m.value) for m in tp)}, {describe_value(value)}") from None
    if isinstance(tp, type) and not isinstance(value, tp):
        raise Invalid(where, f"expected {_type_name(tp)}, {describe_value(value)}")
    return value


def convert_dataclass(value: Any, cls: type, where: str, build: bool) -> Any:
    """Check a mapping against dataclass ``cls`` (unknown keys, value types, recursively).

    Args:
        value: a mapping (or an instance of ``cls``).
        cls: the dataclass.
        where: key path of ``value`` for messages (``""`` at the top).
        build: return a ``cls`` instance (missing keys take defaults; the dataclass's own
            validation runs: ``__post_init__`` and a ``validate()`` method if it has one);
            otherwise return the checked mapping (partial is fine).

    Raises:
        Invalid: naming the key path of the first problem.
    """
    if isinstance(value, cls):
        value = to_dict(value)
    if not isinstance(value, Mapping):
        raise Invalid(where, f"expected a mapping of {cls.__name__} fields, {describe_value(value)}")
    fields = dataclass_fields(cls)
    out = {}
    for key, item in value.items():
        if key not in fields:
            raise Invalid(join_path(where, key), _unknown_key(key, list(fields)))
        out[key] = _convert(item, fields[key], join_path(where, key), build)
    if not build:
        return out
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [k for k in required if k not in out]
    if missing:
        raise Invalid(where, f"missing required key(s): {', '.join(missing)}")
    try:
        obj = cls(**out)
        # the dataclass's own range checks (the toolkit's configs run them in __post_init__;
        # other dataclasses may have a validate() method), so a recipe fails at load time
        validate = getattr(obj, "validate", None)
        if callable(validate) and not isinstance(obj, Validated):
            validate()
        return obj
    except FieldError as exc:  # named by its path in this recipe: "train.lr: must be > 0, got 0"
        own = exc.section == getattr(cls, "SECTION", None)  # else raised by a section below cls
        raise Invalid(join_path(where, exc.name if own else exc.key), exc.detail) from exc
    except ConfigError as exc:
        raise Invalid(where, str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise Invalid(where, f"invalid {cls.__name__}: {exc}") from exc


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
        return convert_dataclass(data, cls, "", build=True)
    except Invalid as exc:
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
        Invalid: the text is not a value of that type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return load_yaml_text(text, f"--set {where}")
    if tp is type(None):
        if text.strip().lower() in _NULLS:
            return None
        raise Invalid(where, f"expected null, got {text!r}")
    if _is_union(tp):
        if type(None) in args and text.strip().lower() in _NULLS:
            return None
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _parse_text(text, member, where)
            except Invalid:
                continue
        raise Invalid(where, f"expected {_type_name(tp)}, got {text!r}")
    if origin is Literal:
        for choice in args:
            if str(choice) == text.strip():
                return choice
        raise Invalid(where, f"expected one of {', '.join(str(a) for a in args)}, got {text!r}")
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise Invalid(where, f"expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise Invalid(where, f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise Invalid(where, f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, Path):
        return Path(text)
    value = load_yaml_text(text, f"--set {where}")
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
        inner = strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            fields = dataclass_fields(inner)
            if key not in fields:
                section = ".".join(walked) or "the recipe's top level"
                raise ConfigError(f"--set {override}: {join_path('.'.join(walked), key)}: {_unknown_key(key, list(fields))} (in {section})")
            tp = fields[key]
        elif typing.get_origin(inner) in (dict, Mapping, typing.Mapping) or inner is dict:
            tp = typing.get_args(inner)[1] if typing.get_args(inner) else Any
        elif inner is Any:
            tp = Any
        else:
            raise ConfigError(f"--set {override}: {'.'.join(walked)} is of type {_type_name(tp)} and has no key {key!r}")
        walked.append(key)
    return tp


def strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
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
    except Invalid as exc:
        raise ConfigError(f"--set {text}: {exc}") from None


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """``data[k1][k2]... = value`` (as plain data), creating mappings on the way."""
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = to_dict(value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to plain data, each read by its field's type.

    The one ``--set`` loop (the recipe loader, the main job's CLI and the experiments use it).

    Args:
        data: the plain mapping (e.g. :func:`to_dict` of a config), changed in place.
        overrides: the ``--set`` strings, applied in order.
        cls: the root dataclass the keys are fields of.

    Returns:
        ``data``.

    Raises:
        ConfigError: see :func:`parse_override`.
    """
    for text in overrides:
        keys, value = parse_override(text, cls)
        set_path(data, keys, value)
    return data
