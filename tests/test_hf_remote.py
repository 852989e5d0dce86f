"""Compressed causal LMs load with plain transformers (``trust_remote_code``) where
sdcompress cannot be imported, with the layers as stored and the toolkit's logits; the
dense export loads with no remote code; the template's layer math is the toolkit's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdcompress.compress import (
    LowRankLinear,
    MaskedLinear,
    QuantizedLinear,
    compress_,
    eligible_modules,
    load_compressed,
    save_compressed,
)
from sdcompress.compress.export import export_model
from sdcompress.compress.hf_remote import AUTO_MAP, CONFIG_KEY, MODELING_FILE, TEMPLATE
from sdcompress.compress.hf_remote import modeling_sdcompress as remote
from sdcompress.compress.prune import prune_mask
from sdcompress.models import MLP, tiny_gpt2
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.plan.schema import ModulePlan, Plan

KINDS: dict[str, list[dict]] = {
    "lowrank": [dict(rank=4)],
    "pruned": [dict(keep_fraction=0.3)],
    "int8": [dict(bits=8, group_size=16)],
    "int4": [dict(bits=4, group_size=16)],
    "mixed": [dict(rank=5), dict(keep_fraction=0.4), dict(rank=3, bits=4, group_size=16),
              dict(keep_fraction=0.5, bits=8, group_size=16), dict(bits=4, group_size=12), dict(bits=8)],
}
# what each kind's first compressed layer must be after loading with transformers alone
FIRST_LAYER = {"lowrank": "LowRankLinear", "pruned": "MaskedLinear", "int8": "QuantizedLinear",
               "int4": "QuantizedLinear", "mixed": "LowRankLinear"}


def _tokenizer():
    """A small character-level tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={chr(i + 33): i for i in range(90)}, unk_token="!"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="!")


TEXT = "Sharpness~Dimension"


def _plan(model: torch.nn.Module, kind: str) -> Plan:
    specs = KINDS[kind]
    mods = eligible_modules(model).items()
    return Plan(tuple(ModulePlan(n, o, i, **specs[j % len(specs)]) for j, (n, (o, i)) in enumerate(mods)), "manual")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One compressed tiny-gpt2 per kind, its dense export, and the toolkit's logits on fixed tokens."""
    root = tmp_path_factory.mktemp("hf_remote")
    x = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
    refs = {"x": x}
    for kind in KINDS:
        model = tiny_gpt2(seed=1, n_layer=2, n_embd=24, n_head=2).eval()
        plan = _plan(model, kind)
        report = compress_(model, plan)
        tokenizer = _tokenizer() if kind == "mixed" else None
        save_compressed(model, root / kind, plan, report, tokenizer=tokenizer)
        export_model(root / kind, root / f"{kind}-dense", "dense")
        toolkit = load_compressed(root / kind)  # the toolkit's own loader is the reference
        loaded = toolkit.model
        if tokenizer is not None:
            refs["text_ids"] = torch.tensor(toolkit.tokenizer(TEXT)["input_ids"])
        with torch.no_grad():
            refs[f"{kind}.logits"] = loaded(x).logits.contiguous()
            refs[f"{kind}.generated"] = loaded.generate(x[:, :6], attention_mask=torch.ones_like(x[:, :6]),
                                                        max_new_tokens=8, do_sample=False, pad_token_id=256)
    save_file(refs, str(root / "refs.safetensors"))
    return root


