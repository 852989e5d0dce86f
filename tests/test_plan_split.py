"""Plans that use the measured dynamics: per-module SD / expansion, curvature split, converged subspace only.

Synthetic estimates and curvatures (no model) for the planner; a float64 MLP with a dense
Hessian as the reference for :func:`module_curvature`.
"""

import itertools
import json

import numpy as np
import pytest
import torch

from sdcompress.errors import PlanError
from sdcompress.estimator.result import SDEstimate
from sdcompress.plan import (
    ModuleCurvature,
    ModuleInfo,
    ModulePlan,
    Plan,
    PlanConfig,
    curvature_from_dict,
    describe_modules,
    greedy_path,
    make_plan,
    module_curvature,
    path_prefix,
    rank_grid,
    rank_options,
    size_fraction,
    water_fill,
)

MODULES = [
    ModuleInfo("a", 24, 72, True, "a.weight", 0),
    ModuleInfo("b", 24, 24, True, "b.weight", 1728),
    ModuleInfo("c", 96, 24, False, "c.weight", 2304),
    ModuleInfo("e", 24, 96, False, "e.weight", 4608),
]
D = 7000
SIZES = {m.name: m.numel for m in MODULES}


def estimate(sd=2000.0, *, module_sd=None, module_expansion=None, subspace=None, converged=None) -> SDEstimate:
    return SDEstimate(method="exact", sd=sd, j_star=int(sd), exponents=np.array([0.1, -0.2]), d=D, n_hvp=0,
                      wall_time_s=0.0, lr=0.1, module_sd=module_sd, module_expansion=module_expansion,
                      subspace=subspace, converged=converged)


def curvature(scales: dict[str, float]) -> dict[str, ModuleCurvature]:
    """Truncation costs c(k) = scale · (1 − k/r)² on every rank (convex, 0 at full rank)."""
    out = {}
    for m in MODULES:
        r = min(m.out_features, m.in_features)
        ks = tuple(range(1, r + 1))
        out[m.name] = ModuleCurvature(trace=scales[m.name] * 10, ranks=ks,
                                      costs=tuple(scales[m.name] * (1 - k / r) ** 2 for k in ks),
                                      sq_norms=tuple(float(r - k) for k in ks), numel=m.numel)
    return out


MEASURED_SD = {"a.weight": 500.0, "b.weight": 160.0, "c.weight": 640.0, "e.weight": 600.0, "other.bias": 100.0}
EXPANSION = {"a.weight": 0.05, "b.weight": 0.05, "c.weight": 0.6, "e.weight": 0.1, "other.bias": 0.2}


def test_rank_options_and_greedy_match_brute_force_on_convex_costs():
    # two modules, convex costs: at every prefix the greedy split is the cheapest split of its size
    curv = curvature({"a": 1.0, "b": 3.0, "c": 1.0, "e": 1.0})
    mods = MODULES[:2]
    opts = {m.name: rank_options(m.out_features, m.in_features, curv[m.name].cost) for m in mods}
    assert [o.rank for o in opts["b"]][-1] is None and opts["b"][-1].cost == 0.0
    assert all(o.rank * (24 + 24) < 24 * 24 for o in opts["b"][:-1])
    path = greedy_path(opts)
    cur = {n: 0 for n in opts}
    for n, j in path:
        cur[n] = j
        stored = sum(opts[k][cur[k]].stored for k in opts)
        cost = sum(opts[k][cur[k]].cost for k in opts)
        best = min(opts["a"][i].cost + opts["b"][j2].cost for i, j2 in itertools.product(range(len(opts["a"])), range(len(opts["b"])))
                   if opts["a"][i].stored + opts["b"][j2].stored <= stored)
        assert cost <= best + 1e-12
    assert all(opts[n][cur[n]].rank is None for n in opts)  # the path ends dense
    # prefixes are monotone in the limit
    sizes = [sum(opts[n][j].stored for n, j in path_prefix(opts, path, lim, "stored").items()) for lim in range(0, 3000, 97)]
    assert sizes == sorted(sizes)


