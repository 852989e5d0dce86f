"""Save → load reproduces outputs; exactly the expected files; packed files are smaller
and hold exactly the bytes the report counts; the compress CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdcompress.cli.main import main
from sdcompress.compress import MaskedLinear, compress_, eligible_modules, load_compressed, save_compressed
from sdcompress.errors import CompressionError, ModelError, OutputExistsError
from sdcompress.models import MLP, load_model, tiny_gpt2
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.plan.schema import ModulePlan, Plan

EXPECTED_FILES = {"config.json", "model.safetensors", COMPRESSION_FILE}
#: a causal LM also carries its remote-code file (tests/test_hf_remote.py)
EXPECTED_LM_FILES = EXPECTED_FILES | {"modeling_sdcompress.py"}


def _tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (file size minus its JSON header)."""
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
    return path.stat().st_size - 8 - header_len


def _mixed_plan(model: torch.nn.Module) -> Plan:
    kinds = [dict(rank=5), dict(keep_fraction=0.4), dict(rank=3, bits=4, group_size=16),
             dict(keep_fraction=0.5, bits=8, group_size=16), dict(bits=4, group_size=16), dict(bits=8)]
    return Plan(
        tuple(ModulePlan(n, o, i, **kinds[j % 6]) for j, (n, (o, i)) in enumerate(eligible_modules(model).items())),
        "manual",
    )


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    model = tiny_gpt2(seed=0).eval()
    plan = _mixed_plan(model)
    report = compress_(model, plan)
    folder = tmp_path_factory.mktemp("gpt2") / "compressed"
    save_compressed(model, folder, plan, report, extra={"note": "test"})
    return model, plan, report, folder


