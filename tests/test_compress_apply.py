"""compress_: full rank reproduces outputs, masks, sizes match the plan's predictions,
print(model) shows what changed, bad targets are refused before anything changes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sdcompress.compress import (
    LowRankLinear,
    MaskedLinear,
    QuantizedLinear,
    compress_,
    count_storage,
    eligible_modules,
)
from sdcompress.errors import CompressionError, PlanError
from sdcompress.models import MLP, tiny_gpt2
from sdcompress.plan.schema import ModulePlan, Plan


def _gpt2() -> nn.Module:
    return tiny_gpt2(seed=0).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(widths=(64, 32, 24, 10), bias=True)


def _tokens() -> torch.Tensor:
    return torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))


def _full_rank_plan(model: nn.Module) -> Plan:
    return Plan(tuple(ModulePlan(n, o, i, rank=min(o, i)) for n, (o, i) in eligible_modules(model).items()), "manual")


def _mixed_plan(model: nn.Module, group: int = 16) -> Plan:
    mps = []
    for j, (n, (o, i)) in enumerate(eligible_modules(model).items()):
        choice = [
            dict(rank=max(1, min(o, i) // 4)),
            dict(keep_fraction=0.37),
            dict(rank=3, bits=4, group_size=group),
            dict(keep_fraction=0.5, bits=8, group_size=group),
            dict(bits=4, group_size=group),
            dict(bits=8, group_size=group),
        ][j % 6]
        mps.append(ModulePlan(n, o, i, **choice))
    return Plan(tuple(mps), "manual")


def test_eligible_modules_of_gpt2_skip_the_tied_head():
    el = eligible_modules(_gpt2())
    assert el["transformer.h.0.attn.c_attn"] == (96, 32)  # Conv1D weight (32, 96) seen as (out, in)
    assert el["transformer.h.1.mlp.c_proj"] == (32, 128)
    assert "lm_head" not in el and len(el) == 8


def test_full_rank_reproduces_gpt2_outputs():
    model, x = _gpt2(), _tokens()
    with torch.no_grad():
        ref = model(x).logits
    report = compress_(model, _full_rank_plan(model))
    assert all(isinstance(m, LowRankLinear) for n, m in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc")))
    with torch.no_grad():
        out = model(x).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert max(m.rel_error for m in report.modules) < 1e-6


def test_full_rank_and_full_mask_reproduce_mlp_outputs():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    model = _mlp()
    ref = model(x).detach()
    compress_(model, _full_rank_plan(model))
    torch.testing.assert_close(model(x).detach(), ref, atol=1e-5, rtol=1e-5)
    model = _mlp()
    plan = Plan(tuple(ModulePlan(n, o, i, keep_fraction=1.0) for n, (o, i) in eligible_modules(model).items()), "manual")
    compress_(model, plan)
    assert torch.equal(model(x).detach(), ref)  # an all-true mask is the identical computation


def test_to_dense_and_to_original_match_the_outputs():
    model = _gpt2()
    compress_(model, _mixed_plan(model))
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    for name, mod in model.named_modules():
        if isinstance(mod, (LowRankLinear, MaskedLinear, QuantizedLinear)) and mod.in_features == 32:
            dense = x @ mod.to_dense().T + mod.bias
            torch.testing.assert_close(mod(x), dense, atol=1e-5, rtol=1e-5)
            orig = mod.to_original()
            assert type(orig).__name__ == "Conv1D"
            torch.testing.assert_close(orig(x), dense, atol=1e-5, rtol=1e-5)


def test_predicted_sizes_equal_reported_sizes():
    for model in (_gpt2(), _mlp()):
        plan = _mixed_plan(model, group=8)
        before = count_storage(model)
        report = compress_(model, plan)
        assert (report.params_before, report.bytes_before) == before
        assert sum(m.params for m in report.modules) == plan.params_after()
        assert sum(m.bytes for m in report.modules) == plan.bytes_after()
        for m, mp in zip(report.modules, plan.modules):
            assert (m.params, m.bytes) == (mp.params_after(), mp.bytes_after()), m.name
        assert report.params_after == report.params_before - plan.params_before() + plan.params_after()
        assert report.bytes_after == report.bytes_before - plan.bytes_before() + plan.bytes_after()
        assert report.bytes_after < report.bytes_before
        assert report.to_dict()["modules"][0]["name"] == plan.modules[0].name


def test_tied_embeddings_counted_once():
    model = _gpt2()
    n_unique = sum(p.numel() for p in model.parameters())  # parameters() skips the tied duplicate
    assert count_storage(model) == (n_unique, 4 * n_unique)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_mask_exact_sparsity_and_zero_after_sgd():
    model = _mlp()
    plan = Plan((ModulePlan("layers.0", 32, 64, keep_fraction=0.3), ModulePlan("layers.1", 24, 32, keep_fraction=0.55)), "magnitude")
    compress_(model, plan)
    for mp in plan.modules:
        mod = model.get_submodule(mp.name)
        assert isinstance(mod, MaskedLinear)
        assert mod.n_kept == math.floor(mp.keep_fraction * mp.out_features * mp.in_features + 0.5)
        assert bool((mod.weight[~mod.mask] == 0).all())
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = model.layers[0].weight.detach().clone()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    mod = model.layers[0]
    assert bool((mod.weight[~mod.mask] == 0).all())
    assert not torch.equal(mod.weight[mod.mask], before[mod.mask])  # the kept weights did train


def test_quantized_modules_respect_masks_and_compose_with_rank():
    model = _mlp()
    w = model.layers[0].weight.detach().clone()
    plan = Plan((ModulePlan("layers.0", 32, 64, rank=8, bits=8), ModulePlan("layers.1", 24, 32, keep_fraction=0.4, bits=4)), "manual")
    report = compress_(model, plan)
    q = model.layers[1]
    mask = q.mask()
    assert int(mask.sum()) == q.n_kept == round(0.4 * 24 * 32)
    assert bool((q.to_dense()[~mask] == 0).all())
    # int8 factors add little to the rank-8 truncation error
    u, s, vh = torch.linalg.svd(w.double())
    trunc = float(s[8:].square().sum().sqrt() / s.square().sum().sqrt())
    assert trunc <= report.modules[0].rel_error <= trunc + 0.01
    assert model.layers[0].qU.data.dtype == torch.int8 and q.qweight.data.dtype == torch.uint8


def test_print_shows_what_each_module_became():
    model = _gpt2()
    compress_(model, _mixed_plan(model))
    text = str(model)
    for piece in ("LowRankLinear(", "rank=", "MaskedLinear(", "keep=37.0%", "QuantizedLinear(", "bits=4", "bits=8", "from=Conv1D"):
        assert piece in text, piece


def test_unknown_target_lists_real_names_and_changes_nothing():
    model = _gpt2()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan((ModulePlan("transformer.h.0.attn.c_attn", 96, 32, rank=4), ModulePlan("transformer.h.0.attn.c_atn", 96, 32, rank=4)), "manual")
    with pytest.raises(CompressionError) as info:
        compress_(model, plan)
    assert "'transformer.h.0.attn.c_atn' is not in the model" in str(info.value)
    assert "transformer.h.0.attn.c_attn" in str(info.value).split("not in the model")[1]
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(CompressionError, match=r"eligible modules are: \['transformer.h.0"):
        compress_(model, Plan((ModulePlan("zzz", 2, 2, rank=1),), "manual"))


def test_ineligible_targets_are_refused():
    model = _gpt2()
    with pytest.raises(CompressionError, match="LayerNorm, not an nn.Linear or Conv1D"):
        compress_(model, Plan((ModulePlan("transformer.ln_f", 32, 32, rank=1),), "manual"))
    with pytest.raises(CompressionError, match="tied to transformer.wte.weight"):
        compress_(model, Plan((ModulePlan("lm_head", 257, 32, rank=4),), "manual"))
    with pytest.raises(CompressionError, match="plan says module .* is 32×96 .* 96×32"):
        compress_(model, Plan((ModulePlan("transformer.h.0.attn.c_attn", 32, 96, rank=4),), "manual"))


def test_rank_larger_than_matrix_and_bad_bits():
    model = _gpt2()
    # the one check of rank against shape is the plan's own (ModulePlan.validate)
    with pytest.raises(PlanError, match=r"rank 40 is not allowed for a 96×32 weight; use an integer in \[1, 32\]"):
        compress_(model, Plan((ModulePlan("transformer.h.0.attn.c_attn", 96, 32, rank=40),), "manual"))
    with pytest.raises(PlanError, match="bits 2 is not supported"):
        compress_(model, Plan((ModulePlan("transformer.h.0.attn.c_attn", 96, 32, bits=2),), "manual"))
    compress_(model, Plan((ModulePlan("transformer.h.0.attn.c_attn", 96, 32, rank=4),), "manual"))
    with pytest.raises(CompressionError, match="already compressed"):
        compress_(model, Plan((ModulePlan("transformer.h.0.attn.c_attn", 96, 32, rank=2),), "manual"))