def test_sd_plan_splits_by_curvature_and_records_shares():
    est = estimate(sd=2000.0, module_sd=MEASURED_SD, module_expansion=EXPANSION)
    curv = curvature({"a": 1e-4, "b": 1e-4, "c": 1.0, "e": 1e-4})  # only c's truncation costs anything
    plan = make_plan(est, MODULES, PlanConfig(), curvature=curv)
    by = {m.name: m for m in plan.modules}
    for m in plan.modules:
        assert m.sd_share == pytest.approx(MEASURED_SD[f"{m.name}.weight"] / 2000.0)
        assert m.expansion_share == pytest.approx(EXPANSION[f"{m.name}.weight"])
        k, o, i = m.rank, m.out_features, m.in_features
        assert m.dof == (o * i if k is None else k * (o + i - k))
    total = sum(m.dof for m in plan.modules)
    assert total <= sum(v for k, v in MEASURED_SD.items() if k != "other.bias") + 1e-9  # the count is SD's
    assert total >= 1900 - 2 * 96 * 24  # and nearly all of it is spent (up to the last move)
    # the split is not by size: c gets far more than its size share, the cheap modules rank 1
    assert by["c"].dof / total > 2 * SIZES["c"] / sum(SIZES.values())
    assert by["a"].rank == 1 and by["b"].rank == 1 and by["e"].rank == 1
    assert by["a"].dof < MEASURED_SD["a.weight"]  # below its own SD_m, said in words
    assert "BELOW" in by["a"].reason and "curvature split" in by["a"].reason
    text = " ".join(plan.notes)
    assert "split by curvature" in text and "--tolerance" in text and "module_sd of the exact estimate" in text
    assert by["c"].predicted_cost == pytest.approx(curv["c"].cost(by["c"].rank))
    # JSON round trip keeps the new fields
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.module("c").sd_share == by["c"].sd_share and again.module("c").dof == by["c"].dof


def test_without_curvature_each_module_keeps_its_measured_floor():
    est = estimate(sd=2000.0, module_sd=MEASURED_SD)
    plan = make_plan(est, MODULES, PlanConfig())
    for m in plan.modules:
        sd_m = MEASURED_SD[f"{m.name}.weight"]
        if m.rank is not None:
            assert m.rank * (m.out_features + m.in_features - m.rank) >= sd_m
            assert m.rank == 1 or (m.rank - 1) * (m.out_features + m.in_features - m.rank + 1) < sd_m
    assert m.expansion_share is None
    assert "no per-module curvature" in " ".join(plan.notes)


def test_budgeted_sd_plan_meets_the_budget_and_scales_with_it():
    est = estimate(sd=2000.0, module_sd=MEASURED_SD, module_expansion=EXPANSION)
    curv = curvature({"a": 0.3, "b": 2.0, "c": 1.0, "e": 0.1})
    prev = 0.0
    for budget in (0.2, 0.4, 0.6):
        plan = make_plan(est, MODULES, PlanConfig(budget={"params_fraction": budget}, below_floor=True), curvature=curv)
        f = size_fraction(plan.modules, "params_fraction")
        assert prev <= f <= budget + 1e-12 and f >= budget - 0.05
        prev = f


def test_unconverged_subspace_is_not_used():
    Q = torch.zeros(D, 4, dtype=torch.float64)
    Q[2304:2308, :] = torch.eye(4, dtype=torch.float64)
    for converged, used in ((None, False), (False, False), (True, True)):
        est = estimate(sd=100.0, subspace=Q, converged=converged)
        plan = make_plan(est, MODULES, PlanConfig())
        assert (plan.module("c").row_weights is not None) == used
        text = " ".join(plan.notes)
        assert ("NOT used" in text) == (not used)


def test_baselines_size_trace_hawq():
    curv = curvature({"a": 1.0, "b": 5.0, "c": 0.5, "e": 0.1})
    for strategy in ("size", "trace", "hawq"):
        plan = make_plan(None, MODULES, PlanConfig(strategy=strategy, budget={"params_fraction": 0.4}), curvature=curv)
        f = size_fraction(plan.modules, "params_fraction")
        assert 0.34 <= f <= 0.4 + 1e-12 and plan.strategy == strategy
    # size: every module keeps ≈ the same fraction of its values
    size = make_plan(None, MODULES, PlanConfig(strategy="size", budget={"params_fraction": 0.4}))
    for m in size.modules:
        o, i = m.out_features, m.in_features
        k = max(1, int(size.budget["knob"] * o * i / (o + i)))
        assert m.rank == (k if k * (o + i) < o * i else None)
    # trace: stored values water-filled by tr(H_mm)
    trace = make_plan(None, MODULES, PlanConfig(strategy="trace", budget={"params_fraction": 0.4}), curvature=curv)
    alloc = water_fill([m.numel for m in MODULES], [curv[m.name].trace for m in MODULES], trace.budget["knob"] * sum(SIZES.values()))
    for m, a in zip(MODULES, alloc):
        mp = trace.module(m.name)
        k = max(1, int(a / (m.out_features + m.in_features)))
        assert mp.rank == (k if k * (m.out_features + m.in_features) < m.numel else None)
    with pytest.raises(PlanError, match="module_curvature"):
        make_plan(None, MODULES, PlanConfig(strategy="hawq", budget={"params_fraction": 0.4}))