def test_gpt2_save_load_same_logits_and_files(saved_gpt2):
    model, plan, report, folder = saved_gpt2
    assert {p.name for p in folder.iterdir()} == EXPECTED_LM_FILES
    assert [p.name for p in folder.parent.iterdir()] == ["compressed"]  # no temporary folders left
    loaded = load_compressed(folder)
    assert loaded.task == "lm" and loaded.source == "local"
    assert loaded.info["plan"] == plan and loaded.info["report"] == report
    x = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, model(x).logits)
    assert str(loaded.model) == str(model)
    meta = json.loads((folder / COMPRESSION_FILE).read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["extra"] == {"note": "test"}
    assert meta["base"] == {"library": "transformers", "class": "GPT2LMHeadModel", "dtype": "float32"}


def test_saved_tensors_are_packed_and_counted_honestly(saved_gpt2):
    _, _, report, folder = saved_gpt2
    tensors = load_file(str(folder / "model.safetensors"))
    dtypes = {k: v.dtype for k, v in tensors.items()}
    assert dtypes["transformer.h.0.mlp.c_fc.qU.data"] == torch.uint8  # int4 pairs
    assert dtypes["transformer.h.0.mlp.c_proj.qweight.data"] == torch.int8
    assert dtypes["transformer.h.0.attn.c_proj.mask_bits"] == torch.uint8
    assert ("lm_head.weight" in tensors) + ("transformer.wte.weight" in tensors) == 1  # tied: stored once
    # The tensor data in the file is exactly what the report counts as bytes.
    assert _tensor_bytes(folder / "model.safetensors") == report.bytes_after


def test_plain_models_refuse_compressed_folder(saved_gpt2):
    with pytest.raises(ModelError, match="compressed model"):
        load_model(str(saved_gpt2[3]))


def test_hf_save_pretrained_writes_packed_tensors(saved_gpt2, tmp_path):
    model = saved_gpt2[0]
    model.save_pretrained(tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["transformer.h.0.mlp.c_fc.qU.data"].dtype == torch.uint8
    assert torch.equal(tensors["transformer.h.0.attn.c_attn.U"], model.transformer.h[0].attn.c_attn.U.detach())


def test_mlp_mask_survives_save_load_and_training(tmp_path):
    torch.manual_seed(0)
    model = MLP(widths=(64, 48, 10), bias=True)
    plan = Plan((ModulePlan("layers.0", 48, 64, keep_fraction=0.25), ModulePlan("layers.1", 10, 48, rank=4, bits=8)), "magnitude")
    report = compress_(model, plan)
    save_compressed(model, tmp_path / "m", plan, report)
    loaded = load_compressed(tmp_path / "m")
    assert loaded.task == "classification"
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.model(x), model(x))
    layer = loaded.model.layers[0]
    assert isinstance(layer, MaskedLinear)
    assert torch.equal(layer.mask, model.layers[0].mask) and layer.n_kept == round(0.25 * 48 * 64)
    assert _tensor_bytes(tmp_path / "m" / "model.safetensors") == report.bytes_after
    # train the reloaded model one step: masked weights stay zero
    opt = torch.optim.SGD(loaded.model.parameters(), lr=0.3, weight_decay=0.01)
    torch.nn.functional.cross_entropy(loaded.model(x), torch.arange(7) % 10).backward()
    opt.step()
    assert bool((layer.weight[~layer.mask] == 0).all())


def test_quantized_files_are_smaller(tmp_path):
    sizes = {}
    for bits in (None, 8, 4):
        torch.manual_seed(0)
        model = MLP(widths=(256, 256, 256, 10), bias=False)
        plan = Plan(tuple(ModulePlan(n, o, i, bits=bits) for n, (o, i) in eligible_modules(model).items()), "uniform-bits")
        compress_(model, plan)
        save_compressed(model, tmp_path / str(bits), plan)
        sizes[bits] = (tmp_path / str(bits) / "model.safetensors").stat().st_size
    # float32 → int8 (1 B + 4 B per 64-group scale) → int4 (0.5 B + scale): ≈ 4×, then ≈ 1.8×
    assert sizes[8] < 0.3 * sizes[None]
    assert sizes[4] < 0.6 * sizes[8]


def test_save_refuses_non_empty_folder_and_unknown_model(tmp_path):
    torch.manual_seed(0)
    model = MLP(widths=(8, 4), bias=False)
    plan = Plan((ModulePlan("layers.0", 4, 8, rank=2),), "manual")
    compress_(model, plan)
    save_compressed(model, tmp_path / "m", plan)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_compressed(model, tmp_path / "m", plan)
    save_compressed(model, tmp_path / "m", plan, overwrite=True)
    assert {p.name for p in (tmp_path / "m").iterdir()} == EXPECTED_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with pytest.raises(CompressionError, match="cannot save a Sequential"):
        save_compressed(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "s", Plan((), "manual"))
    assert not (tmp_path / "s").exists()
    with pytest.raises(CompressionError, match="not a compressed model folder"):
        load_compressed(tmp_path)


def test_cli_compress(tmp_path, capsys):
    torch.manual_seed(0)
    MLP(widths=(64, 32, 10), bias=True).save_pretrained(tmp_path / "base")
    plan_path = Plan((ModulePlan("layers.0", 32, 64, rank=6, bits=4, group_size=32),), "manual").save(tmp_path / "plan.json")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "base"), "--plan", str(plan_path), "--output-dir", str(out), "-q"]) == 0
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    base = load_model(str(tmp_path / "base")).model
    loaded = load_compressed(out).model
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    ref = base(x)
    compress_(base, Plan.load(plan_path))
    assert torch.equal(loaded(x), base(x)) and not torch.equal(loaded(x), ref)
    # an existing run is refused without --overwrite
    assert main(["compress", str(tmp_path / "base"), "--plan", str(plan_path), "--output-dir", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_corrupt_plan_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text('{"strategy": "manual", "modules": [{"name": "layers.0", ')
    out = tmp_path / "out"
    assert main(["compress", "mlp", "--plan", str(bad), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "not valid JSON" in err
    assert not out.exists()
