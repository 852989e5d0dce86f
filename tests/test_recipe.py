"""Recipe machinery on small stand-in dataclasses: strict loading, presets, overrides,
round trips. (The shipped recipes against RunConfig are in test_recipe_files.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from sdcompress.errors import ConfigError
from sdcompress.recipe import (
    RESOLVED_RECIPE_FILE,
    dump_recipe,
    from_dict,
    load_recipe,
    parse_override,
    recipe_from_text,
    save_resolved_recipe,
    to_dict,
)


@dataclass
class Net:
    name: str = "tiny-gpt2"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class Shrink:
    target_rank: int | Literal["auto"] = "auto"
    bits: str | int = "off"
    tolerance: float | None = None
    targets: list[str] | None = None
    widths: tuple[int, ...] = (64, 10)
    mode: Literal["fast", "exact"] = "fast"
    on: bool = True

    def __post_init__(self) -> None:
        if self.tolerance is not None and self.tolerance <= 0:
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance}")


@dataclass
class Out:
    dir: Path = Path("runs/x")
    overwrite: bool = False


@dataclass
class Run:
    model: Net = field(default_factory=Net)
    plan: Shrink = field(default_factory=Shrink)
    output: Out = field(default_factory=Out)
    seed: int = 0
    lr: float = 0.1
    extra: Net | None = None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDCOMPRESS_CONFIG_PATH", raising=False)
    _write(tmp_path / "configs/small.yaml", "model: {options: {n_layer: 1, n_embd: 8}}\nlr: 1e-3\nseed: 4\n")
    _write(tmp_path / "configs/ranks.yaml", "target_rank: 3\nbits: 4\n")
    _write(tmp_path / "configs/whole.yaml", "plan: {mode: exact}\nmodel: {name: mlp}\n")
    _write(tmp_path / "configs/chain.yaml", "preset: small\nseed: 5\n")
    return tmp_path


def test_presets_then_file_then_overrides(tree: Path) -> None:
    recipe = _write(
        tree / "recipes/a.yaml",
        "presets: [chain]\nmodel:\n  name: mlp\n  options: {n_embd: 16}\nplan:\n  preset: ranks\n  bits: 8\n",
    )
    cfg = load_recipe(recipe, ["plan.target_rank=auto", "model.options.n_head=2", "plan.widths=3,4", "seed=9"], cls=Run)
    # preset chain: small (seed 4) < chain (seed 5) < file < --set (seed 9)
    assert cfg.seed == 9
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)  # YAML 1.2 float, not the string '1e-3'
    assert cfg.model == Net(name="mlp", options={"n_layer": 1, "n_embd": 16, "n_head": 2})
    assert cfg.plan.target_rank == "auto" and cfg.plan.bits == 8  # file beats section preset
    assert cfg.plan.widths == (3, 4)


def test_section_preset_from_a_whole_recipe_file(tree: Path) -> None:
    recipe = _write(tree / "recipes/b.yaml", "plan: {preset: whole}\n")
    cfg = load_recipe(recipe, cls=Run)
    assert cfg.plan.mode == "exact"
    assert cfg.model.name == "tiny-gpt2"  # only the plan section of whole.yaml is used


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plan.target_rank=8", 8),
        ("plan.target_rank=auto", "auto"),
        ("plan.bits=4", 4),  # str | int: an int when it reads as one
        ("plan.bits=off", "off"),
        ("plan.tolerance=none", None),
        ("plan.tolerance=1e-2", 0.01),
        ("plan.targets=[a, 're:h\\.0']", ["a", "re:h\\.0"]),
        ("plan.targets=a,b", ["a", "b"]),
        ("plan.on=false", False),
        ("plan.mode=exact", "exact"),
        ("lr=3", 3.0),
        ("output.dir=out/run", Path("out/run")),
        ("model.options.widths=[64, 8, 10]", [64, 8, 10]),
        ("model.name=1e3", "1e3"),  # a str field keeps the text as written
    ],
)
def test_override_values_follow_the_field_type(text: str, expected: Any) -> None:
    keys, value = parse_override(text, Run)
    assert keys == text.split("=", 1)[0].split(".")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plan.target_rnak=3", "plan.target_rnak: unknown key (did you mean 'target_rank'?); known keys: target_rank"),
        ("nope.x=1", "nope: unknown key; known keys: model, plan, output, seed, lr, extra"),
        ("plan.target_rank=three", "plan.target_rank: expected int | 'auto', got 'three'"),
        ("plan.mode=slow", "plan.mode: expected one of fast, exact, got 'slow'"),
        ("seed=1.5", "seed: expected an integer, got '1.5'"),
        ("plan.on=maybe", "plan.on: expected true or false"),
        ("seed.x=1", "seed is of type int and has no key 'x'"),
        ("plan", "expected section.key=value"),
    ],
)
def test_bad_overrides_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text, Run)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("plan:\n  target_rnak: 3\n", "bad.yaml: plan.target_rnak: unknown key (did you mean 'target_rank'?); known keys: target_rank, bits"),
        ("plan:\n  target_rank: three\n", "bad.yaml: plan.target_rank: expected int | 'auto', got str 'three'"),
        ("seed: 1.5\n", "bad.yaml: seed: expected an integer, got float 1.5"),
        ("plan: {on: 1}\n", "bad.yaml: plan.on: expected true or false, got int 1"),
        ("model: {name: 5}\n", "bad.yaml: model.name: expected a string, got int 5 (quote it in YAML)"),
        ("model: [1, 2]\n", "bad.yaml: model: expected a mapping of Net fields"),
        ("plan: {widths: 3}\n", "bad.yaml: plan.widths: expected a list, got int 3"),
        ("extra: {nme: x}\n", "bad.yaml: extra.nme: unknown key (did you mean 'name'?)"),
        ("plan: {tolerance: -1}\n", "bad.yaml: plan: tolerance must be > 0, got -1.0"),
        ("seed: 1\nseed: 2\n", "bad.yaml: not valid YAML: duplicate key 'seed'"),
        ("- a\n- b\n", "bad.yaml: a recipe must be a mapping of sections, got a list"),
        ("preset: nowhere\n", "bad.yaml: preset 'nowhere' not found: looked for"),
        ("plan: {preset: [ranks, nowhere]}\n", "bad.yaml: preset 'nowhere' not found"),
    ],
)
def test_bad_recipes_are_one_clear_error_naming_file_and_key(tree: Path, body: str, message: str) -> None:
    path = _write(tree / "recipes/bad.yaml", body)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, cls=Run)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_preset_names_the_file_it_looked_for(tree: Path) -> None:
    path = _write(tree / "recipes/m.yaml", "preset: nowhere\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, cls=Run)
    assert "configs/nowhere.yaml" in str(info.value)
    assert "available presets: chain, ranks, small, whole" in str(info.value)


def test_errors_inside_a_preset_name_the_preset_file(tree: Path) -> None:
    _write(tree / "configs/broken.yaml", "plan: {bitz: 8}\n")
    path = _write(tree / "recipes/c.yaml", "preset: broken\n")
    with pytest.raises(ConfigError, match=r"configs/broken\.yaml: plan\.bitz: unknown key"):
        load_recipe(path, cls=Run)


def test_preset_cycle_is_refused(tree: Path) -> None:
    _write(tree / "configs/loop1.yaml", "preset: loop2\n")
    _write(tree / "configs/loop2.yaml", "preset: loop1\n")
    path = _write(tree / "recipes/d.yaml", "preset: loop1\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_recipe(path, cls=Run)


def test_config_path_env_and_relative_preset_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tree / "elsewhere/fast.yaml", "lr: 0.5\n")
    monkeypatch.setenv("SDCOMPRESS_CONFIG_PATH", str(tree / "elsewhere"))
    path = _write(tree / "recipes/e.yaml", "presets: [fast, ../configs/ranks.yaml]\n")
    with pytest.raises(ConfigError, match="target_rank: unknown key"):  # ranks.yaml is a bare plan section
        load_recipe(path, cls=Run)
    path = _write(tree / "recipes/e.yaml", "preset: fast\nplan: {preset: ../configs/ranks.yaml}\n")
    cfg = load_recipe(path, cls=Run)
    assert cfg.lr == 0.5 and cfg.plan.target_rank == 3


def test_missing_file_is_one_clear_error(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"recipe file 'recipes/none\.yaml' does not exist"):
        load_recipe("recipes/none.yaml", cls=Run)


def test_round_trip_and_resolved_recipe(tree: Path) -> None:
    cfg = Run(
        model=Net("mlp", {"widths": [64, 8, 10]}, seed=2),
        plan=Shrink(target_rank=4, bits=8, tolerance=0.25, targets=["re:layers\\.0"], widths=(1, 2, 3), mode="exact", on=False),
        output=Out(Path("a/b"), True),
        seed=7,
        lr=1e-4,
        extra=Net("x"),
    )
    text = dump_recipe(cfg)
    assert recipe_from_text(text, cls=Run) == cfg
    assert from_dict(Run, to_dict(cfg)) == cfg
    written = save_resolved_recipe(cfg, tree / "run", source="recipes/a.yaml")
    assert written.name == RESOLVED_RECIPE_FILE
    assert load_recipe(written, cls=Run) == cfg
    assert written.read_text().startswith("# resolved recipe")
    # defaults are spelled out in full
    assert "widths" in dump_recipe(Run()) and recipe_from_text(dump_recipe(Run()), cls=Run) == Run()


def test_yaml_1_2_scalars_and_quoting_round_trip(tree: Path) -> None:
    # YAML 1.1 would read off/on/yes as booleans and 1e-3 as a string
    path = _write(tree / "recipes/f.yaml", "plan: {bits: off, targets: [on, yes, no]}\nlr: 1e-3\nmodel: {options: {x: 1:20, y: 010}}\n")
    cfg = load_recipe(path, cls=Run)
    assert cfg.plan.bits == "off" and cfg.plan.targets == ["on", "yes", "no"] and cfg.lr == 0.001
    assert cfg.model.options == {"x": "1:20", "y": "010"}
    tricky = Run(model=Net(name="1e3", options={"a": "true", "b": "null", "c": "off"}))
    assert recipe_from_text(dump_recipe(tricky), cls=Run) == tricky
    import yaml

    assert from_dict(Run, yaml.safe_load(dump_recipe(tricky))) == tricky  # plain PyYAML reads it the same


def test_extra_presets_layer_over_the_file_below_overrides(tree: Path) -> None:
    _write(tree / "configs/quick.yaml", "seed: 11\nplan: {bits: 4, mode: exact}\n")
    path = _write(tree / "recipes/g.yaml", "preset: small\nseed: 1\nplan: {bits: 8}\n")
    cfg = load_recipe(path, ["plan.mode=fast"], presets=["quick"], cls=Run)
    assert (cfg.seed, cfg.plan.bits, cfg.plan.mode, cfg.lr) == (11, 4, "fast", 1e-3)
    with pytest.raises(ConfigError, match="preset 'nope' not found"):
        load_recipe(path, presets=["nope"], cls=Run)


@dataclass
class Checked:
    lr: float = 0.1

    def validate(self) -> "Checked":
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        return self


@dataclass
class WithChecked:
    train: Checked = field(default_factory=Checked)


def test_validate_methods_run_at_load_time(tree: Path) -> None:
    path = _write(tree / "recipes/v.yaml", "train: {lr: -0.5}\n")
    with pytest.raises(ConfigError, match=r"v\.yaml: train: lr must be > 0, got -0\.5"):
        load_recipe(path, cls=WithChecked)


def test_presets_from_the_environment(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tree / "configs/quick.yaml", "seed: 11\n")
    path = _write(tree / "recipes/h.yaml", "seed: 1\n")
    monkeypatch.setenv("SDCOMPRESS_PRESETS", "small, quick")
    cfg = load_recipe(path, cls=Run)
    assert (cfg.seed, cfg.lr) == (11, 1e-3)
    assert load_recipe(path, ["seed=2"], cls=Run).seed == 2  # --set still wins
