"""The planner is pure and follows its documented rule; baselines meet the same budget."""

import math

import numpy as np
import pytest
import torch

from sdcompress.errors import ConfigError, ModelError, PlanError
from sdcompress.estimator.result import SDEstimate
from sdcompress.plan import (
    ModuleInfo,
    ModuleStats,
    PlanConfig,
    describe_modules,
    make_plan,
    module_floors,
    module_statistics,
    allot,
    rank_floor,
    size_fraction,
    water_fill,
)

MODULES = [
    ModuleInfo("blk.0.attn", 24, 72, True, "blk.0.attn.weight", 0),
    ModuleInfo("blk.0.proj", 24, 24, True, "blk.0.proj.weight", 1728),
    ModuleInfo("blk.0.fc", 96, 24, False, "blk.0.fc.weight", 2304),
    ModuleInfo("blk.0.out", 24, 96, False, "blk.0.out.weight", 4608),
]
D = 7000  # 6912 target weights + 88 other parameters


def estimate(sd: float, *, subspace: torch.Tensor | None = None, method="slq", converged: bool | None = True) -> SDEstimate:
    """A synthetic estimate; a given subspace counts as converged unless ``converged`` says otherwise."""
    return SDEstimate(method=method, sd=sd, j_star=int(sd), exponents=np.array([0.1, -0.2]), d=D, n_hvp=0,
                      wall_time_s=0.0, lr=0.1, subspace=subspace, converged=converged if subspace is not None else None)


