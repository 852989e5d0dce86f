"""Matrix-free linear algebra against dense float64 references (curvlinops-style)."""

from __future__ import annotations

import math

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
    batched_hvp,
    check_dense_size,
    dense_hessian,
    hessian_slq,
    hutchinson_trace,
    lanczos,
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
    with pytest.raises(ConfigError, match="learning rate"):
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
