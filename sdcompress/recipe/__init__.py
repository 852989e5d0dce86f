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
3. extra presets: ``--preset NAME`` (``load_recipe(..., presets=[...])``), then those in
   ``$SDCOMPRESS_PRESETS`` (comma-separated);
4. ``--set section.key=value`` overrides, parsed by the field's type (``int``,
   ``float``, ``bool``, ``str``, ``None``, ``Literal``, lists, unions such as
   ``int | Literal["auto"]``; a list also takes ``a,b,c``).

The machinery is generic over nested dataclasses (:func:`from_dict`, :func:`to_dict`,
:func:`parse_override`), so it is tested on small stand-ins as well as on RunConfig.
Scalars follow YAML 1.2 (``1e-3`` is a float, ``off``/``yes`` are strings; PyYAML alone
reads YAML 1.1), see :mod:`sdcompress.recipe.yamlio`. Data-parallel runs under
``torchrun`` / ``accelerate launch``: :mod:`sdcompress.recipe.launch`.
"""

from sdcompress.recipe.launch import launch_context, run_recipe
from sdcompress.recipe.loader import (
    CONFIG_PATH_ENV,
    PRESET_KEYS,
    PRESETS_ENV,
    RESOLVED_RECIPE_FILE,
    dump_recipe,
    find_preset,
    load_recipe,
    preset_dirs,
    recipe_from_text,
    resolve_recipe,
    save_resolved_recipe,
)
from sdcompress.recipe.schema import apply_overrides, from_dict, parse_override, to_dict
from sdcompress.recipe.yamlio import dump_yaml, load_yaml_text, read_yaml

__all__ = [
    "CONFIG_PATH_ENV",
    "PRESET_KEYS",
    "PRESETS_ENV",
    "RESOLVED_RECIPE_FILE",
    "apply_overrides",
    "dump_recipe",
    "dump_yaml",
    "find_preset",
    "from_dict",
    "launch_context",
    "load_recipe",
    "load_yaml_text",
    "parse_override",
    "preset_dirs",
    "read_yaml",
    "recipe_from_text",
    "resolve_recipe",
    "run_recipe",
    "save_resolved_recipe",
    "to_dict",
]
