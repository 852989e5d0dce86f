"""Every command in README.md's code blocks parses, and the cheap ones run (small settings).

- ``sdcompress …`` lines: parsed by the real parser; the main job and ``report`` run for
  real with the smoke preset's values as ``--steps``/``--set`` and a smaller model;
  ``recipe`` lines run with ``--check`` (the recipes run end to end in
  test_recipe_files.py, with the same small settings).
- ``torchrun`` / ``accelerate launch`` lines: parsed by the launchers' own parsers; the
  inner command runs with ``--check`` (the launchers are exercised in test_distributed.py).
- The Quick start's install-and-run lines (CI runs them verbatim): the ``sdcompress`` part
  is parsed (the same main job runs small in test_recipe_files.py); ``pytest -n`` needs
  pytest-xdist, which must be importable.
- Python blocks run as written, in order, in a scratch folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sdcompress.cli.main import SUBCOMMANDS, build_parser, main
from sdcompress.recipe import load_recipe, load_yaml_text

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHRINK = {
    "tiny-gpt2": ["model.options.n_layer=1", "model.options.n_embd=16", "data.block_size=32", "data.batch_size=8"],
    "mlp": ["model.options.widths=[64, 8, 10]"],
    "modular-mlp": ["data.p=23", "model.options.hidden=8"],
}


def fenced_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def shell_commands() -> list[str]:
    """Commands of ```bash blocks (comments dropped, ``\\`` continuations joined)."""
    out = []
    for block in fenced_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def smoke_sets() -> list[str]:
    """configs/smoke.yaml as ``--set section.key=value`` options (for the main job)."""
    smoke = load_yaml_text((ROOT / "configs" / "smoke.yaml").read_text(), "smoke.yaml")
    sets = []
    for section, values in smoke.items():
        if not isinstance(values, dict):  # a top-level field such as allow_untrained
            sets += ["--set", f"{section}={str(values).lower() if isinstance(values, bool) else values}"]
            continue
        for key, value in values.items():
            sets += ["--set", f"{section}.{key}={value}"]
    return sets


def sdcompress_argv(words: list[str]) -> list[str] | None:
    """The argument list after ``sdcompress`` / ``python -m sdcompress``, else None."""
    if words and Path(words[0]).name == "sdcompress":
        return words[1:]
    if words[:3] in (["python", "-m", "sdcompress"], ["python3", "-m", "sdcompress"]):
        return words[3:]
    return None


def check_parses(argv: list[str]) -> None:
    parser, _ = build_parser(argv)
    parser.parse_args(argv[1:] if argv and argv[0] in SUBCOMMANDS else argv)


def small(argv: list[str]) -> list[str]:
    """The command with small settings (see the module docstring)."""
    if argv[0] == "recipe":
        return [*argv, "--check"]
    if argv[0] in SUBCOMMANDS:
        return argv
    return [*argv, *smoke_sets(), *(x for s in SHRINK.get(argv[0], []) for x in ("--set", s))]


def inner_of_launcher(words: list[str]) -> list[str]:
    """Check a torchrun / accelerate launch line with the launcher's parser; return the inner argv."""
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(words[1:])
        assert args.standalone and args.nproc_per_node == "2"
    else:
        from accelerate.commands.launch import launch_command_parser

        assert words[:2] == ["accelerate", "launch"]
        args = launch_command_parser().parse_args(words[2:])
        assert args.multi_gpu and args.num_processes == 2  # without --multi_gpu it would start one process on CPU
    assert args.module and args.training_script == "sdcompress"
    return list(args.training_script_args)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("recipes", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDCOMPRESS_PRESETS", "smoke")
    return tmp_path


def test_readme_has_an_example_per_interface() -> None:
    commands = shell_commands()
    firsts = {c.split()[0] for c in commands}
    assert {"sdcompress", "torchrun", "accelerate"} <= firsts
    assert any(" recipe " in c for c in commands) and any(c.startswith("sdcompress report") for c in commands)
    python = "\n".join(fenced_blocks("python"))
    assert "SDCallback" in python and "SDTracker" in python and "estimate_sd" in python
    assert len(quick_start_commands()) == 2


def test_every_shell_command_parses_and_the_cheap_ones_run(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran = []
    for command in shell_commands():
        words = shlex.split(command)
        argv = sdcompress_argv(words)
        if argv is None:
            argv = inner_of_launcher(words)
            argv = [*argv, "--check"]
        check_parses(argv)
        code = main(small(argv))
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{err[-2000:]}"
        ran.append(argv[0])
        if argv[-1] == "--check":  # a resolved recipe that loads back
            assert "model:" in out
    assert "report" in ran and "recipe" in ran
    report = (scratch / "runs" / "mlp" / "report.json")
    assert report.is_file() and (scratch / "runs" / "mlp" / "report.md").is_file()


def test_quick_start_commands() -> None:
    main_job, tests = quick_start_commands()
    steps = [shlex.split(part) for part in main_job.split("&&")]
    assert steps[0][:3] == ["python3", "-m", "venv"] and "pip" in steps[1][0]
    argv = sdcompress_argv(steps[-1])
    assert argv == ["tiny-gpt2", "--target-rank", "auto"]
    check_parses(argv)  # the tiny-gpt2 main job itself runs end to end in test_pipeline.py / test_recipe_files.py
    assert tests.split("&&")[-1].split()[-2:] == ["-n", "2"]
    import importlib.util

    assert importlib.util.find_spec("xdist") is not None  # pytest -n needs pytest-xdist (the dev extra)


def test_recipe_lines_resolve_to_what_they_say(scratch: Path) -> None:
    line = next(c for c in shell_commands() if "--set train.steps=200" in c)
    argv = sdcompress_argv(shlex.split(line))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_recipe(argv[1], [*sets, "output.dir=runs/digits-r4"])
    assert cfg.train.steps == 200 and cfg.plan.target_rank == 4 and cfg.output.dir == "runs/digits-r4"


def test_python_blocks_run(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = fenced_blocks("python")
    assert len(blocks) >= 3
    for block in blocks:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    out = capsys.readouterr().out
    assert "SD (ps)" in out  # est.summary()
    assert (scratch / "runs" / "finetune" / "sd_log.json").is_file()
    assert (scratch / "runs" / "custom" / "sd_log.json").is_file()
