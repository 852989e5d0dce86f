"""Loading recipes: presets, the file, ``--set`` overrides; dumping the resolved config."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sdcompress.errors import ConfigError
from sdcompress.io import write_text_atomic
from sdcompress.recipe.schema import (
    Invalid,
    apply_overrides,
    convert_dataclass,
    dataclass_fields,
    describe_value,
    from_dict,
    join_path,
    strip_optional,
    to_dict,
)
from sdcompress.recipe.yamlio import dump_yaml, load_yaml_text, read_yaml

T = TypeVar("T")
RESOLVED_RECIPE_FILE = "resolved_recipe.yaml"
PRESET_KEYS = ("preset", "presets")
CONFIG_PATH_ENV = "SDCOMPRESS_CONFIG_PATH"
PRESETS_ENV = "SDCOMPRESS_PRESETS"
logger = logging.getLogger(__name__)


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
            raise ConfigError(f"{source}: {join_path(where, key)}: expected a preset name or a list of names, {describe_value(value)}")
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
        if where and section in preset and section not in dataclass_fields(cls):
            preset = preset[section]  # a whole-recipe preset used for one section
            if not isinstance(preset, dict):
                raise ConfigError(f"{path}: {section}: expected a mapping, {describe_value(preset)}")
        merged = _merge(merged, _expand(preset, cls, path, where, (*chain, path.resolve())))
    fields = dataclass_fields(cls)
    for key, value in list(data.items()):
        sub = strip_optional(fields.get(key, Any))
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            data[key] = _expand(value, sub, source, join_path(where, key), chain)
    try:
        convert_dataclass(data, cls, where, build=False)
    except Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return _merge(merged, data)


# ------------------------------------------------------------------------ public API


def _run_config_class() -> type:
    from sdcompress.pipeline import RunConfig

    return RunConfig


def resolve_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, presets: Sequence[str] = (), cls: type | None = None
) -> dict[str, Any]:
    """The recipe at ``path`` as one plain mapping.

    Layers, later winning: the file's own presets, the file, the extra ``presets``
    (``--preset``, e.g. ``smoke`` for a quick check), the presets named in the
    environment variable ``SDCOMPRESS_PRESETS`` (comma-separated; for running every
    recipe small, as tests/test_readme.py does), the ``overrides`` (``--set``).

    Args:
        path: the YAML recipe.
        overrides: ``section.key=value`` strings.
        presets: extra preset names (or paths) layered over the file.
        cls: the root dataclass (default: :class:`sdcompress.pipeline.RunConfig`).

    Raises:
        ConfigError: see :func:`load_recipe`.
    """
    cls = cls or _run_config_class()
    path = Path(path)
    data = _expand(read_yaml(path), cls, path, "", (path.resolve(),))
    from_env = [n.strip() for n in os.environ.get(PRESETS_ENV, "").split(",") if n.strip()]
    if from_env:
        logger.info("extra presets from $%s: %s", PRESETS_ENV, ", ".join(from_env))
    for name in [*presets, *from_env]:
        data = _merge(data, _expand({"preset": name}, cls, path, "", (path.resolve(),)))
    return apply_overrides(data, overrides, cls)


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, presets: Sequence[str] = (), cls: type[T] | None = None
) -> T:
    """Load a YAML recipe into a RunConfig (or ``cls``), strictly.

    Args:
        path: the recipe file.
        overrides: ``section.key=value`` strings applied last.
        presets: extra preset names layered over the file, below ``overrides``.
        cls: the root dataclass (default: :class:`sdcompress.pipeline.RunConfig`).

    Returns:
        The config, every field type-checked.

    Raises:
        ConfigError: one line naming the file and key path: a missing file or preset,
            invalid YAML, an unknown key (with the known keys), a value of the wrong type,
            or an override of an unknown field.
    """
    cls = cls or _run_config_class()
    data = resolve_recipe(path, overrides, presets=presets, cls=cls)
    label = f"{path} (with presets and --set)" if overrides or presets or os.environ.get(PRESETS_ENV) else str(path)
    return from_dict(cls, data, source=label)


def dump_recipe(config: Any, *, header: str | None = None) -> str:
    """The YAML text of a config dataclass; :func:`load_recipe` reads it back to an equal config.

    Args:
        config: a RunConfig (or any dataclass tree).
        header: comment lines put at the top (``#`` is added).
    """
    body = dump_yaml(to_dict(config))
    if header:
        body = "".join(f"# {line}\n" for line in header.splitlines()) + body
    return body


def recipe_from_text(text: str, *, cls: type[T] | None = None, source: str = "<text>") -> T:
    """A config from YAML text (no presets); the inverse of :func:`dump_recipe`."""
    cls = cls or _run_config_class()
    data = load_yaml_text(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections, got a {type(data).__name__}")
    return from_dict(cls, data, source=source)


def save_resolved_recipe(config: Any, folder: str | Path, *, source: str | None = None) -> Path:
    """Write ``resolved_recipe.yaml`` (the full config, every default spelled out) into ``folder``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("sdcompress")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = "source"
    header = f"resolved recipe (sdcompress {release})" + (f" from {source}" if source else "")
    header += "\nrerun with: sdcompress recipe resolved_recipe.yaml"
    return write_text_atomic(Path(folder) / RESOLVED_RECIPE_FILE, dump_recipe(config, header=header))
