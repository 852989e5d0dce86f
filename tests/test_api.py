"""The public API: load_model handles compressed folders; plan/evaluate work as names of
the package root whatever was imported before; plan_model → compress_ → save → load."""

import numpy as np
import pytest
import torch

from sdcompress.estimator.result import SDEstimate


def test_plan_and_evaluate_are_callable_even_after_their_packages_are_imported():
    import sdcompress.evaluate.verdict  # noqa: F401  (the import system sets sdcompress.evaluate = the package)
    import sdcompress.plan.planner  # noqa: F401
    from sdcompress import evaluate, plan

    assert callable(plan) and callable(evaluate)
    assert sdcompress.plan.PlanConfig is not None  # still the package's attributes
    from sdcompress.plan import ModuleInfo, PlanConfig

    est = SDEstimate(method="exact", sd=10.0, j_star=10, exponents=np.zeros(2), d=100, n_hvp=0, wall_time_s=0.0, lr=0.1)
    p = plan(est, [ModuleInfo("a", 8, 8, offset=0)], PlanConfig())
    assert p.modules[0].name == "a" and p.sd == 10.0


def test_plan_model_compress_save_load_round_trip(tmp_path):
    from sdcompress.api import compress_, load_model, plan_model, save_compressed
    from sdcompress.plan import PlanConfig

    loaded = load_model("mlp", seed=3)
    est = SDEstimate(method="exact", sd=300.0, j_star=300, exponents=np.zeros(2), d=1440, n_hvp=0, wall_time_s=0.0, lr=0.2)
    plan = plan_model(loaded, est, PlanConfig(target_rank=4))
    assert [m.name for m in plan.modules] == ["layers.0", "layers.1"] and {m.rank for m in plan.modules} == {4}
    x = torch.randn(5, 64)
    report = compress_(loaded.model, plan)
    assert report.params_after < report.params_before
    with torch.no_grad():
        ref = loaded.model(x)
    save_compressed(loaded.model, tmp_path / "m", plan, report)
    again = load_model(tmp_path / "m")  # a compressed folder: rebuilt with its low-rank modules
    assert type(again.model.layers[0]).__name__ == "LowRankLinear"
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), ref, rtol=0, atol=0)
    assert again.info["plan"].to_dict() == plan.to_dict()


def test_plan_model_fisher_needs_batches():
    from sdcompress.api import load_model, plan_model
    from sdcompress.errors import PlanError
    from sdcompress.plan import PlanConfig

    loaded = load_model("mlp")
    with pytest.raises(PlanError, match="needs fisher statistics"):
        plan_model(loaded, None, PlanConfig(strategy="fisher", budget={"params_fraction": 0.5}))