def test_new_plan_fields_are_validated():
    with pytest.raises(PlanError, match="sd_share must be ≥ 0"):
        ModulePlan("x", 4, 4, sd_share=-0.1).validate()
    with pytest.raises(PlanError, match="predicted_cost must be a finite number"):
        ModulePlan("x", 4, 4, predicted_cost=float("nan")).validate()


def test_rank_grid_covers_ends():
    assert rank_grid(5) == [1, 2, 3, 4, 5]
    g = rank_grid(100, dense_grid=8, grid=6)
    assert g[0] == 1 and g[-1] == 100 and g == sorted(set(g)) and len(g) <= 13


def test_module_curvature_against_dense_hessian():
    from sdcompress.models import MLP

    torch.manual_seed(0)
    model = MLP((6, 5, 4, 3)).double()
    mods = describe_modules(model, ["layers.0", "layers.1"])
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    curv = module_curvature(model, mods, batches, probes=1500, seed=3)
    params = [model.layers[0].weight, model.layers[1].weight]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_at(flat, bx, by):
        w0 = flat[:30].view(shapes[0])
        w1 = flat[30:].view(shapes[1])
        h = torch.relu(bx @ w0.T)
        h = torch.relu(h @ w1.T)
        return torch.nn.functional.cross_entropy(h @ model.layers[2].weight.T, by)

    H = sum(torch.autograd.functional.hessian(lambda f: loss_at(f, bx, by), flat0) for bx, by in batches) / 2
    blocks = {"layers.0": slice(0, 30), "layers.1": slice(30, 50)}
    for m, W in zip(mods, params):
        Hmm = H[blocks[m.name], blocks[m.name]]
        c = curv[m.name]
        assert c.trace == pytest.approx(float(torch.trace(Hmm)), rel=0.1, abs=0.02)
        U, S, Vh = torch.linalg.svd(W.detach(), full_matrices=False)
        for k, cost, sq in zip(c.ranks, c.costs, c.sq_norms):
            delta = (W.detach() - (U[:, :k] * S[:k]) @ Vh[:k]).reshape(-1)
            assert cost == pytest.approx(0.5 * float(delta @ Hmm @ delta), rel=1e-8, abs=1e-12)
            assert sq == pytest.approx(float(delta @ delta), rel=1e-10, abs=1e-14)
    assert model.layers[0].weight.grad is None
    again = curvature_from_dict({k: v.to_dict() for k, v in curv.items()})
    assert again == curv
    with pytest.raises(PlanError, match="at least one minibatch"):
        module_curvature(model, mods, [])


def test_cli_mlp_auto_records_shares_and_splits_not_by_size(tmp_path):
    """`sdcompress mlp --target-rank auto` (exact estimate): plan.json has sd_share, expansion_share and dof per module,
    and the degrees of freedom given are not proportional to size."""
    from sdcompress.cli.main import main

    out = tmp_path / "mlp"
    sets = ["train.steps=150", "train.log_every=50", "train.checkpoint_every=1000", "estimate.method=exact",
            "estimate.n_batches=2", "estimate.lyapunov_exponents=2", "estimate.lyapunov_steps=4", "estimate.lyapunov_warmup=1",
            "estimate.n_bootstrap=10", "evaluate.max_test_examples=64", "evaluate.max_train_examples=64"]
    args = ["mlp", "--target-rank", "auto", "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    plan = json.loads((out / "plan.json").read_text())
    mods = plan["modules"]
    assert all(m["sd_share"] is not None and m["expansion_share"] is not None and m["dof"] > 0 for m in mods)
    assert sum(m["sd_share"] for m in mods) < 1.0 + 1e-9
    sizes = [m["out_features"] * m["in_features"] for m in mods]
    dof_share = [m["dof"] / sum(x["dof"] for x in mods) for m in mods]
    size_share = [s / sum(sizes) for s in sizes]
    # measured here: layers.0 rank 12 (816 dof), layers.1 dense (256): shares 0.761 / 0.239 against sizes 0.8 / 0.2
    assert max(abs(a / b - 1) for a, b in zip(dof_share, size_share)) > 0.1
    assert any("split by curvature" in n for n in plan["notes"])


def test_stdlib_corpus_is_offline_split_by_file_and_deterministic():
    from sdcompress.data import load_data

    a = load_data("stdlib", block_size=16, max_bytes=200_000)
    b = load_data("stdlib", block_size=16, max_bytes=200_000)
    assert torch.equal(a.train.tensors["input_ids"], b.train.tensors["input_ids"])
    assert a.info["bytes"] <= 200_000 and a.info["train_files"] > 0 and a.info["test_files"] > 0
    assert a.train.tensors["input_ids"].shape[1] == 16 and int(a.train.tensors["input_ids"].max()) <= 256
    with pytest.raises(Exception, match="max_bytes must be positive"):
        load_data("stdlib", max_bytes=0)
