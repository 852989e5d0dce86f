"""One definition each (issue #9, part 3): compressible modules, ``re:`` patterns, the
``--set`` loop, run-folder names, the rank-vs-shape check, the planning glue; strict
``SDEstimate.from_dict``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdcompress.errors import ConfigError, EstimatorError, ModelError, PlanError
from sdcompress.estimator.result import SDEstimate

PKG = Path(__file__).resolve().parents[1] / "sdcompress"


def _calls(name: str) -> set[str]:
    """Files of the package that call ``name(...)`` (as a plain name or an attribute)."""
    out = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if called == name:
                    out.add(str(path.relative_to(PKG)))
    return out


def _strings(path: Path) -> set[str]:
    """String constants of a file, docstrings and help texts included."""
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _gpt2() -> nn.Module:
    from sdcompress.models import tiny_gpt2

    return tiny_gpt2(n_embd=16, n_layer=1, n_head=2, vocab_size=40, block_size=8).eval()


def test_compressible_modules_have_one_definition_used_by_planner_and_compress():
    from sdcompress.compress import eligible_modules
    from sdcompress.models.targets import compressible_modules
    from sdcompress.plan import candidate_modules, describe_modules

    assert candidate_modules is compressible_modules
    model = _gpt2()
    names = list(compressible_modules(model))
    assert list(eligible_modules(model)) == names
    assert "lm_head" not in names  # tied to the token embedding
    assert any(n.endswith("attn.c_attn") for n in names)  # GPT-2 Conv1D
    # the planner refuses the tied head up front (compress_ would refuse it too)
    with pytest.raises(ModelError, match="'lm_head' matches no Linear/Conv1D module"):
        describe_modules(model, ["lm_head"])
    infos = {m.name: m for m in describe_modules(model, ["transformer.h.0.attn"])}
    assert infos["transformer.h.0.attn.c_attn"].stored_shape == tuple(model.transformer.h[0].attn.c_attn.weight.shape)


def test_re_patterns_have_one_definition():
    from sdcompress.models import select_parameters
    from sdcompress.models.targets import match_names
    from sdcompress.plan import resolve_targets

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    params = [n for n, _ in model.named_parameters()]
    for pattern in ("re:[02]", "re:.*weight", "2", "0.bias"):
        assert select_parameters(model, [pattern]) == match_names(pattern, params)
    assert match_names("re:[02]", ["0", "1", "2", "20", "x2"]) == ["0", "2", "20"]  # re.match: from the start
    assert match_names("2", ["2", "2.weight", "20"]) == ["2", "2.weight"]  # a name or a parent, not a prefix
    assert resolve_targets(model, ["re:[02]"]) == ["0", "2"]
    for call in (lambda: select_parameters(model, ["re:("]), lambda: resolve_targets(model, ["re:("])):
        with pytest.raises(ConfigError, match=r"'re:\(' is not a valid regular expression"):
            call()
    spelled = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if 'startswith("re:")' in p.read_text()]
    assert spelled == [], spelled  # the prefix is models.targets.REGEX_PREFIX, read in one place


def test_the_set_loop_has_one_definition():
    assert _calls("parse_override") == {"recipe/schema.py"}  # called only by apply_overrides
    assert {"recipe/loader.py", "cli/run.py", "experiments/common.py"} <= _calls("apply_overrides")
    from sdcompress.pipeline import RunConfig
    from sdcompress.recipe import apply_overrides

    data = apply_overrides({}, ["train.lr=0.5", "model.options.n_layer=1", "plan.targets=a,b"], RunConfig)
    assert data == {"train": {"lr": 0.5}, "model": {"options": {"n_layer": 1}}, "plan": {"targets": ["a", "b"]}}


def _joined_paths(path: Path) -> set[str]:
    """String constants joined onto a path with ``/`` (``folder / "trained"``)."""
    return {n.right.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant)
            and isinstance(n.right.value, str)}


def test_the_cli_uses_the_pipelines_folder_names():
    from sdcompress.pipeline import folder

    names = {v for k, v in vars(folder).items() if k.endswith(("_FILE", "_DIR")) and isinstance(v, str)}
    for cli in sorted((PKG / "cli").glob("*.py")):
        assert not _joined_paths(cli), f"cli/{cli.name} joins {_joined_paths(cli)} onto a path: import the constants"
        hard_coded = _strings(cli) & (names - {"model"})  # "model" is also a word (the dtype option, a key)
        assert not hard_coded, f"cli/{cli.name} spells {hard_coded}: import the constants"


def test_the_cli_does_not_choose_the_device_or_load_models_itself():
    assert not {p for p in _calls("is_available") if p.startswith("cli/")}
    assert {"cli/estimate.py", "cli/train.py"} <= _calls("resolve_device")
    assert "cli/estimate.py" in _calls("load_trained")  # the main job's loading
    assert not {p for p in _calls("pretrained_builtin") if p.startswith("cli/")}


def test_rank_against_shape_has_one_definition():
    from sdcompress.plan import ModuleInfo, PlanConfig, check_rank, check_target_rank

    hits = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "is larger than the" in p.read_text()]
    assert hits == ["plan/targets.py"]
    m = ModuleInfo("blk", 8, 3)
    check_rank(m, 3)
    with pytest.raises(PlanError, match=r"target rank 4 is larger than the 8×3 weight of module 'blk' allows \(at most 3\)"):
        check_rank(m, 4)
    check_target_rank(PlanConfig(target_rank=4, clip_rank=True), [m])  # clip_rank keeps it dense instead
    with pytest.raises(PlanError):
        check_target_rank(PlanConfig(target_rank=4), [m])


def test_planning_glue_has_one_definition():
    assert _calls("module_statistics") == {"plan/inputs.py"}
    assert _calls("module_curvature") == {"plan/inputs.py"}
    assert {"api.py", "pipeline/stages.py", "experiments/compression_tie.py"} <= _calls("planning_inputs")
    from sdcompress.data import BatchStream, digits
    from sdcompress.models import MLP
    from sdcompress.plan import PlanConfig, planning_inputs

    torch.manual_seed(0)
    model = MLP((64, 6, 5, 10))
    energy = planning_inputs(model, PlanConfig(strategy="energy", budget={"params_fraction": 0.5}))
    assert [m.name for m in energy.modules] == ["layers.0", "layers.1"] and set(energy.stats) == {"layers.0", "layers.1"}
    assert energy.stats["layers.0"].fisher_rows is None and energy.curvature is None
    batches = BatchStream(digits().train, 16, seed=0).take(3)
    fisher = planning_inputs(model, PlanConfig(strategy="fisher", budget={"params_fraction": 0.5}), fisher_batches=batches)
    assert len(fisher.stats["layers.0"].fisher_rows) == 6
    sd = planning_inputs(model, PlanConfig(curvature_batches=2), curvature_batches=batches)
    assert sd.stats is None and set(sd.curvature) == {"layers.0", "layers.1"}
    assert planning_inputs(model, PlanConfig(target_rank=2, curvature_batches=2), curvature_batches=batches).curvature is None
    with pytest.raises(PlanError, match="target rank 7 is larger than"):
        planning_inputs(model, PlanConfig(target_rank=7))


def _estimate(**kw) -> SDEstimate:
    return SDEstimate("exact", 2.5, 2, np.array([0.3, 0.1, -0.5]), 3, 9, 0.1, 0.2, sd_interval=(2.0, 3.0),
                      params=("layers.0",), module_sd={"layers.0.weight": 2.5}, **kw)


def test_strict_from_dict_accepts_its_own_output_and_rejects_unknown_keys(tmp_path):
    est = _estimate()
    data = json.loads(json.dumps(est.to_dict()))
    assert {"sd_over_d", "has_subspace"} <= set(data)  # derived keys to_dict writes
    again = SDEstimate.from_dict(data)
    assert again.sd == est.sd and again.sd_interval == (2.0, 3.0) and again.params == ("layers.0",)
    assert again.module_sd == {"layers.0.weight": 2.5}
    with pytest.raises(EstimatorError, match=r"unknown estimate field\(s\) \['sd_bogus'\]"):
        SDEstimate.from_dict({**data, "sd_bogus": 1})
    with pytest.raises(EstimatorError, match=r"missing the field\(s\) \['exponents'\]"):
        SDEstimate.from_dict({k: v for k, v in data.items() if k != "exponents"})
    with pytest.raises(EstimatorError, match="must be a JSON object"):
        SDEstimate.from_dict([1, 2])  # type: ignore[arg-type]
    est.save(tmp_path)
    assert SDEstimate.load(tmp_path).exponents.tolist() == est.exponents.tolist()


def test_plan_cli_refuses_an_estimate_with_unknown_keys(tmp_path, capsys):
    from sdcompress.cli.main import main

    data = {**_estimate().to_dict(), "extra_key": 1}
    (tmp_path / "estimates.json").write_text(json.dumps(data))
    assert main(["plan", str(tmp_path), "--model", "mlp", "--output", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown estimate field(s) ['extra_key']" in err
    assert not (tmp_path / "plan.json").exists()
