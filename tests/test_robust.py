"""Hostile and careless input (issue 9, part B): every failure a user can cause exits 2
with one line naming the value and the fix, leaves nothing half-written, and is tested
here. Also the run-folder lock, the dead-network refusal, SIGTERM and file modes."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdcompress.cli.main import main
from sdcompress.errors import (
    CompressionError,
    ConfigError,
    DataError,
    FolderLockedError,
    ModelError,
    OfflineError,
    OutputError,
)
from sdcompress.io import LOCK_FILE, FolderLock, check_writable
from sdcompress.models import MLP, load_model, tiny_gpt2
from sdcompress.train.quality import assess_train_log, assess_training

ROOT = Path(__file__).resolve().parents[1]
#: a short main job on the digits MLP (trains 200 steps to ~0.89 train accuracy; cached per session)
QUICK = ["mlp", "--steps", "200", "--target-rank", "2"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of an in-process CLI run (SystemExit from argparse included)."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


def _one_error_line(err: str) -> str:
    """The single ``sdcompress: error:`` line; fails on a traceback or a second error line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


# ------------------------------------------------------------------ dead or untrained networks


def test_quality_chance_level_by_loss_accuracy_and_steps():
    k = 10
    dead = assess_training(steps=1000, train_loss=math.log(k), train_accuracy=0.099, n_outputs=k)
    assert dead.untrained and "chance level" in dead.reason and dead.chance_loss == pytest.approx(math.log(10))
    # within 1% of ln K (below it) is still chance; 2% below is not (judged by accuracy next)
    assert assess_training(steps=10, train_loss=0.995 * math.log(k), train_accuracy=None, n_outputs=k).untrained
    assert not assess_training(steps=10, train_loss=0.98 * math.log(k), train_accuracy=None, n_outputs=k).untrained
    # above ln K (worse than guessing) counts too
    assert assess_training(steps=10, train_loss=5.0, train_accuracy=None, n_outputs=k).untrained
    # accuracy at chance with a loss below it (a few confident mistakes)
    acc = assess_training(steps=10, train_loss=1.5, train_accuracy=0.105, n_outputs=k)
    assert acc.untrained and "accuracy" in acc.reason
    assert not assess_training(steps=10, train_loss=1.5, train_accuracy=0.5, n_outputs=k).untrained
    # no training at all, whatever the numbers
    none = assess_training(steps=0, train_loss=0.1, train_accuracy=1.0, n_outputs=k)
    assert none.untrained and "0 SGD steps" in none.reason
    # a trained language model over 257 bytes
    assert not assess_training(steps=500, train_loss=2.4, train_accuracy=None, n_outputs=257).untrained
    assert assess_training(steps=500, train_loss=math.log(257), train_accuracy=None, n_outputs=257).untrained
    # the log form reads the final train loss and the last record's train accuracy
    log = {"steps": 1000, "final": {"train_loss": 2.3025851}, "log": [{"train_accuracy": 0.9}, {"train_accuracy": 0.0898}]}
    assert assess_train_log(log, 10).untrained