# The child: isolated (-I: no PYTHONPATH, no cwd, no user site), and a meta-path finder
# that refuses sdcompress (the venv has it installed in editable mode).
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sdcompress" or name.startswith("sdcompress."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    try:
        import sdcompress  # noqa: F401
        sys.exit("sdcompress was importable")
    except ImportError:
        pass
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root, kinds = sys.argv[1], sys.argv[2].split(",")
    refs = load_file(f"{root}/refs.safetensors")
    x = refs["x"]
    out = {"blocked": "sdcompress" not in sys.modules}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(f"{root}/mixed", trust_remote_code=True)
    out["tokenizer_equal"] = tok(sys.argv[4])["input_ids"] == refs["text_ids"].tolist()
    dense_tok = AutoTokenizer.from_pretrained(f"{root}/mixed-dense")  # a plain folder: no remote code at all
    out["dense_tokenizer_equal"] = dense_tok(sys.argv[4])["input_ids"] == refs["text_ids"].tolist()
    try:  # without trust_remote_code: transformers' own refusal, not the original class with random layers
        AutoModelForCausalLM.from_pretrained(f"{root}/mixed")
        out["refused_without_trust"] = "loaded"
    except ValueError as exc:
        out["refused_without_trust"] = str(exc)
    for kind in kinds:
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{kind}", trust_remote_code=True)
        attn = model.transformer.h[0].attn
        with torch.no_grad():
            logits = model(x).logits
            gen = model.generate(x[:, :6], attention_mask=torch.ones_like(x[:, :6]), max_new_tokens=8, do_sample=False,
                                 pad_token_id=256)
        dense = AutoModelForCausalLM.from_pretrained(f"{root}/{kind}-dense")  # no trust_remote_code
        with torch.no_grad():
            dense_logits = dense(x).logits
        state = model.state_dict()
        out[kind] = {
            "class": type(model).__name__,
            "bases": [c.__name__ for c in type(model).__mro__[1:3]],
            "module": type(model).__module__,
            "first_layer": type(attn.c_attn).__name__,
            "layer_kinds": sorted({type(m).__name__ for m in model.modules() if hasattr(m, "kind") and m.kind}),
            "int_dtypes": sorted({str(v.dtype) for v in state.values() if not v.is_floating_point()}),
            "max_diff": float((logits - refs[kind + ".logits"]).abs().max()),
            "generate_equal": bool(torch.equal(gen, refs[kind + ".generated"])),
            "dense_class": type(dense).__name__,
            "dense_module": type(dense).__module__,
            "dense_max_diff": float((dense_logits - refs[kind + ".logits"]).abs().max()),
        }
    # the mixed model again: the caller's RNG untouched, float64 on request, save_pretrained → reload
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(f"{root}/mixed", trust_remote_code=True, dtype=torch.float64)
    after_load = torch.rand(3)
    torch.manual_seed(7)
    out["rng_untouched"] = bool(torch.equal(after_load, torch.rand(3)))
    with torch.no_grad():
        out["float64_max_diff"] = float((model(x).logits.float() - refs["mixed.logits"]).abs().max())
        out["float64_int_dtypes"] = sorted({str(v.dtype) for v in model.state_dict().values() if not v.is_floating_point()})
        model = AutoModelForCausalLM.from_pretrained(f"{root}/mixed", trust_remote_code=True)
        model.save_pretrained(sys.argv[3])
        again = AutoModelForCausalLM.from_pretrained(sys.argv[3], trust_remote_code=True)
        out["resaved_equal"] = bool(torch.equal(again(x).logits, model(x).logits))
    out["still_blocked"] = "sdcompress" not in sys.modules
    print()  # the JSON on a line of its own, after transformers' "[y/N]" prompt
    print(json.dumps(out))
    """
)


def test_transformers_alone_loads_every_kind(folders, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", "-c", CHILD, str(folders), ",".join(KINDS), str(tmp_path / "resaved"), TEXT],
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blocked"] and out["still_blocked"]
    assert "trust_remote_code=True" in out["refused_without_trust"]
    assert out["tokenizer_equal"] and out["dense_tokenizer_equal"]
    for kind in KINDS:
        got = out[kind]
        assert got["class"] == "SdcompressGPT2LMHeadModel" and got["bases"][0] == "GPT2LMHeadModel", got
        assert got["module"].startswith("transformers_modules.") and got["module"].endswith(".modeling_sdcompress")
        assert got["first_layer"] == FIRST_LAYER[kind], got  # as stored, not densified
        assert got["max_diff"] <= 1e-5, (kind, got["max_diff"])
        assert got["generate_equal"], kind
        assert got["dense_class"] == "GPT2LMHeadModel" and got["dense_module"].startswith("transformers.models.gpt2")
        assert got["dense_max_diff"] <= 1e-5, (kind, got["dense_max_diff"])
    assert set(out["mixed"]["layer_kinds"]) == {"LowRankLinear", "MaskedLinear", "QuantizedLinear"}
    assert "torch.int8" in out["int8"]["int_dtypes"] and "torch.uint8" in out["int4"]["int_dtypes"]  # packed in memory
    assert out["rng_untouched"] and out["float64_max_diff"] <= 1e-5 and out["resaved_equal"]
    assert out["float64_int_dtypes"] == out["mixed"]["int_dtypes"]  # a float dtype leaves the packed integers alone
    assert (tmp_path / "resaved" / MODELING_FILE).read_bytes() == TEMPLATE.read_bytes()


def test_folder_holds_the_template_and_auto_map(folders):
    folder = folders / "mixed"
    assert (folder / MODELING_FILE).read_bytes() == TEMPLATE.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["architectures"] == ["SdcompressForCausalLM"]
    assert config["model_type"] == "sdcompress" and set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    block = config[CONFIG_KEY]
    assert block["format_version"] == 1 and block["base_class"] == "GPT2LMHeadModel" and block["dtype"] == "float32"
    assert block["base_model_type"] == "gpt2"
    plan = Plan.from_dict(json.loads((folder / COMPRESSION_FILE).read_text())["plan"])
    assert set(block["layers"]) == {m.name for m in plan.modules}
    c_attn = block["layers"]["transformer.h.0.attn.c_attn"]
    assert c_attn == {"kind": "lowrank", "in_features": 24, "out_features": 72, "bias": True, "source": "conv1d", "rank": 5}
    dense_config = json.loads((folders / "mixed-dense" / "config.json").read_text())
    assert "auto_map" not in dense_config and CONFIG_KEY not in dense_config
    assert dense_config["architectures"] == ["GPT2LMHeadModel"] and dense_config["model_type"] == "gpt2"
    assert not list((folders / "mixed-dense").glob("*.py"))


def test_toolkit_never_imports_the_folder_modeling_file(folders, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(folders / "int4", folder)
    marker = tmp_path / "imported"
    (folder / MODELING_FILE).write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit('executed')\n")
    loaded = load_compressed(folder)
    x = load_file(str(folders / "refs.safetensors"))["x"]
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, load_compressed(folders / "int4").model(x).logits)
    assert not marker.exists()


def test_own_models_get_no_remote_code(tmp_path):
    torch.manual_seed(0)
    model = MLP(widths=(16, 8, 4))
    plan = Plan((ModulePlan("layers.0", 8, 16, rank=2),), "manual")
    compress_(model, plan)
    save_compressed(model, tmp_path / "m", plan)
    assert not (tmp_path / "m" / MODELING_FILE).exists()
    assert "auto_map" not in json.loads((tmp_path / "m" / "config.json").read_text())


# ------------------------------------------------------------- the template's layer math


def _pair(toolkit: torch.nn.Module, template: torch.nn.Module) -> torch.nn.Module:
    """Load the toolkit layer's state dict (its stored form) into the template layer."""
    template.load_state_dict(toolkit.state_dict(), strict=True)
    return template


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_template_layers_equal_the_toolkit_layers(dtype):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(13, 37, generator=gen, dtype=dtype)  # ragged groups, odd sizes (int4 padding)
    b = torch.randn(13, generator=gen, dtype=dtype)
    x = torch.randn(5, 3, 37, generator=gen, dtype=dtype)
    mask = prune_mask(w, 0.37)
    n_kept = int(mask.sum())
    cases = [
        (LowRankLinear.from_weight(w, b, 6), remote.LowRankLinear(37, 13, 6, True, dtype)),
        (MaskedLinear.from_weight(w, None, mask), remote.MaskedLinear(37, 13, False, dtype)),
    ]
    for bits in (8, 4):
        cases += [
            (QuantizedLinear.from_weight(w, b, bits, 16), remote.QuantizedLinear(37, 13, bits, 16, None, None, True, dtype)),
            (QuantizedLinear.from_weight(w, b, bits, 10, rank=5), remote.QuantizedLinear(37, 13, bits, 10, 5, None, True, dtype)),
            (QuantizedLinear.from_weight(w, None, bits, 16, mask=mask),
             remote.QuantizedLinear(37, 13, bits, 16, None, n_kept, False, dtype)),
        ]
    for ours, theirs in cases:
        theirs = _pair(ours, theirs)
        with torch.no_grad():
            assert torch.equal(theirs(x), ours(x)), type(ours).__name__
            assert torch.equal(theirs.to_dense(), ours.to_dense())
        assert theirs.extra_repr() == ours.extra_repr()
        # the template writes back the same stored form (save_pretrained of a remote-loaded model)
        mine, stored = theirs.state_dict(), ours.state_dict()
        assert mine.keys() == stored.keys() and all(torch.equal(mine[k], stored[k]) for k in stored)


