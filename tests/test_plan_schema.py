"""Plan schema: JSON round trip, validation errors, size predictions from shapes alone."""

from __future__ import annotations

import json
import math

import pytest

from sdcompress.errors import PlanError
from sdcompress.plan.schema import ModulePlan, Plan, kept_count, quantized_bytes


def _plan() -> Plan:
    return Plan(
        modules=(
            ModulePlan("a.lin", 10, 20, rank=3, bits=4, group_size=8, reason="SD floor"),
            ModulePlan("b.lin", 10, 20, keep_fraction=0.3, row_weights=tuple(float(i + 1) for i in range(10))),
            ModulePlan("c.lin", 6, 5, bits=8, col_weights=(1.0, 2.0, 0.5, 3.0, 1.0)),
            ModulePlan("d.lin", 6, 5),
        ),
        strategy="sd",
        sd=12.5,
        d=400,
        budget={"params_fraction": 0.5},
        notes=("SD ≈ d: little compression is safe",),
    )


def test_json_round_trip(tmp_path):
    plan = _plan()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary files left behind


def test_unknown_sd_survives_json(tmp_path):
    plan = Plan((ModulePlan("m", 6, 5, rank=2),), "sd", sd=float("nan"), d=30)
    back = Plan.load(plan.save(tmp_path / "plan.json"))
    assert math.isnan(back.sd) and back.modules == plan.modules


def test_kind_names():
    assert [m.kind for m in _plan().modules] == ["lowrank+quantized", "masked", "quantized", "dense"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"bits": 3}, ["'m'", "bits 3", "8, 4"]),
        ({"bits": 16}, ["bits 16", "8, 4"]),
        ({"rank": 7}, ["rank 7", "[1, 5]"]),
        ({"rank": 0}, ["rank 0", "[1, 5]"]),
        ({"keep_fraction": 0.0}, ["keep_fraction 0.0", "(0, 1]"]),
        ({"keep_fraction": 1.5}, ["keep_fraction 1.5"]),
        ({"rank": 2, "keep_fraction": 0.5}, ["rank=2", "keep_fraction=0.5", "not both"]),
        ({"row_weights": (1.0,) * 4}, ["row_weights", "length 6", "got 4"]),
        ({"col_weights": (1.0, 1.0, -1.0, 1.0, 1.0)}, ["col_weights", "> 0"]),
        ({"group_size": 0}, ["group_size", "0"]),
    ],
)
def test_validation_names_module_value_and_allowed(kwargs, words):
    mp = ModulePlan("m", 6, 5, **kwargs)
    with pytest.raises(PlanError) as info:
        mp.validate()
    for w in words:
        assert w in str(info.value)
    with pytest.raises(PlanError):  # the same check runs when reading JSON
        Plan.from_dict({"strategy": "manual", "modules": [mp.to_dict()]})


def test_duplicate_module_is_an_error():
    with pytest.raises(PlanError, match="twice"):
        Plan((ModulePlan("m", 6, 5, rank=1), ModulePlan("m", 6, 5, bits=8)), "manual").validate()


def test_load_corrupt_file_names_path(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"strategy": "sd", "modules": [')
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)
    with pytest.raises(PlanError, match="cannot read plan"):
        Plan.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d.update(colour="red"), ["unknown plan field", "colour"]),
        (lambda d: d["modules"][0].update(ranks=3), ["unknown field", "ranks", "a.lin"]),
        (lambda d: d["modules"][0].update(out_features="10"), ["out_features", "'10'"]),
        (lambda d: d["modules"][0].update(rank=2.0), ["rank 2.0"]),
        (lambda d: d["modules"][1].update(row_weights="heavy"), ["row_weights"]),
        (lambda d: d.update(modules={"a": 1}), ["'modules' must be a list"]),
        (lambda d: d.update(notes="careful"), ["notes"]),
        (lambda d: d.update(version=2), ["version 2"]),
        (lambda d: d.pop("strategy"), ["missing", "strategy"]),
        (lambda d: d["modules"][0].pop("in_features"), ["missing", "in_features"]),
    ],
)
def test_load_rejects_unknown_fields_and_wrong_types(tmp_path, mutate, words):
    data = _plan().to_dict()
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    msg = str(info.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg


def test_kept_count_rounds_half_up_and_keeps_one():
    assert kept_count(10, 0.25) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert kept_count(10, 0.35) == 4  # 3.5 -> 4
    assert kept_count(1000, 0.0001) == 1
    assert kept_count(7, 1.0) == 7


def test_size_predictions_from_shapes():
    plan = _plan()
    a, b, c, d = plan.modules
    # a: U (10, 3) and V (3, 20) at int4 in groups of 8 along each factor's input dim, float32 scales
    u_bytes = math.ceil(10 * 3 / 2) + 10 * math.ceil(3 / 8) * 4
    v_bytes = math.ceil(3 * 20 / 2) + 3 * math.ceil(20 / 8) * 4
    assert a.params_after() == 3 * (10 + 20)
    assert a.bytes_after() == u_bytes + v_bytes == 55 + 66
    # b: 60 kept float32 values + a 200-bit bitmap
    assert b.params_after() == 60
    assert b.bytes_after() == 60 * 4 + 25
    assert b.bytes_after(float_bytes=2) == 60 * 2 + 25
    # c: dense int8, one group per row (group 64 > 5 columns)
    assert c.params_after() == 30 and c.bytes_after() == 30 + 6 * 4
    assert d.params_after() == 30 and d.bytes_after() == 120
    assert plan.params_before() == 200 + 200 + 30 + 30
    assert plan.params_after() == 90 + 60 + 30 + 30
    assert plan.bytes_after() == 121 + 265 + 54 + 120
    assert plan.bytes_before() == 4 * plan.params_before()
    assert quantized_bytes(4, 64, 4, 64, 2) == 128 + 4 * 2


def test_masked_quantized_prediction():
    mp = ModulePlan("m", 8, 100, keep_fraction=0.5, bits=4, group_size=32)
    kept = 400
    assert mp.bytes_after() == kept // 2 + 8 * math.ceil(100 / 32) * 4 + 100


def test_plans_are_pure_values():
    assert _plan() == _plan()
    assert _plan().to_dict() == _plan().to_dict()
    assert "4 modules" in _plan().summary()