def concentrated_subspace(m: int = 8, seed: int = 0) -> torch.Tensor:
    """Orthonormal (D, m) basis living on the first 8 output rows of blk.0.fc only."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.zeros(D, m, dtype=torch.float64)
    rows = torch.arange(2304, 2304 + 8 * 24)  # fc is (96, 24) stored row-major: first 8 rows
    Q[rows] = torch.linalg.qr(torch.randn(len(rows), m, generator=g, dtype=torch.float64))[0]
    return Q


def test_rank_floor_matches_brute_force():
    for o, i in [(24, 72), (96, 24), (7, 5), (1, 9)]:
        for dof in [0, 1, 50.5, 300, o * i - 1, o * i, 10 * o * i]:
            brute = next((k for k in range(1, min(o, i) + 1) if k * (o + i - k) >= dof), min(o, i))
            assert rank_floor(o, i, dof) == brute


def test_water_fill_caps_and_sums():
    alloc = water_fill([10, 10, 100], [0.5, 0.25, 0.25], 40)
    assert alloc == pytest.approx([10, 10, 20])
    assert water_fill([3, 4], [0.5, 0.5], 100) == [3, 4]
    alloc = water_fill([50, 50, 50], [0.2, 0.3, 0.5], 30)
    assert alloc == pytest.approx([6, 9, 15])


def test_plan_is_pure_and_needs_no_model():
    est = estimate(3000.0, subspace=concentrated_subspace())
    before = est.subspace.clone()
    a = make_plan(est, MODULES, PlanConfig())
    b = make_plan(est, MODULES, PlanConfig())
    assert a.to_dict() == b.to_dict()
    assert torch.equal(est.subspace, before)  # inputs untouched


@pytest.mark.parametrize("sd", [400.0, 2500.0, 5000.0])
def test_rank_floor_holds_per_module(sd):
    est = estimate(sd)
    plan = make_plan(est, MODULES, PlanConfig())
    floors = module_floors(est, MODULES, allot(est, MODULES), 1.0)
    # without a subspace SD is allotted by size: SD_m = SD · n_m / d, summing to SD
    for m in MODULES:
        assert floors[m.name] == pytest.approx(sd * m.numel / D)
    for mp in plan.modules:
        dof = floors[mp.name]
        if mp.rank is not None:
            k, o, i = mp.rank, mp.out_features, mp.in_features
            assert k * (o + i - k) >= dof  # the floor
            assert k == 1 or (k - 1) * (o + i - k + 1) < dof  # the smallest such rank
        else:  # dense only when a factorisation at the floor would not shrink it
            k = rank_floor(mp.out_features, mp.in_features, dof)
            assert k * (mp.out_features + mp.in_features) >= mp.out_features * mp.in_features


def test_subspace_energy_moves_the_floor_and_weights():
    Q = concentrated_subspace(m=8)
    est = estimate(16.0, subspace=Q)  # m = 8 of SD = 16: half of each share comes from the subspace
    al = allot(est, MODULES)
    assert al["blk.0.fc"].energy == pytest.approx(1.0)
    assert al["blk.0.attn"].energy == pytest.approx(0.0)
    expected = 0.5 * 1.0 + 0.5 * (96 * 24) / D
    assert al["blk.0.fc"].share == pytest.approx(expected)
    plan = make_plan(est, MODULES, PlanConfig(subspace_weighting=0.5))
    fc = plan.module("blk.0.fc")
    # reference: energy of row a = Σ_{b,j} Q[2304 + 24a + b, j]²; weight 0.5 + 0.5 · energy / mean(energy)
    block = (Q[2304:4608].numpy() ** 2).reshape(96, 24, 8)
    rows, cols = block.sum(axis=(1, 2)), block.sum(axis=(0, 2))
    assert fc.row_weights == pytest.approx(0.5 + 0.5 * rows / rows.mean(), rel=1e-5)
    assert fc.row_weights[8:] == pytest.approx([0.5] * 88)  # rows without energy keep the floor weight
    assert fc.col_weights == pytest.approx(0.5 + 0.5 * cols / cols.mean(), rel=1e-5)
    assert plan.module("blk.0.attn").row_weights is None  # no energy at all: plain SVD
    assert plan.module("blk.0.fc").rank >= plan.module("blk.0.out").rank  # same size, more attractor


def test_sd_close_to_d_says_so_plainly():
    plan = make_plan(estimate(0.98 * D), MODULES, PlanConfig())
    text = " ".join(plan.notes)
    assert "SD ≈ d" in text and "little compression" in text and "without weight decay" in text
    assert all(m.rank is None for m in plan.modules)
    assert "every module stays dense" in text
    assert plan.params_after() == plan.params_before()


def test_auto_bits_follow_density_and_sd_fraction():
    est = estimate(0.5 * D, subspace=concentrated_subspace(m=64))
    plan = make_plan(est, MODULES, PlanConfig(target_rank="off", bits="auto"))
    four = [m for m in plan.modules if m.bits == 4]
    assert sum(m.params_before() for m in four) <= 0.5 * plan.params_before()
    assert plan.module("blk.0.fc").bits == 8  # it holds the attractor
    assert all(m.rank is None and m.keep_fraction is None for m in plan.modules)
    assert make_plan(estimate(0.99 * D), MODULES, PlanConfig(target_rank="off", bits="auto")).module("blk.0.fc").bits == 8


def test_prune_auto_keeps_sd_share():
    est = estimate(1400.0)
    plan = make_plan(est, MODULES, PlanConfig(target_rank="off", prune="auto"))
    for mp in plan.modules:
        kept = round(mp.keep_fraction * mp.out_features * mp.in_features)
        assert kept == math.ceil(1400.0 * mp.out_features * mp.in_features / D)


@pytest.mark.parametrize("budget", [0.25, 0.5])
def test_baselines_and_sd_meet_the_same_budget(budget):
    g = torch.Generator().manual_seed(1)
    stats = {m.name: ModuleStats(tuple(sorted(torch.rand(min(m.out_features, m.in_features), generator=g).tolist(), reverse=True)),
                                 tuple(torch.rand(m.out_features, generator=g).add(0.1).tolist())) for m in MODULES}
    est = estimate(1000.0, subspace=concentrated_subspace())
    sizes = {}
    for strategy in ("sd", "uniform-rank", "energy", "fisher", "magnitude"):
        cfg = PlanConfig(strategy=strategy, budget={"params_fraction": budget}, below_floor=True)
        p = make_plan(est, MODULES, cfg, stats=stats)
        sizes[strategy] = size_fraction(p.modules, "params_fraction")
        assert p.strategy == strategy
        assert sizes[strategy] <= budget + 1e-12
        # within one rank step of the largest module (the knob is discrete)
        assert sizes[strategy] >= budget - 2 * (96 + 72) / 6912
    fisher = make_plan(est, MODULES, PlanConfig(strategy="fisher", budget={"params_fraction": budget}), stats=stats)
    assert all(m.row_weights is not None for m in fisher.modules if m.rank)
    bits = make_plan(est, MODULES, PlanConfig(strategy="uniform-bits", budget={"bytes_fraction": 0.3}))
    assert all(m.bits == 8 for m in bits.modules) and size_fraction(bits.modules, "bytes_fraction") <= 0.3


def test_baseline_without_budget_matches_sd_plan_size():
    est = estimate(1000.0)
    sd = make_plan(est, MODULES, PlanConfig())
    un = make_plan(est, MODULES, PlanConfig(strategy="uniform-rank"))
    assert size_fraction(un.modules, "params_fraction") <= size_fraction(sd.modules, "params_fraction") + 1e-12


def test_budget_below_floor_is_refused_plainly_unless_allowed():
    est = estimate(3000.0)
    strict = make_plan(est, MODULES, PlanConfig(budget={"params_fraction": 0.1}))
    assert any("not met" in n for n in strict.notes)
    assert strict.budget["sd_scale"] == 1.0
    loose = make_plan(est, MODULES, PlanConfig(budget={"params_fraction": 0.1}, below_floor=True))
    assert loose.budget["sd_scale"] < 1.0 and any("BELOW the SD floor" in n for n in loose.notes)


def test_bad_inputs_one_clear_message():
    est = estimate(1000.0)
    with pytest.raises(PlanError, match=r"target rank 50 is larger than the 24×72 weight of module .blk.0.attn. allows \(at most 24\)"):
        make_plan(est, MODULES, PlanConfig(target_rank=50))  # noqa
    with pytest.raises(ConfigError, match="plan.bits must be 8, 4, 'auto' or 'off', got 3"):
        PlanConfig(bits=3)
    for bad in (0, -0.1):
        with pytest.raises(ConfigError, match="plan.tolerance must be a positive number"):
            PlanConfig(tolerance=bad)
    with pytest.raises(ConfigError, match="not both"):
        PlanConfig(prune=0.5)
    with pytest.raises(ConfigError, match=r"plan.strategy must be one of \['sd'.*got 'svd'"):
        PlanConfig(strategy="svd")
    with pytest.raises(ConfigError, match=r"plan.targets .*got 're:\('"):
        PlanConfig(targets=["re:("])
    with pytest.raises(PlanError, match="Fisher|fisher"):
        make_plan(est, MODULES, PlanConfig(strategy="fisher", budget={"params_fraction": 0.5}), stats={})


def test_targets_on_a_model_and_statistics_against_dense_reference():
    from sdcompress.models import MLP

    torch.manual_seed(0)
    model = MLP((8, 6, 5, 3)).double()
    infos = describe_modules(model)
    assert [m.name for m in infos] == ["layers.0", "layers.1"]  # the head (last layer) is left out
    assert [m.offset for m in infos] == [0, 48]
    with pytest.raises(ModelError, match=r"'layers\.9' matches no Linear/Conv1D module.*layers\.0, layers\.1, layers\.2"):
        describe_modules(model, ["layers.9"])
    assert [m.name for m in describe_modules(model, ["re:layers\\.[12]"], ignore=["layers.2"])] == ["layers.1"]
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    stats = module_statistics(model, infos, batches)
    W = model.layers[0].weight
    assert stats["layers.0"].singular_values == pytest.approx(torch.linalg.svdvals(W.detach()).tolist())
    ref = torch.zeros(6, dtype=torch.float64)
    for bx, by in batches:
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(bx), by), W)
        ref += (g**2).sum(1) / 2
    assert stats["layers.0"].fisher_rows == pytest.approx(ref.tolist())
    assert model.layers[0].weight.grad is None


def test_weight_decay_note_and_escalation():
    est = SDEstimate(method="ps", sd=0.95 * D, j_star=1, exponents=np.array([0.1, -0.2]), d=D, n_hvp=0,
                     wall_time_s=0.0, lr=0.1, weight_decay=0.01)
    text = " ".join(make_plan(est, MODULES, PlanConfig()).notes)
    assert "with weight decay wd = 0.01" in text and "without weight decay" not in text
    cfg = PlanConfig(target_rank="off", bits=4, budget={"params_fraction": 0.5}, growth=2.0)
    assert [cfg.escalated(i).bits for i in range(3)] == [4, 8, "off"]
    assert [cfg.escalated(i).budget["params_fraction"] for i in range(3)] == [0.5, 1.0, 1.0]
    assert cfg.escalated(2).sd_scale == 4.0
    manual = PlanConfig(target_rank=20).escalated(1)
    assert manual.target_rank == 30 and manual.clip_rank
    plan = make_plan(estimate(1000.0), MODULES, manual)  # 30 > 24: those modules stay dense instead of failing
    assert [m.rank for m in plan.modules] == [None, None, None, None]


def test_conv1d_rows_are_output_features():
    """GPT-2's Conv1D stores W as (in, out): subspace energy on one stored column is one output row."""
    from sdcompress.models import tiny_gpt2

    model = tiny_gpt2(n_embd=8, n_layer=1, n_head=2, block_size=8, vocab_size=20)
    infos = {m.name: m for m in describe_modules(model)}
    attn = infos["transformer.h.0.attn.c_attn"]
    assert (attn.out_features, attn.in_features, attn.transposed) == (24, 8, True)
    d = sum(p.numel() for p in model.parameters())
    Q = torch.zeros(d, 1, dtype=torch.float64)
    stored = torch.zeros(8, 24, dtype=torch.float64)
    stored[:, 5] = 1.0  # every input feature of output 5
    Q[attn.offset : attn.offset + 192, 0] = stored.reshape(-1) / stored.norm()
    est = SDEstimate(method="lyapunov", sd=1.0, j_star=1, exponents=np.array([0.1]), d=d, n_hvp=0, wall_time_s=0.0,
                     lr=0.1, subspace=Q, converged=True)
    al = allot(est, list(infos.values()))["transformer.h.0.attn.c_attn"]
    assert al.energy == pytest.approx(1.0)
    assert al.row_energy[5] == pytest.approx(1.0) and sum(al.row_energy) == pytest.approx(1.0)
    assert al.col_energy == pytest.approx([1 / 8] * 8)
