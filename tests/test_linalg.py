"""Matrix-free linear algebra against dense float64 references (curvlinops-style)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sdcompress.data import BatchStream, digits, pydoc
from sdcompress.errors import ConfigError, EstimatorError
from sdcompress.linalg import (
    DenseOperator,
    GradientGraph,
    HessianOperator,
    StepJacobian,
    available_memory_bytes,
    batched_hvp,
    check_dense_size,
    choose_reorth,
    default_memory_budget,
    dense_hessian,
    hessian_slq,
    hutchinson_trace,
    lanczos,
    lanczos_memory_bytes,
    slq,
    top_eigenpairs,
    top_eigenvalue,
)
from sdcompress.models import MLP, FunctionalLoss, tiny_gpt2

GPT_PARAMS = ["transformer.h.0.ln_1", "transformer.h.0.attn.c_attn", "transformer.ln_f"]


def sym_matrix(eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T


@pytest.fixture(scope="module")
def gpt64():
    """tiny-gpt2 (small config) in float64 with LayerNorm in the selected block, and a batch."""
    model = tiny_gpt2(seed=0, n_layer=1, n_embd=8, n_head=2, block_size=8).double().eval()
    data = pydoc(block_size=8)
    batch = BatchStream(data.train, 3, seed=0).batch(0)
    loss = FunctionalLoss(model, GPT_PARAMS)
    return loss, batch


@pytest.fixture(scope="module")
def mlp64():
    torch.manual_seed(0)
    model = MLP((64, 6, 10)).double()
    x, y = BatchStream(digits().train, 32, seed=0).batch(0)
    return FunctionalLoss(model), (x.double(), y)


def reference_hessian_rows(loss, batch, w):
    """Dense Hessian by one double-backward pass per basis vector (written out here)."""
    x = w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x, batch), x, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(len(w))])


def finite_difference_hvp(loss, batch, w, v, h=1e-3):
    def grad_at(x):
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(loss(x, batch), x)[0]

    return (grad_at(w + h * v) - grad_at(w - h * v)) / (2 * h)


def test_dense_hessian_matches_double_backward_rows_on_gpt2(gpt64):
    loss, batch = gpt64
    w = loss.params_vector()
    assert loss.d > 200  # LayerNorm weights/biases and attention weights
    H = dense_hessian(loss, batch, w, chunk_size=64)
    ref = reference_hessian_rows(loss, batch, w)
    assert torch.allclose(H, 0.5 * (ref + ref.T), atol=1e-12, rtol=1e-10)
    assert torch.allclose(H, H.T)


@pytest.mark.parametrize("method", ["auto", "vmap", "loop", "double-backward"])
def test_hvp_matches_dense_and_finite_differences_through_layernorm(gpt64, method):
    loss, batch = gpt64
    w = loss.params_vector()
    H = dense_hessian(loss, batch, w, chunk_size=64)
    V = torch.randn(3, loss.d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    HV = batched_hvp(loss, batch, V, w, chunk_size=2, method=method)
    assert torch.allclose(HV, V @ H, atol=1e-10, rtol=1e-8)
    # transformers' causal-LM loss casts the logits to float32, so the gradient carries
    # ~1e-8 relative rounding: h = 1e-3 balances it against the O(h²) truncation
    fd = finite_difference_hvp(loss, batch, w, V[0])
    assert torch.allclose(HV[0], fd, atol=1e-4 * float(fd.abs().max()), rtol=0)
    # a single vector comes back as a vector
    assert torch.allclose(batched_hvp(loss, batch, V[1], w, method=method), HV[1], atol=1e-12)


def test_hessian_operator_reuses_its_gradient_graph_and_counts(gpt64):
    loss, batch = gpt64
    w = loss.params_vector()
    H = dense_hessian(loss, batch, w, chunk_size=64)
    op = HessianOperator(loss, batch, w, method="double-backward")
    V = torch.randn(4, loss.d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    first = op.matmat(V[:2])
    graph = op._graph
    second = op.matmat(V[2:])
    assert isinstance(graph, GradientGraph) and op._graph is graph  # built once
    assert torch.allclose(torch.cat([first, second]), V @ H, atol=1e-10)
    assert op.n_matvecs == 4
    assert torch.allclose(op.to_dense(chunk=50), H, atol=1e-10)


def test_step_jacobian_with_weight_decay(mlp64):
    loss, batch = mlp64
    H = dense_hessian(loss, batch)
    lr, wd = 0.3, 0.05
    J = StepJacobian(HessianOperator(loss, batch), lr, wd)
    expected = (1 - lr * wd) * torch.eye(loss.d, dtype=torch.float64) - lr * H
    assert torch.allclose(J.to_dense(), expected, atol=1e-12)
    assert J.n_hvp == loss.d
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        StepJacobian(HessianOperator(loss, batch), 0.0)


def test_top_eigenpairs_are_algebraic_not_largest_magnitude():
    eigs = [-10.0, 5.0, 4.0, 3.0] + [0.1 * i for i in range(16)]
    A = sym_matrix(eigs)
    op = DenseOperator(A)
    pairs = top_eigenpairs(op, k=3, steps=20)
    ref_vals, ref_vecs = torch.linalg.eigh(A)
    assert torch.allclose(pairs.values, ref_vals.flip(0)[:3], atol=1e-9)
    for v, u in zip(pairs.vectors, ref_vecs.flip(1).T[:3]):
        assert abs(abs(float(v @ u)) - 1.0) < 1e-8
    assert float(pairs.residuals.max()) < 1e-8
    assert top_eigenvalue(DenseOperator(A), steps=20) == pytest.approx(5.0, abs=1e-9)  # not -10


def test_hutchinson_matches_the_dense_trace_within_its_standard_error(mlp64):
    loss, batch = mlp64
    H = dense_hessian(loss, batch)
    est = hutchinson_trace(HessianOperator(loss, batch), n_probes=300, seed=3, chunk=50)
    assert est.n_hvp == 300
    true = float(torch.trace(H))
    # Rademacher variance: 2 Σ_{i≠j} H_ij²; the reported stderr must match it
    off = H - torch.diag(torch.diag(H))
    predicted = math.sqrt(2 * float((off**2).sum()) / 300)
    assert est.stderr == pytest.approx(predicted, rel=0.25)
    assert abs(est.value - true) < 4 * predicted
    with pytest.raises(ConfigError, match="n_probes=0"):
        hutchinson_trace(DenseOperator(H), n_probes=0)


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    D = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    est = hutchinson_trace(DenseOperator(D), n_probes=3)
    assert est.value == pytest.approx(55.0, abs=1e-12) and est.stderr == pytest.approx(0.0, abs=1e-12)


def test_slq_with_full_krylov_space_recovers_each_runs_eigenvalues():
    mats = [sym_matrix([-1.0 + 0.3 * i + r for i in range(12)], seed=r) for r in range(3)]
    meas = slq(lambda r: DenseOperator(mats[r]), runs=3, steps=12, seed=0)
    assert meas.n_runs == 3 and meas.d == 12 and meas.n_hvp == 36
    for r, A in enumerate(mats):
        nodes = torch.tensor(meas.nodes[meas.run == r])
        assert torch.allclose(nodes, torch.linalg.eigvalsh(A), atol=1e-9)
        assert meas.tau[meas.run == r].sum() == pytest.approx(1.0, abs=1e-12)
    assert meas.masses().sum() == pytest.approx(12.0)
    # ∫ α dμ is the mean Hutchinson sample, and each sample is exactly vᵀ A_r v
    assert meas.integrate(lambda a: a) == pytest.approx(meas.traces.mean(), rel=1e-10)


def test_slq_moments_converge_to_the_mean_spectrum():
    A = sym_matrix([float(i) - 5 for i in range(40)], seed=5)
    meas = slq(lambda r: DenseOperator(A), runs=200, steps=10, seed=1)
    # Gauss quadrature with 10 nodes integrates α and α² exactly; only the probe noise is left
    assert meas.integrate(lambda a: a) == pytest.approx(float(torch.trace(A)), abs=8.0)
    assert meas.integrate(lambda a: a**2) == pytest.approx(float(torch.trace(A @ A)), rel=0.05)


def test_hessian_slq_uses_a_fresh_batch_per_run(mlp64):
    loss, _ = mlp64
    stream = BatchStream(digits().train, 16, seed=4)
    seen = []

    def batch_for(r):
        seen.append(r)
        x, y = stream.batch(r)
        return x.double(), y

    meas = hessian_slq(loss, batch_for, runs=3, steps=5, seed=0)
    assert seen == [0, 1, 2] and meas.n_hvp == 15
    H1 = dense_hessian(loss, batch_for(1))
    assert meas.traces[1] != pytest.approx(meas.traces[0])
    assert float(meas.top[1]) <= float(torch.linalg.eigvalsh(H1)[-1]) + 1e-9


def test_slq_and_lanczos_reject_bad_settings():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="runs=0"):
        slq(lambda r: op, runs=0, steps=3)
    with pytest.raises(ConfigError, match="steps=0"):
        slq(lambda r: op, runs=1, steps=0)
    with pytest.raises(ConfigError, match="at least one step"):
        lanczos(op, torch.ones(3, dtype=torch.float64), 0)


def test_dense_size_check_says_how_big_and_what_to_do():
    check_dense_size(100, 1000)
    with pytest.raises(EstimatorError, match=r"d = 124,000,000.*GiB.*slq.*params"):
        check_dense_size(124_000_000, 16384)


def test_operators_follow_the_dtype_and_device_of_the_point():
    model = nn.Linear(3, 2, bias=False)
    loss = FunctionalLoss(model)
    batch = (torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    op = HessianOperator(loss, batch)
    assert op.dtype == torch.float32 and op.device == model.weight.device
    out = op.matvec(torch.ones(loss.d))
    assert out.dtype == torch.float32 and out.shape == (loss.d,)


# --- memory-lean Lanczos (issue 11 part 1) -------------------------------------------------

SPECTRUM = [12.0, 9.0, -6.0] + [-1.0 + 2.0 * i / 196 for i in range(197)]  # outliers and a bulk, d = 200


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["full", "half", "none"])
def test_every_reorthogonalisation_mode_finds_the_extreme_eigenvalues(dtype, mode):
    A = sym_matrix(SPECTRUM, seed=2)
    op = DenseOperator(A.to(dtype))
    v = torch.ones(200, dtype=dtype)
    res = lanczos(op, v, 60, reorth=mode)
    assert res.reorth == mode and res.Q is None and res.steps == 60
    theta = res.ritz()[0]
    tol = 1e-9 if (dtype == torch.float64 and mode != "half") else 1e-4
    assert float(theta[-1]) == pytest.approx(12.0, abs=tol * 12)
    assert float(theta[0]) == pytest.approx(-6.0, abs=tol * 12)
    # 9 is found in every mode; without reorthogonalisation 12 may also come back as a (converging) ghost copy
    assert float((theta - 9.0).abs().min()) < tol * 12
    assert float(theta.max()) < 12.0 + tol * 12


@pytest.mark.parametrize("mode", ["full", "half", "none"])
def test_lean_slq_moments_match_the_dense_spectrum(mode):
    A = sym_matrix(SPECTRUM, seed=3).to(torch.float32)
    meas = slq(lambda r: DenseOperator(A), runs=60, steps=40, seed=1, reorth=mode)
    assert meas.reorth == mode
    A64 = A.double()
    # Gauss quadrature is exact for α and α²; without reorthogonalisation only the weights of ghosts split
    assert meas.integrate(lambda a: a) == pytest.approx(float(torch.trace(A64)), abs=20.0)
    assert meas.integrate(lambda a: a**2) == pytest.approx(float(torch.trace(A64 @ A64)), rel=0.06)
    full = slq(lambda r: DenseOperator(A), runs=60, steps=40, seed=1, reorth="full")
    for f in (lambda a: a**2, lambda a: np.maximum(a - 5.0, 0.0), lambda a: np.abs(a) ** 0.5):
        assert meas.integrate(f) == pytest.approx(full.integrate(f), rel=0.02)


def test_memory_prediction_and_the_budget_choose_the_mode():
    d, steps = 124_439_808, 20  # GPT-2-small, the λ_max check
    assert lanczos_memory_bytes(d, steps, torch.float32, "full") == (steps + 4) * d * 4
    assert lanczos_memory_bytes(d, steps, torch.float32, "half") == steps * d * 2 + 4 * d * 4 + d * 4  # + one row cast back
    assert lanczos_memory_bytes(d, steps, torch.float32, "none") == 4 * d * 4
    assert lanczos_memory_bytes(d, steps, torch.float64, "half") == steps * d * 4 + 4 * d * 8 + d * 8
    assert lanczos_memory_bytes(1000, 10, torch.float32, "half") == 10 * 1000 * 2 + 4 * 1000 * 4 + 10 * 1000 * 4
    assert lanczos_memory_bytes(10, 50, torch.float32, "full") == (10 + 4) * 10 * 4  # steps clipped to d
    gb = 2**30
    assert choose_reorth(d, steps, torch.float32, memory_budget=8 * gb) == "half"
    assert choose_reorth(d, steps, torch.float32, memory_budget=12 * gb) == "full"
    assert choose_reorth(d, steps, torch.float32, memory_budget=3 * gb) == "none"
    assert choose_reorth(d, steps, torch.float32, memory_budget=1, reorth="full") == "full"  # explicit wins
    assert choose_reorth(1440, 80, torch.float32) == "full"  # small models keep the exact path by default
    assert 0 < default_memory_budget() < available_memory_bytes()
    with pytest.raises(ConfigError, match="reorth must be one of"):
        choose_reorth(10, 5, reorth="partial")
    with pytest.raises(ConfigError, match="memory_budget must be"):
        choose_reorth(10, 5, memory_budget=0)
    with pytest.raises(ConfigError, match="reorth must be one of"):
        lanczos(DenseOperator(torch.eye(3)), torch.ones(3), 2, reorth="selective")


def test_lean_lanczos_holds_only_a_few_vectors(tmp_path):
    """Peak resident memory of a 40-step run on d = 2M (8 MB per vector) in a fresh process."""
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(
        "import resource, sys, torch\n"
        "from sdcompress.linalg import lanczos, SymmetricOperator\n"
        "class Diag(SymmetricOperator):\n"
        "    def __init__(s, x):\n"
        "        super().__init__(); s.x, s.d, s.dtype, s.device = x, len(x), x.dtype, x.device\n"
        "    def _matmat(s, V):\n"
        "        return V * s.x\n"
        "torch.set_num_threads(1)\n"
        "d = 2_000_000\n"
        "x = torch.linspace(-1.0, 1.0, d); x[0] = 3.0\n"
        "op = Diag(x)\n"
        "v = torch.ones(d)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "res = lanczos(op, v, 40, reorth=sys.argv[1], blocks=[slice(0, d // 2), slice(d // 2, d)])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) * 1024, float(res.ritz()[0][-1]))\n"
    )
    # a fixed mmap threshold: glibc otherwise raises it after each freed 8 MB vector (up to 32 MiB) and serves
    # later vectors from a fragmenting heap, so the RSS of this small-vector run would measure the allocator;
    # at GPT-2 sizes (vectors ≥ 32 MiB) allocations are always mmapped and returned on free
    env = {**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1]),
           "MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}
    out = subprocess.run([sys.executable, str(script), "none"], capture_output=True, text=True, env=env, check=True).stdout.split()
    grown, top = int(out[0]), float(out[1])
    vec = 2_000_000 * 4
    assert top == pytest.approx(3.0, abs=1e-3)  # dots accumulate in float64 (a float32 BLAS dot gave 3.006 at d = 16M)
    assert grown < 8 * vec  # the basis would be 40 vectors (320 MB); predicted work: 4 vectors + temporaries
    assert lanczos_memory_bytes(2_000_000, 40, torch.float32, "none") == 4 * vec


@pytest.mark.parametrize("mode", ["half", "none"])
def test_top_eigenpairs_without_a_stored_basis(mode):
    A = sym_matrix(SPECTRUM, seed=4)
    ref_vals, ref_vecs = torch.linalg.eigh(A)
    op = DenseOperator(A)
    pairs = top_eigenpairs(op, k=2, steps=50, reorth=mode)
    assert pairs.reorth == mode and pairs.n_matvecs == 50 + 50 + 2  # run, replay, residuals
    assert torch.allclose(pairs.values, torch.tensor([12.0, 9.0], dtype=torch.float64), atol=1e-6)
    for v, u in zip(pairs.vectors, ref_vecs.flip(1).T[:2]):
        assert abs(abs(float(v @ u)) - 1.0) < 1e-6
    assert float(pairs.residuals.max()) < 1e-4
    lean = top_eigenpairs(op, k=1, steps=50, reorth=mode, vectors=False)  # the λ_max check
    assert lean.vectors is None and lean.n_matvecs == 50
    assert float(lean.values[0]) == pytest.approx(12.0, abs=1e-6) and float(lean.residuals[0]) < 1e-4
    # a short run: the estimate β_m |s_i[m]| equals the true residual when the basis is orthonormal
    short = top_eigenpairs(op, k=1, steps=6, reorth="full")
    est = top_eigenpairs(op, k=1, steps=6, reorth="full", vectors=False)
    assert float(est.residuals[0]) == pytest.approx(float(short.residuals[0]), rel=1e-6)
    assert top_eigenvalue(op, steps=50, reorth=mode) == pytest.approx(12.0, abs=1e-6)


def test_block_dot_products_give_per_block_weights_that_sum_to_tau():
    # block-diagonal: block 0 (size 30) = 2·I, block 1 (size 50) = −I, so v_bᵀ f(A) v = f(c_b) n_b exactly
    A = torch.block_diag(2.0 * torch.eye(30), -torch.eye(50)).double()
    blocks = [slice(0, 30), slice(30, 80)]
    meas = slq(lambda r: DenseOperator(A), runs=3, steps=10, seed=0, blocks=blocks, block_names=["a", "b"])
    assert meas.block_names == ("a", "b") and meas.block_weights.shape == (len(meas.nodes), 2)
    np.testing.assert_allclose(meas.block_weights.sum(axis=1), meas.tau, atol=1e-12)
    bm = meas.block_masses()
    at2, atm1 = np.isclose(meas.nodes, 2.0), np.isclose(meas.nodes, -1.0)
    assert bm[at2, 0].sum() == pytest.approx(30.0) and bm[atm1, 1].sum() == pytest.approx(50.0)
    assert abs(bm[at2, 1].sum()) < 1e-9 and abs(bm[atm1, 0].sum()) < 1e-9
    with pytest.raises(ConfigError, match="no per-block weights"):
        slq(lambda r: DenseOperator(A), runs=1, steps=3).block_masses()


def test_hessian_slq_records_weights_per_parameter_tensor(mlp64):
    loss, batch = mlp64
    meas = hessian_slq(loss, lambda r: batch, runs=2, steps=8, seed=0)
    assert meas.block_names == loss.layout.names
    np.testing.assert_allclose(meas.block_weights.sum(axis=1), meas.tau, atol=1e-10)


def test_batched_double_backward_equals_the_loop_and_the_dense_hessian(gpt64, mlp64):
    for loss, batch in (gpt64, mlp64):
        w = loss.params_vector()
        V = torch.randn(5, loss.d, generator=torch.Generator().manual_seed(0), dtype=w.dtype)
        graph = GradientGraph(loss, batch, w, chunk_size=2)  # chunks of 2, 2, 1
        assert graph._batched
        batched = graph.matmat(V)
        graph._batched = False
        looped = graph.matmat(V)
        torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batched, V @ dense_hessian(loss, batch, w), rtol=1e-8, atol=1e-10)