def test_template_packing_matches_the_toolkit():
    from sdcompress.compress.quant import dequantize_groups, pack_bits, pack_int4, quantize_groups, unpack_int4

    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(203, generator=gen) > 0.5
    assert torch.equal(remote.pack_bits(mask), pack_bits(mask))
    assert torch.equal(remote.unpack_bits(pack_bits(mask), 203), mask)
    q = torch.randint(-7, 8, (31,), generator=gen, dtype=torch.int8)
    assert torch.equal(remote.unpack_int4(pack_int4(q), 31), unpack_int4(pack_int4(q), 31))
    qq, scales = quantize_groups(torch.randn(6, 21, generator=gen), 4, 8)
    assert torch.equal(remote.dequantize_groups(qq, scales, 8), dequantize_groups(qq, scales, 8))


def test_template_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="unknown compressed layer kind"):
        remote.build_layer({"kind": "butterfly", "in_features": 2, "out_features": 2, "bias": False}, torch.float32)
    with pytest.raises(ValueError, match="lacks 'rank'"):
        remote.build_layer({"kind": "lowrank", "in_features": 2, "out_features": 2, "bias": False}, torch.float32)

    class Cfg:
        sdcompress = {"format_version": 99, "layers": {}}

    with pytest.raises(ValueError, match="newer"):
        remote._block(Cfg())
    with pytest.raises(ValueError, match="not written by sdcompress"):
        remote._block(object())


