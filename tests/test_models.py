"""Models: built-ins, save/load round trips, hub names offline, bad names, the functional loss."""

from __future__ import annotations

import pytest
import torch

from sdcompress.data import BatchStream, load_data
from sdcompress.errors import ModelError, OfflineError
from sdcompress.models import FunctionalLoss, load_model, select_parameters


@pytest.fixture(scope="module")
def pydoc32():
    return load_data("pydoc", block_size=32)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_builtins_load_with_expected_shapes():
    gpt = load_model("tiny-gpt2")
    assert gpt.task == "lm" and gpt.loss_fn is None and gpt.source == "builtin"
    assert gpt.model.config._attn_implementation == "eager"
    cfg = gpt.model.config
    # GPT-2 with tied embeddings: wte V·C + wpe T·C + per block (2 LN + attn + MLP) + final LN
    C, V, T, L = cfg.n_embd, cfg.vocab_size, cfg.n_positions, cfg.n_layer
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert _n_params(gpt.model) == V * C + T * C + L * per_block + 2 * C == 35_744
    mlp = load_model("mlp")
    assert mlp.task == "classification" and _n_params(mlp.model) == 64 * 16 + 16 * 16 + 16 * 10 == 1_440
    mod = load_model("modular-mlp", p=11, hidden=8)
    assert mod.task == "classification" and _n_params(mod.model) == (22 * 8 + 8) + (8 * 11 + 11)
    # the seed fixes the initialisation
    assert torch.equal(load_model("mlp", seed=3).model.layers[0].weight, load_model("mlp", seed=3).model.layers[0].weight)
    assert not torch.equal(load_model("mlp", seed=3).model.layers[0].weight, load_model("mlp", seed=4).model.layers[0].weight)


def test_builtin_bad_option_is_model_error():
    with pytest.raises(ModelError, match="bad option"):
        load_model("mlp", no_such_option=1)


@pytest.mark.parametrize("name", ["tiny-gpt2", "mlp", "modular-mlp"])
def test_save_pretrained_round_trip_gives_identical_outputs(name, tmp_path, pydoc32, digits):
    opts = {"tiny-gpt2": {"block_size": 32}, "mlp": {}, "modular-mlp": {"p": 11, "hidden": 8}}[name]
    loaded = load_model(name, seed=1, **opts)
    if name == "tiny-gpt2":
        batch = BatchStream(pydoc32.train, 4, seed=0).batch(0)
    elif name == "mlp":
        batch = BatchStream(digits.train, 16, seed=0).batch(0)
    else:
        batch = BatchStream(load_data("modular", p=11).train, 16, seed=0).batch(0)
    loaded.model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.source == "local" and again.task == loaded.task
    assert again.tokenizer is None  # byte-level built-ins have no tokenizer, and none is invented
    for (n1, p1), (n2, p2) in zip(loaded.model.named_parameters(), again.model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    loaded.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.loss(batch), again.loss(batch))
        if name == "tiny-gpt2":
            assert again.model.config._attn_implementation == "eager"
            assert torch.equal(loaded.model(**batch).logits, again.model(**batch).logits)
        else:
            assert torch.equal(loaded.model(batch[0]), again.model(batch[0]))


def test_hub_name_offline_is_offline_error(monkeypatch):
    # HF_HUB_OFFLINE=1 (conftest): only the cache is read, and "gpt2" is not in it
    with pytest.raises(OfflineError, match="unreachable"):
        load_model("gpt2")
    # without offline mode the loader probes the hub once and fails fast when it is not
    # reachable; transformers must never be asked (it would retry for half a minute)
    import sdcompress.models.loader as loader

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loader, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(loader, "_hf_from_pretrained", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(OfflineError, match="save_pretrained"):
        load_model("someone/some-model")


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/folder", "weights.bin", "~/no-such-dir-sdcompress"])
def test_missing_paths_are_model_errors(name):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(name)


def test_folder_without_config_is_model_error(tmp_path):
    (tmp_path / "junk.txt").write_text("not a model")
    with pytest.raises(ModelError, match="config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name,patterns", [("tiny-gpt2", ["re:transformer\\.h\\.0\\.", "transformer.ln_f"]), ("mlp", "layers.1")])
def test_functional_loss_over_subset_equals_model_loss(name, patterns, pydoc32, digits):
    loaded = load_model(name, **({"block_size": 32} if name == "tiny-gpt2" else {}))
    batch = BatchStream(pydoc32.train, 4, seed=0).batch(0) if name == "tiny-gpt2" else BatchStream(digits.train, 16, seed=0).batch(0)
    fl = FunctionalLoss(loaded.model, patterns, loss_fn=loaded.loss_fn)
    names = fl.layout.names
    assert names == tuple(select_parameters(loaded.model, patterns))
    assert 0 < fl.d < _n_params(loaded.model)
    assert all(n.startswith(("transformer.h.0.", "transformer.ln_f")) if name == "tiny-gpt2" else n == "layers.1.weight" for n in names)
    w = fl.params_vector()
    assert torch.equal(fl(w, batch), loaded.loss(batch))
    # the gradient over the subset is the model's gradient of those parameters
    g = torch.func.grad(lambda x: fl(x, batch))(w)
    loaded.model.zero_grad()
    loaded.loss(batch).backward()
    named = dict(loaded.model.named_parameters())
    ref = torch.cat([named[n].grad.reshape(-1) for n in names])
    torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    # moving w moves only the subset: parameters outside it stay where they were
    others = {n: p.detach().clone() for n, p in named.items() if n not in names}
    fl.write_back(w + 0.01)
    assert not torch.equal(fl.params_vector(), w)
    assert all(torch.equal(named[n], t) for n, t in others.items())
    assert torch.equal(fl(w + 0.01, batch), loaded.loss(batch))


def test_functional_loss_refuses_active_dropout():
    loaded = load_model("tiny-gpt2", block_size=32)
    loaded.model.transformer.drop.p = 0.1  # training mode (default) + p > 0: a random loss
    with pytest.raises(ModelError, match="dropout"):
        FunctionalLoss(loaded.model)
    loaded.model.eval()  # the caller switches modes explicitly; then it is accepted
    assert FunctionalLoss(loaded.model).d == _n_params(loaded.model)


def test_select_parameters_error_lists_real_names():
    model = load_model("tiny-gpt2").model
    with pytest.raises(ModelError) as info:
        select_parameters(model, ["transformer.h.0.attn", "nope.weight"])
    msg = str(info.value)
    assert "'nope.weight'" in msg and "transformer.wte.weight" in msg and "re:" in msg
    assert select_parameters(model, "transformer.h.0.attn") == [
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
    ]
