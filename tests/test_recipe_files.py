"""The shipped recipes and presets: each loads against RunConfig and round-trips; the
offline ones run end to end with small overrides; the CLI fails with one line and exit 2
on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdcompress.cli.main import main
from sdcompress.pipeline import RunConfig
from sdcompress.recipe import RESOLVED_RECIPE_FILE, dump_recipe, load_recipe, load_yaml_text, recipe_from_text, run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
OFFLINE = ["tiny-gpt2", "digits-mlp", "modular-grokking"]
# smaller than the smoke preset where the model allows it, to keep the suite fast
SHRINK = {
    "tiny-gpt2": ["model.options.n_layer=1", "model.options.n_embd=16", "data.block_size=32", "data.batch_size=8"],
    "digits-mlp": ["model.options.widths=[64, 8, 10]"],
    "modular-grokking": ["data.p=23", "model.options.hidden=8"],
}


def test_the_expected_recipes_ship() -> None:
    assert {p.stem for p in RECIPES} >= {*OFFLINE, "gpt2-wikitext2"}
    assert {p.stem for p in PRESETS} >= {"cpu-small", "estimator-fast", "estimator-main", "smoke"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_validates_and_round_trips(path: Path) -> None:
    cfg = load_recipe(path)
    assert isinstance(cfg, RunConfig)
    raw_text = path.read_text()
    assert cfg.model.name in raw_text and cfg.output.dir and cfg.output.dir.startswith("runs/")
    assert recipe_from_text(dump_recipe(cfg)) == cfg
    resolved = cfg.resolved()
    assert recipe_from_text(dump_recipe(resolved)) == resolved
    # every section the recipe names is really set: no value lost between YAML and RunConfig
    written = load_yaml_text(raw_text, str(path))
    for section, values in written.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key not in ("preset", "presets"):
                    got = getattr(getattr(cfg, section), key)
                    assert got == value or got == type(got)(value), (section, key)


@pytest.mark.parametrize(("recipe", "model"), [("tiny-gpt2", "tiny-gpt2"), ("digits-mlp", "mlp"), ("modular-grokking", "modular-mlp")])
def test_offline_recipes_train_and_estimate_like_the_main_job(recipe: str, model: str) -> None:
    """The recipes must not drift from `sdcompress MODEL --target-rank auto`; tiny-gpt2's is that job exactly."""
    from sdcompress.cli.main import build_parser
    from sdcompress.cli.run import config_from_args
    from sdcompress.recipe import to_dict

    argv = [model, "--target-rank", "auto"]
    parser, _ = build_parser(argv)
    cli = config_from_args(parser.parse_args(argv))
    cfg = load_recipe(ROOT / "recipes" / f"{recipe}.yaml")
    assert cfg.train == cli.train and cfg.estimate == cli.estimate and cfg.plan == cli.plan
    assert cfg.data.batch_size == cli.data.batch_size and cfg.data.name == cli.data.name
    if recipe == "tiny-gpt2":
        mine, theirs = to_dict(cfg), to_dict(cli)
        mine.pop("output"), theirs.pop("output")
        assert mine == theirs


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_is_a_valid_partial_recipe(preset: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"preset: {preset}\n")
    cfg = load_recipe(recipe)
    for section, values in load_yaml_text(preset.read_text(), str(preset)).items():
        if isinstance(values, dict):
            assert all(getattr(getattr(cfg, section), k) == v for k, v in values.items()), section
        else:
            assert getattr(cfg, section) == values


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE)
def test_offline_recipe_runs_end_to_end(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    overrides = [*SHRINK[name], f"output.dir={out}"]
    report = run_recipe(ROOT / "recipes" / f"{name}.yaml", overrides, presets=["smoke"])
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("sd_before", "sd_after", "test_loss_before", "test_loss_after", "params_before", "params_after", "verdict"):
        assert key in on_disk
    assert on_disk["sd_before"] == pytest.approx(report.sd_before)
    assert 0 < on_disk["params_after"] <= on_disk["params_before"]
    # the resolved recipe in the run folder reruns the same config
    again = load_recipe(out / RESOLVED_RECIPE_FILE)
    expected = load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides, presets=["smoke"]).resolved()
    assert again == expected
    assert again.train.steps == 20 and again.output.dir == str(out)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("body", "extra", "message"),
    [
        ("preset: ../../recipes/tiny-gpt2.yaml\nplan:\n  target_rnak: 8\n", [],
         "bad.yaml: plan.target_rnak: unknown key (did you mean 'target_rank'?); known keys: target_rank, prune, bits"),
        ("train:\n  steps: many\n", [], "bad.yaml: train.steps: expected an integer, got str 'many'"),
        ("train:\n  lr: -1\n", [], "bad.yaml: train.lr: must be a finite number > 0 or 'auto', got -1.0"),
        ("presets: [cpu-small, no-such-preset]\n", [], "preset 'no-such-preset' not found: looked for "),
        ("model: {name: mlp}\n", ["--set", "train.stepz=3"], "--set train.stepz=3: train.stepz: unknown key (did you mean 'steps'?)"),
        ("model: {name: mlp}\n", ["--set", "plan.bits=7x"], "--set plan.bits=7x: plan.bits: expected int | 'auto' | 'off', got '7x'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    body: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "a" / "b" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(body.replace("../../recipes", str(ROOT / "recipes")))
    code, out, err = _cli(["recipe", str(bad), *extra], capsys)
    assert code == 2
    assert err.startswith("sdcompress: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cli_check_prints_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "recipes" / "digits-mlp.yaml"
    code, out, _ = _cli(["recipe", str(path), "--preset", "smoke", "--set", "plan.target_rank=4", "--seed", "3", "--check"], capsys)
    assert code == 0
    cfg = recipe_from_text(out)
    assert cfg == load_recipe(path, ["plan.target_rank=4", "seed=3"], presets=["smoke"])
    assert cfg.plan.target_rank == 4 and cfg.seed == 3 and cfg.train.steps == 20


def test_hub_recipe_offline_says_so_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _cli(["recipe", str(ROOT / "recipes" / "gpt2-wikitext2.yaml"), "--output-dir", str(tmp_path / "g")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "'gpt2'" in err and "hub is unreachable" in err
    assert not (tmp_path / "g").exists()


def test_cli_exit_code_of_the_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("estimate:\n  methd: ps\n")
    proc = subprocess.run([sys.executable, "-m", "sdcompress", "recipe", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"sdcompress: error: {bad}: estimate.methd: unknown key (did you mean 'method'?); known keys: method, n_batches, slq_runs"
    )