def test_from_config_builds_the_stored_layers_empty(folders):
    from transformers import GPT2Config, GPT2Model

    config = remote.SdcompressConfig.from_pretrained(str(folders / "mixed"))
    assert config.model_type == "sdcompress" and type(config.base_config()).__name__ == "GPT2Config"
    model = remote.SdcompressForCausalLM._from_config(config, dtype="float64")
    assert type(model.config).__name__ == "GPT2Config" and model.config.n_embd == 24
    assert type(model).__name__ == "SdcompressGPT2LMHeadModel"
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, remote.QuantizedLinear) and layer.rank == 3 and layer.bits == 4
    assert layer.qU.scales.dtype == torch.float64 and layer.qU.data.dtype == torch.uint8
    with pytest.raises(ValueError, match="not a module of GPT2LMHeadModel"):
        config.sdcompress = {**config.sdcompress, "layers": {"transformer.h.9.mlp": {"kind": "masked"}}}
        remote.SdcompressForCausalLM._from_config(config)

    from sdcompress.compress.hf_remote import is_causal_lm

    assert is_causal_lm(tiny_gpt2()) and not is_causal_lm(GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2)))
    assert not is_causal_lm(MLP(widths=(4, 2)))


def test_toolkit_loads_a_tokenizer_without_asking_to_run_code(folders, monkeypatch):
    asked = []

    def no_prompt(*args):
        asked.append(args)
        raise EOFError

    monkeypatch.setattr("builtins.input", no_prompt)
    loaded = load_compressed(folders / "mixed")
    assert loaded.tokenizer(TEXT)["input_ids"] == _tokenizer()(TEXT)["input_ids"]
    assert asked == []  # transformers asks "run the custom code? [y/N]" when it reads model_type sdcompress itself
