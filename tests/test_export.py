"""``sdcompress export``: dense (plain from_pretrained, same logits) and remote formats,
the model card, and every refusal as one line, exit 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sdcompress.compress.export as export_mod
from sdcompress.cli.main import main
from sdcompress.compress import compress_, eligible_modules, load_compressed, save_compressed
from sdcompress.compress.export import compressed_model_dir, export_model
from sdcompress.compress.hf_remote import AUTO_MAP, MODELING_FILE
from sdcompress.errors import CompressionError
from sdcompress.models import MLP, load_model, tiny_gpt2
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.plan.schema import ModulePlan, Plan
from sdcompress.report.model_card import read_front_matter
from test_model_card import make_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder: model/ (a mixed compressed tiny-gpt2) and report.json (with its card)."""
    run = tmp_path_factory.mktemp("export") / "run"
    model = tiny_gpt2(seed=2, n_layer=1, n_embd=16, n_head=2).eval()
    kinds = [dict(rank=3, bits=8, group_size=8), dict(keep_fraction=0.5), dict(bits=4, group_size=8), dict(rank=4)]
    plan = Plan(tuple(ModulePlan(n, o, i, **kinds[j % 4]) for j, (n, (o, i)) in enumerate(eligible_modules(model).items())),
                "manual")
    report = compress_(model, plan)
    save_compressed(model, run / "model", plan, report)
    make_report(params_before=report.params_before, params_after=report.params_after).save(run)
    return run


def _x() -> torch.Tensor:
    return torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(5))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_dense_export_loads_without_remote_code(run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dense"
    assert main(["export", str(run_dir), "--format", "dense", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported 4 compressed layers" in printed and "outputs match the compressed model to" in printed
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors", "README.md"}
    assert _leftovers(tmp_path) == []
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == ["GPT2LMHeadModel"]
    dense = AutoModelForCausalLM.from_pretrained(str(out))  # no trust_remote_code
    assert type(dense).__module__.startswith("transformers.models.gpt2")
    compressed = load_compressed(run_dir / "model").model
    with torch.no_grad():
        diff = (dense(_x()).logits - compressed(_x()).logits).abs().max()
    assert float(diff) <= 1e-5
    # the plain toolkit loader reads it too (it is an ordinary save_pretrained folder)
    assert type(load_model(str(out)).model).__name__ == "GPT2LMHeadModel"
    meta = read_front_matter((out / "README.md").read_text())
    assert meta["sdcompress"]["params_after"] == json.loads((run_dir / "report.json").read_text())["params_after"]
    assert "trust_remote_code" not in (out / "README.md").read_text()


def test_remote_export_from_the_model_folder(run_dir, tmp_path):
    out = tmp_path / "remote"
    assert main(["export", str(run_dir / "model"), "--format", "remote", "--output-dir", str(out), "-q"]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", COMPRESSION_FILE, MODELING_FILE,
                                               "README.md"}
    assert json.loads((out / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert (out / "model.safetensors").read_bytes() == (run_dir / "model" / "model.safetensors").read_bytes()
    with torch.no_grad():  # still an sdcompress folder: the toolkit loads it its own way
        assert torch.equal(load_compressed(out).model(_x()).logits, load_compressed(run_dir / "model").model(_x()).logits)
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and read_front_matter(card)["sdcompress"]["sd_before"] == 12.345678


def test_the_run_card_is_in_model(run_dir):
    meta = read_front_matter((run_dir / "model" / "README.md").read_text())
    assert meta["sdcompress"]["test_loss_after"] == json.loads((run_dir / "report.json").read_text())["test_loss_after"]


@pytest.mark.parametrize("case", ["missing", "not-compressed", "exists", "inside", "file", "unknown-format"])
def test_cli_refusals_are_one_line_exit_2(run_dir, tmp_path, capsys, case):
    out = tmp_path / "out"
    args = ["export", str(run_dir), "--output-dir", str(out)]
    if case == "missing":
        args[1] = str(tmp_path / "nowhere")
        message = "is not a folder"
    elif case == "not-compressed":
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "config.json").write_text("{}")
        args[1] = str(tmp_path / "plain")
        message = "holds no compressed model"
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        message = "--overwrite"
    elif case == "file":
        out.write_text("a file")
        message = "regular file"
    elif case == "inside":
        args[3] = str(run_dir / "model" / "sub")
        message = "overlaps"
    else:
        with pytest.raises(SystemExit):
            main([*args, "--format", "int3"])
        assert "invalid choice" in capsys.readouterr().err
        return
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdcompress: error:") and message in err and "\n" not in err
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    elif case == "file":
        assert out.read_text() == "a file"
    else:
        assert not out.exists()
    assert not (run_dir / "model" / "sub").exists() and _leftovers(tmp_path) == []


def test_overwrite_and_nothing_half_written(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export_model(run_dir, out, "dense")
    first = (out / "model.safetensors").read_bytes()

    def broken(model):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "densify_", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(run_dir, out, "dense", overwrite=True)
    assert (out / "model.safetensors").read_bytes() == first and _leftovers(tmp_path) == []  # the old export is intact
    monkeypatch.undo()
    export_model(run_dir, out, "remote", overwrite=True)
    assert (out / MODELING_FILE).is_file() and _leftovers(tmp_path) == []
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o666 & ~_umask())}  # one mode, not 0600
    # a failed export into new parent folders leaves none of them behind
    monkeypatch.setattr(export_mod, "densify_", broken)
    with pytest.raises(RuntimeError):
        export_model(run_dir, tmp_path / "new" / "deeper" / "out", "dense")
    assert not (tmp_path / "new").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_own_models_export_dense_and_refuse_remote(tmp_path, capsys):
    torch.manual_seed(0)
    model = MLP(widths=(64, 16, 10), bias=True)
    plan = Plan((ModulePlan("layers.0", 16, 64, rank=3, bits=4, group_size=16), ModulePlan("layers.1", 10, 16, keep_fraction=0.5)),
                "manual")
    compress_(model, plan)
    save_compressed(model, tmp_path / "m", plan)
    result = export_model(tmp_path / "m", tmp_path / "dense", "dense")
    assert result.n_layers == 2 and result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    plain = load_model(str(tmp_path / "dense")).model  # the toolkit's plain loader: no compressed modules left
    assert all(type(m).__name__ == "Linear" for m in plain.layers)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float((plain(x) - model(x)).abs().max()) <= 1e-5
    assert main(["export", str(tmp_path / "m"), "--format", "remote", "--output-dir", str(tmp_path / "r")]) == 2
    assert "not a transformers causal LM" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_compressed_model_dir():
    with pytest.raises(CompressionError, match="not a folder"):
        compressed_model_dir("/definitely/not/here")