@pytest.mark.parametrize("extra", [["--lr", "20"], ["--steps", "0"]], ids=["lr20", "steps0"])
def test_dead_network_is_refused_and_writes_nothing(extra, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["mlp", "--steps", "100", "--target-rank", "2", *extra, "--output-dir", str(out), "-q"]
    code, err = _cli(args, capsys)
    line = _one_error_line(err)
    assert code == 2 and "--allow-untrained" in line
    assert ("chance level" in line and "smaller --lr" in line) if "--lr" in extra else "0 SGD steps" in line
    assert not out.exists()


def test_allow_untrained_runs_and_the_report_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(["mlp", "--steps", "0", "--target-rank", "2", "--allow-untrained", "--output-dir", str(out), "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["message"].startswith("UNTRAINED network") and report["verdict"]["untrained"]
    assert report["training"]["quality"]["untrained"] is True
    assert "UNTRAINED network" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- run-folder lock


def test_folder_lock_refuses_a_second_holder_and_removes_its_file(tmp_path):
    with FolderLock(tmp_path) as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(FolderLockedError, match=rf"in use by another sdcompress run \(pid {os.getpid()}, since"):
            FolderLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    FolderLock(tmp_path).acquire().release()  # free again


def test_lock_probe_used_by_data_parallel_ranks(tmp_path):
    probe = FolderLock(tmp_path)
    assert probe.held_elsewhere() is None  # no lock file: free
    with FolderLock(tmp_path):
        assert f"pid {os.getpid()}" in (probe.held_elsewhere() or "")
        with pytest.raises(FolderLockedError, match="in use by another sdcompress run"):
            probe.check_free()
    (tmp_path / LOCK_FILE).write_text('{"pid": 999999999}')  # left by a killed run: free
    probe.check_free()
    FolderLock(tmp_path).acquire().release()  # probing took nothing


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": os.uname().nodename, "since": "yesterday"}))
    with caplog.at_level(logging.WARNING, logger="sdcompress.io"):
        with FolderLock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock of pid 999999999" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_main_job_on_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out):  # another run (here: another open file of this process) holds it
        code, err = _cli([*QUICK, "--output-dir", str(out), "--overwrite", "-q"], capsys)
    line = _one_error_line(err)
    assert code == 2 and f"pid {os.getpid()}" in line and "choose another --output-dir" in line
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, lock released


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*QUICK, "--output-dir", str(out), "-q"]) == 0
    return out


def test_one_file_mode_for_everything_written(finished_run):
    mask = os.umask(0)
    os.umask(mask)
    modes = {}
    for path in [finished_run, *finished_run.rglob("*")]:
        modes[str(path.relative_to(finished_run))] = stat.S_IMODE(path.stat().st_mode)
    want_dir, want_file = 0o777 & ~mask, 0o666 & ~mask
    wrong = {p: oct(m) for p, m in modes.items() if m != (want_dir if (finished_run / p).is_dir() else want_file)}
    assert not wrong, wrong
    assert {"trained", "lyapunov", "model/model.safetensors", "trained/model.safetensors"} <= set(modes)
    assert _leftovers(finished_run) == []
    cache = Path(os.environ["SDCOMPRESS_CACHE"])
    assert not list(cache.glob("*.lock"))  # no lock files stay in the cache


def test_leftover_temporaries_of_a_killed_run_are_removed_on_resume(finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "report.json").unlink()  # unfinished: resumes
    (out / ".lyapunov.abc123.tmp").mkdir()
    (out / ".config.json.xyz.tmp").write_text("{")
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "since": "then"}))  # killed: its lock is not held
    code, err = _cli([*QUICK, "--output-dir", str(out), "-q"], capsys)
    assert code == 0, err
    assert _leftovers(out) == [] and (out / "report.json").is_file()


# ------------------------------------------------------------------------- output locations


def test_output_dir_that_is_a_regular_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    MLP(widths=(64, 32, 10)).save_pretrained(tmp_path / "base")
    plan = tmp_path / "plan.json"
    from sdcompress.plan.schema import ModulePlan, Plan

    Plan((ModulePlan("layers.0", 32, 64, rank=2),), "manual").save(plan)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: mlp}}\ntrain: {{steps: 200}}\noutput: {{dir: {target}}}\n")
    for args in ([*QUICK, "--output-dir", str(target)], [*QUICK, "--output-dir", str(target / "sub")],
                 ["compress", str(tmp_path / "base"), "--plan", str(plan), "--output-dir", str(target)],
                 ["recipe", str(recipe)]):
        code, err = _cli(args, capsys)
        line = _one_error_line(err)
        assert code == 2 and "regular file" in line and str(target) in line, (args, line)
        assert target.read_text() == "mine"


def test_read_only_output_location(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a location the kernel refuses
        target = Path("/sys/sdcompress-test-run")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "run"
    with pytest.raises(OutputError) as info:
        check_writable(target)
    assert "cannot be written" in str(info.value)
    code, err = _cli([*QUICK, "--output-dir", str(target)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "cannot be written" in line and "writable --output-dir" in line
    assert not target.exists()


# ---------------------------------------------------------------------------- model folders


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2") / "g"
    tiny_gpt2(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mlp_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp") / "m"
    torch.manual_seed(0)
    MLP(widths=(64, 32, 10)).save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["gpt2", "mlp"])
def test_truncated_or_missing_weights(kind, gpt2_folder, mlp_folder, tmp_path, capsys):
    src = gpt2_folder if kind == "gpt2" else mlp_folder
    trunc = _copy(src, tmp_path / "trunc")
    _truncate(trunc / "model.safetensors")
    with pytest.raises(ModelError, match=r"model.safetensors \([\d,]+ bytes\) is damaged or truncated"):
        load_model(str(trunc))
    missing = _copy(src, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="is missing model.safetensors"):
        load_model(str(missing))
    # the CLI: exit 2, one line, nothing written
    code, err = _cli([str(trunc), "--output-dir", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "truncated" in _one_error_line(err) and not (tmp_path / "o").exists()


def test_pickle_weights_are_refused(gpt2_folder, tmp_path, capsys):
    folder = _copy(gpt2_folder, tmp_path / "pickled")
    state = load_model(str(gpt2_folder)).model.state_dict()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pytorch_model.bin, a pickle") as info:
        load_model(str(folder))
    assert "weights_only" not in str(info.value)
    code, err = _cli([str(folder), "--output-dir", str(tmp_path / "o"), "-q"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "pickle" in line and "weights_only" not in line


def test_remote_code_folder_is_refused_and_never_run(gpt2_folder, tmp_path):
    folder = _copy(gpt2_folder, tmp_path / "remote")
    marker = tmp_path / "EXECUTED"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.C", "AutoModelForCausalLM": "modeling_evil.M"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="auto_map.*does not run code from folders it did not write"):
        load_model(str(folder))
    assert not marker.exists()


def test_compressed_folder_with_auto_map_loads_through_the_toolkit_without_running_its_code(tmp_path):
    """Compressed folders carry an auto_map and a modeling file for plain transformers users
    (hfexport); the toolkit rebuilds them from the stored plan and never imports the file."""
    import sdcompress
    from sdcompress.compress import compress_, eligible_modules, save_compressed
    from sdcompress.plan.schema import ModulePlan, Plan

    model = tiny_gpt2(seed=0).eval()
    plan = Plan(tuple(ModulePlan(n, o, i, rank=2) for n, (o, i) in eligible_modules(model).items()), "manual")
    compress_(model, plan)
    folder = save_compressed(model, tmp_path / "c", plan)
    marker = tmp_path / "EXECUTED"
    (folder / "modeling_sdcompress.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_sdcompress.C", "AutoModelForCausalLM": "modeling_sdcompress.M"}
    (folder / "config.json").write_text(json.dumps(config))
    ids = torch.randint(0, 257, (2, 8), generator=torch.Generator().manual_seed(0))
    loaded = sdcompress.load_model(str(folder))
    assert torch.equal(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not marker.exists()


def test_invalid_config_json(mlp_folder, gpt2_folder, tmp_path, capsys):
    for src in (mlp_folder, gpt2_folder):
        folder = _copy(src, tmp_path / src.name)
        (folder / "config.json").write_text('{"model_type": "gpt2",')
        with pytest.raises(ModelError, match="config.json is not valid JSON"):
            load_model(str(folder))
    code, err = _cli([str(folder), "--output-dir", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "not valid JSON" in _one_error_line(err)


def test_compressed_folder_missing_or_truncated_file_is_named(finished_run, tmp_path):
    import sdcompress

    for name in ("model.safetensors", "config.json"):
        folder = _copy(finished_run / "model", tmp_path / f"no-{name}")
        (folder / name).unlink()
        with pytest.raises(CompressionError, match=f"is missing {name}") as info:
            sdcompress.load_model(str(folder))
        assert "do not match the stored plan" not in str(info.value)
    # a compressed causal LM (auto_map + layer block in config.json) without its plan file
    from sdcompress.compress import compress_, eligible_modules, save_compressed
    from sdcompress.models.loader import COMPRESSION_FILE
    from sdcompress.plan.schema import ModulePlan, Plan

    model = tiny_gpt2(seed=0).eval()
    plan = Plan(tuple(ModulePlan(n, o, i, rank=2) for n, (o, i) in eligible_modules(model).items()), "manual")
    compress_(model, plan)
    lm = save_compressed(model, tmp_path / "lm", plan)
    (lm / COMPRESSION_FILE).unlink()
    with pytest.raises(ModelError, match=f"is missing {COMPRESSION_FILE}"):
        sdcompress.load_model(str(lm))
    folder = _copy(finished_run / "model", tmp_path / "trunc")
    _truncate(folder / "model.safetensors")
    with pytest.raises(CompressionError, match="damaged or truncated"):
        sdcompress.load_model(str(folder))


# ------------------------------------------------------------------------------- recipes


def test_bad_recipe_files(tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"  # the default output folder is runs/ under the working directory
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    comments = tmp_path / "comments.yaml"
    comments.write_text("# only a comment\n\n")
    for path, words in ((binary, "not a text YAML file"), (empty, "is empty"), (comments, "is empty")):
        code, err = _cli(["recipe", str(path), "--check"], capsys)
        line = _one_error_line(err)
        assert code == 2 and words in line and str(path) in line
        assert not (cwd / "runs").exists()


def test_yaml_alias_bomb_is_refused_fast(tmp_path, capsys):
    lines = ["model:", "  name: mlp", "  options:", '    a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    code, err = _cli(["recipe", str(bomb), "--check"], capsys)
    assert time.perf_counter() - t < 10
    assert code == 2 and "alias bomb" in _one_error_line(err)
    # ordinary aliases still work
    from sdcompress.recipe import load_yaml_text

    assert load_yaml_text("a: &x [1, 2]\nb: *x\n", "t") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(ConfigError, match="too large"):
        load_yaml_text("a: 1\n" + "#" * 1_000_001, "t")


# ----------------------------------------------------------------------- data, hub, argparse


def test_malformed_csv_one_line_and_no_lock_in_the_datasets_cache(tmp_path, capsys, monkeypatch):
    hf = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf / "datasets"))
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b,label\n1,2,0\n3,4\n5,"6,1\n')
    from sdcompress.data.files import load_local

    with pytest.raises(DataError, match=r"cannot read .*bad.csv' as CSV: .*EOF inside string"):
        load_local(bad)
    code, err = _cli(["mlp", "--dataset", str(bad), "--output-dir", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "as CSV" in _one_error_line(err)
    assert not list(tmp_path.rglob("*.lock")) and not (tmp_path / "o").exists()


def test_offline_message_does_not_advise_what_is_set(monkeypatch):
    from sdcompress.data.files import load_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        load_model("no-such-org/no-such-model")
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value) and "set HF_HUB_OFFLINE=1 if" not in str(info.value)
    with pytest.raises(OfflineError) as info:
        load_hub("no-such-org/no-such-dataset")
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value) and "set HF_HUB_OFFLINE=1 if" not in str(info.value)


def test_argparse_errors_are_one_line(capsys):
    for args in (["mlp", "--bogus"], ["mlp", "--target-rank", "x"], ["compress"], ["recipe"]):
        code, err = _cli(args, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "see 'sdcompress" in err and "usage:" not in err, err


# ---------------------------------------------------------------- processes: SIGTERM, races


def _spawn(args: list[str], *, wait_for: Path | None = None) -> subprocess.Popen[str]:
    """``python -m sdcompress ARGS`` in a child; with ``wait_for``, the child imports
    everything first and starts only once that path exists (so races are real races)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = ("import sys, time, pathlib, transformers, torch\nfrom sdcompress.cli.main import main\n"
            "gate = sys.argv[1]\nwhile gate and not pathlib.Path(gate).exists(): time.sleep(0.02)\nsys.exit(main(sys.argv[2:]))")
    return subprocess.Popen([sys.executable, "-c", code, str(wait_for or ""), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout
        time.sleep(0.02)


def _consistent(folder: Path, rank: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    plan = json.loads((folder / "plan.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    assert config["plan"]["target_rank"] == rank == report["config"]["plan"]["target_rank"]
    assert {m["rank"] for m in plan["modules"]} == {rank}
    assert _leftovers(folder) == []


@pytest.mark.slow
def test_overwrite_while_another_run_holds_the_folder(tmp_path):
    out = tmp_path / "X"
    a = _spawn(["mlp", "--steps", "200", "--target-rank", "2", "--output-dir", str(out), "-q", "--seed", "11"])
    b = _spawn(["mlp", "--steps", "200", "--target-rank", "3", "--output-dir", str(out), "--overwrite", "-q"],
               wait_for=out / LOCK_FILE)
    _, err_b = b.communicate(timeout=300)
    _, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a
    line = _one_error_line(err_b)
    assert b.returncode == 2 and f"pid {a.pid}" in line and "in use by another sdcompress run" in line
    _consistent(out, 2)


@pytest.mark.slow
def test_two_identical_runs_started_together(tmp_path):
    out, go = tmp_path / "X", tmp_path / "go"
    args = [*QUICK, "--output-dir", str(out), "-q"]
    procs = [_spawn(args, wait_for=go) for _ in range(2)]
    time.sleep(0.5)
    go.write_text("")
    results = [(p.communicate(timeout=300)[1], p.returncode) for p in procs]
    codes = sorted(code for _, code in results)
    assert codes == [0, 2], results
    assert "in use by another sdcompress run" in _one_error_line(next(err for err, code in results if code == 2))
    _consistent(out, 2)


@pytest.mark.slow
def test_sigterm_cleans_up_releases_the_lock_and_exits_143(tmp_path):
    out = tmp_path / "X"
    proc = _spawn(["mlp", "--steps", "3000", "--seed", "12", "--target-rank", "2", "--output-dir", str(out), "-q"])
    _wait_for(out / LOCK_FILE, proc)
    time.sleep(1.0)  # inside the run (training the uncached built-in)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("sdcompress: terminated (SIGTERM)")
    assert not (out / LOCK_FILE).exists() and _leftovers(out) == []
    cache = Path(os.environ["SDCOMPRESS_CACHE"])
    assert not list(cache.glob("*.lock"))


@pytest.mark.parametrize("where", ["flock", "fsync"])
def test_lock_interrupted_while_being_taken_leaves_no_file(tmp_path, monkeypatch, where):
    """SIGTERM/Ctrl-C can land inside acquire() (waiting on a cache entry's flock, or in the
    fsync of the holder record): the lock file this process created must not stay behind."""
    import fcntl

    real = {"flock": fcntl.flock, "fsync": os.fsync}
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real[where](*args, **kwargs)

    monkeypatch.setattr(fcntl if where == "flock" else os, where, interrupted)
    lock = FolderLock(tmp_path, what="cache entry", name=".entry.lock", wait=True)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    assert not (tmp_path / ".entry.lock").exists() and lock._fd is None
    monkeypatch.undo()
    with FolderLock(tmp_path, what="cache entry", name=".entry.lock", wait=True):  # takes it normally afterwards
        assert (tmp_path / ".entry.lock").exists()
    assert not (tmp_path / ".entry.lock").exists()


def test_interrupted_waiter_leaves_the_holders_lock_file(tmp_path, monkeypatch):
    import fcntl

    holder = FolderLock(tmp_path, name=".entry.lock").acquire()  # same process, another open file: flock conflicts
    real_flock = fcntl.flock

    def waiting(fd, op):
        if op == fcntl.LOCK_EX:  # the blocking wait is interrupted
            raise KeyboardInterrupt
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", waiting)
    with pytest.raises(KeyboardInterrupt):
        FolderLock(tmp_path, name=".entry.lock", wait=True).acquire()
    monkeypatch.undo()
    assert (tmp_path / ".entry.lock").exists()  # still the holder's
    holder.release()
    assert not (tmp_path / ".entry.lock").exists()
