"""Multi-step Lyapunov exponents (QR/Benettin) and the Lyapunov estimator of the SGD map.

References: closed forms for linear maps (ln|1 − η a_i|), a dense float64 QR reference
for products of random matrices, Newman's exact exponents of Gaussian random matrices,
the Hénon map's published exponents, and dense float64 Hessians of a tiny MLP.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import digamma
from torch import Tensor, nn

from sdcompress.data import ArrayDataset, BatchStream, load_data
from sdcompress.errors import ConfigError, DivergenceError, EstimatorError
from sdcompress.estimator.kaplan_yorke import sharpness_dimension
from sdcompress.estimator.lyapunov import block_bootstrap_dimension, lyapunov_spectrum
from sdcompress.estimator.lyapunov_sgd import lyapunov_sd, subspace_energy
from sdcompress.estimator.result import SDEstimate
from sdcompress.models import FunctionalLoss, load_model

F64 = torch.float64


def _orthogonal(d: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0]


def _cfg(m: int, steps: int, warmup: int, **kw) -> SimpleNamespace:
    return SimpleNamespace(lyapunov_exponents=m, lyapunov_steps=steps, lyapunov_warmup=warmup, **kw)


def _orthonormality_error(Q: Tensor) -> float:
    Q = Q.to(F64)
    return float((Q.T @ Q - torch.eye(Q.shape[1], dtype=F64)).abs().max())


# ---------------------------------------------------------------- linear maps: closed form

# eigenvalues of A with η = 0.5: |1 − η a| = 2.5, 2.0, 1.6, 0.7, 0.45, 0.3, 0.2, 0.1
_A_EIGS = torch.tensor([7.0, 6.0, -1.2, 0.6, 1.1, 1.4, 1.6, 1.8], dtype=F64)
_LR = 0.5


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_linear_map_exponents_equal_closed_form(wd: float) -> None:
    U = _orthogonal(8, seed=1)
    A = U @ torch.diag(_A_EIGS) @ U.T
    J = (1 - _LR * wd) * torch.eye(8, dtype=F64) - _LR * A  # the SGD map of ½wᵀAw with weight decay
    m = 6
    res = lyapunov_spectrum(lambda x: J @ x, torch.zeros(8, dtype=F64), m, steps=150, warmup=100)
    closed = np.sort(np.log(np.abs(1 - _LR * wd - _LR * _A_EIGS.numpy())))[::-1]
    np.testing.assert_allclose(res.exponents, closed[:m], rtol=0, atol=1e-8)
    # the tracked directions span the top-m eigenvectors of J (by |eigenvalue|)
    top = U[:, np.argsort(-np.abs(1 - _LR * wd - _LR * _A_EIGS.numpy()))[:m].copy()]
    residual = res.Q - top @ (top.T @ res.Q)
    assert float(residual.abs().max()) < 1e-8
    assert _orthonormality_error(res.Q) < 1e-12
    assert res.n_jvp == 150 * m
    # running sum of the 6 tracked exponents turns negative: the dimension is exact
    assert not res.lower_bound
    assert res.dimension == pytest.approx(sharpness_dimension(closed), abs=1e-7)


def test_lower_bound_when_running_sum_stays_positive() -> None:
    U = _orthogonal(8, seed=2)
    J = U @ torch.diag(torch.tensor([2.0, 1.7, 1.4, 1.2, 0.5, 0.4, 0.3, 0.2], dtype=F64)) @ U.T
    res = lyapunov_spectrum(lambda x: J @ x, torch.zeros(8, dtype=F64), 3, steps=60, warmup=30)
    assert res.j_star == 3 and res.lower_bound
    assert res.dimension == 3.0  # reported as "≥ 3", never as a truncated exact value
    assert "≥ 3" in res.summary()
    # tracking every direction settles it: Σ of all 8 is negative, the dimension is exact
    full = lyapunov_spectrum(lambda x: J @ x, torch.zeros(8, dtype=F64), 8, steps=60, warmup=30)
    closed = np.log([2.0, 1.7, 1.4, 1.2, 0.5, 0.4, 0.3, 0.2])
    assert not full.lower_bound
    assert full.dimension == pytest.approx(sharpness_dimension(closed), abs=1e-8)
    # m = d with every running sum ≥ 0 is exact too (SD = d), not a bound
    expanding = lyapunov_spectrum(lambda x: 1.5 * x, torch.zeros(3, dtype=F64), 3, steps=10, warmup=2)
    assert expanding.dimension == 3.0 and not expanding.lower_bound


# ---------------------------------------------------------------- random matrix products


def _random_matrices(n: int, d: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, d, generator=g, dtype=F64) / math.sqrt(d)


def test_random_matrix_product_equals_dense_qr_reference() -> None:
    d, m, steps, warmup = 6, 4, 300, 20
    Ms = _random_matrices(steps, d, seed=5)
    q0 = torch.randn(d, m, generator=torch.Generator().manual_seed(9), dtype=F64)
    # step(x, t): a time-dependent map, differentiated by the default vmap(jvp) path
    res = lyapunov_spectrum(lambda x, t: Ms[t] @ x, torch.ones(d, dtype=F64), m, steps, warmup, q0=q0)

    # reference: plain numpy float64 QR of the accumulated products
    Mnp = Ms.numpy()
    Q, R0 = np.linalg.qr(q0.numpy())
    Q = Q * np.sign(np.diag(R0))  # the initial frame too has R's diagonal positive
    logs = np.zeros(m)
    for t in range(steps):
        Q, R = np.linalg.qr(Mnp[t] @ Q)
        signs = np.sign(np.diag(R))
        Q, diag = Q * signs, np.abs(np.diag(R))
        if t >= warmup:
            logs += np.log(diag)
    ref = logs / (steps - warmup)
    np.testing.assert_allclose(res.exponents_qr, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.exponents, np.sort(ref)[::-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.Q.numpy(), Q, atol=1e-10)


def test_random_matrix_exponents_match_newman_formula() -> None:
    # Newman (1986): for i.i.d. N(0, 1/d) entries, Λ_i = ½ [ln(2/d) + ψ((d − i + 1)/2)].
    d, steps, warmup = 4, 2000, 20
    Ms = _random_matrices(steps, d, seed=11)
    res = lyapunov_spectrum(lambda x, t: Ms[t] @ x, torch.zeros(d, dtype=F64), d, steps, warmup, jvp_fn=lambda x, Q, t: Ms[t] @ Q)
    newman = 0.5 * (np.log(2 / d) + digamma((d - np.arange(1, d + 1) + 1) / 2))
    # sampling error of a 1980-step mean: per-step std of ln R_ii is ≲ 0.8, so ≲ 0.02
    np.testing.assert_allclose(res.exponents, newman, atol=0.06)
    # with m = d the sum of the exponents is exactly the mean of ln|det M_t|
    logdet = torch.linalg.slogdet(Ms[warmup:])[1].mean().item()
    assert res.exponents.sum() == pytest.approx(logdet, abs=1e-10)


# ---------------------------------------------------------------- Hénon map (published values)

# Published (e.g. Sprott, Chaos and Time-Series Analysis, 2003) for a = 1.4, b = 0.3:
# λ1 = 0.41922, λ2 = −1.62319, Kaplan–Yorke dimension 1 + λ1/|λ2| = 1.2583; λ1 + λ2 = ln b.
HENON_L1, HENON_L2, HENON_DIM = 0.41922, -1.62319, 1.2583


def _henon(x: Tensor, a: float = 1.4, b: float = 0.3) -> Tensor:
    u, v = x.unbind()
    return torch.stack([1 - a * u * u + v, b * u])


def _henon_jvp(x: Tensor, Q: Tensor, t: int) -> Tensor:
    J = torch.tensor([[-2.8 * float(x[0]), 1.0], [0.3, 0.0]], dtype=x.dtype)
    return J @ Q


def test_henon_map_single_orbit() -> None:
    x0 = torch.tensor([0.1, 0.1], dtype=F64)
    res = lyapunov_spectrum(_henon, x0, 2, steps=5000, warmup=100, jvp_fn=_henon_jvp)
    # one orbit of 4900 steps: the sampling std of λ1 is ≈ 0.004 (measured over orbits)
    assert res.exponents[0] == pytest.approx(HENON_L1, abs=0.02)
    assert res.exponents[1] == pytest.approx(HENON_L2, abs=0.02)
    assert res.exponents.sum() == pytest.approx(math.log(0.3), abs=1e-10)  # det J = −b every step
    assert not res.lower_bound and res.j_star == 1
    assert res.dimension == pytest.approx(1 + res.exponents[0] / abs(res.exponents[1]))
    # the default forward-mode path agrees with the hand-written Jacobian
    short_auto = lyapunov_spectrum(_henon, x0, 2, steps=200, warmup=20)
    short_hand = lyapunov_spectrum(_henon, x0, 2, steps=200, warmup=20, jvp_fn=_henon_jvp)
    np.testing.assert_allclose(short_auto.exponents, short_hand.exponents, rtol=0, atol=1e-12)
    np.testing.assert_allclose(short_auto.running, short_hand.running, rtol=0, atol=1e-12)
    assert short_auto.running.shape == (180, 2) and short_auto.running_dimension.shape == (180,)


def test_henon_map_published_exponents_to_two_decimals() -> None:
    # One orbit converges slowly (std ≈ 0.003 after 20k steps), so run K independent
    # orbits as one flat state (u_1..u_K, v_1..v_K) and track all 2K exponents. The
    # product system's spectrum is λ1 and λ2, K times each: the mean of the top K
    # estimates λ1 over K orbits, and its Kaplan–Yorke dimension is exactly K·(1 + λ1/|λ2|).
    K = 32

    def step(x: Tensor) -> Tensor:
        u, v = x[:K], x[K:]
        return torch.cat([1 - 1.4 * u * u + v, 0.3 * u])

    def jvp_fn(x: Tensor, Q: Tensor, t: int) -> Tensor:
        u, Qu, Qv = x[:K, None], Q[:K], Q[K:]
        return torch.cat([-2.8 * u * Qu + Qv, 0.3 * Qu])

    x0 = 0.2 * (torch.rand(2 * K, generator=torch.Generator().manual_seed(0), dtype=F64) - 0.5)
    res = lyapunov_spectrum(step, x0, 2 * K, steps=2500, warmup=100, jvp_fn=jvp_fn)
    # sampling std of these means ≈ 0.0014 (measured over seeds); two decimals = ±0.005
    assert res.exponents[:K].mean() == pytest.approx(HENON_L1, abs=5e-3)
    assert res.exponents[K:].mean() == pytest.approx(HENON_L2, abs=5e-3)
    assert res.dimension / K == pytest.approx(HENON_DIM, abs=5e-3)
    assert res.exponents.sum() == pytest.approx(K * math.log(0.3), abs=1e-9)
    assert np.all(res.exponents[:K] > 0) and np.all(res.exponents[K:] < 0)
    assert not res.lower_bound  # m = d


# ---------------------------------------------------------------- bad input to lyapunov_spectrum


def test_lyapunov_spectrum_bad_input() -> None:
    x = torch.zeros(3, dtype=F64)
    ident = lambda z: z  # noqa: E731
    with pytest.raises(EstimatorError, match="between 1 and the state dimension d = 3, got 4"):
        lyapunov_spectrum(ident, x, 4, 10, 2)
    with pytest.raises(EstimatorError, match="got 0"):
        lyapunov_spectrum(ident, x, 0, 10, 2)
    with pytest.raises(EstimatorError, match=r"steps \(5\) must exceed warmup \(5\)"):
        lyapunov_spectrum(ident, x, 2, 5, 5)
    with pytest.raises(EstimatorError, match="non-finite"):
        lyapunov_spectrum(ident, torch.tensor([0.0, float("nan"), 1.0]), 2, 10, 2)
    with pytest.raises(EstimatorError, match=r"shape \(d,\)"):
        lyapunov_spectrum(ident, torch.zeros(2, 2), 1, 10, 2)
    with pytest.raises(EstimatorError, match=r"q0 must have shape \(d, m\) = \(3, 2\)"):
        lyapunov_spectrum(ident, x, 2, 10, 2, q0=torch.zeros(3, 3))
    with pytest.raises(EstimatorError, match="full column rank"):
        lyapunov_spectrum(ident, x, 2, 10, 2, q0=torch.ones(3, 2))
    with pytest.raises(DivergenceError, match="non-finite at step"):
        lyapunov_spectrum(lambda z: 1e30 * z, torch.ones(3, dtype=F64), 1, 40, 2)


def test_block_bootstrap_interval() -> None:
    # constant stretches: no spread, the interval collapses onto the exact dimension
    lam = np.array([0.5, -0.2, -1.0])
    (low, high), stderr, b = block_bootstrap_dimension(np.tile(lam, (50, 1)))
    assert b == 10 and low == pytest.approx(sharpness_dimension(lam)) and high == pytest.approx(low)
    np.testing.assert_allclose(stderr, 0, atol=1e-15)
    # i.i.d. noise: block-mean standard errors near σ/√n, and the interval covers the truth
    rng = np.random.default_rng(0)
    noisy = lam + 0.1 * rng.standard_normal((2000, 3))
    (low, high), stderr, _ = block_bootstrap_dimension(noisy)
    np.testing.assert_allclose(stderr, 0.1 / math.sqrt(2000), rtol=0.6)
    assert low < sharpness_dimension(lam) < high
    assert block_bootstrap_dimension(noisy[:1])[2] == 1  # too few steps: no interval


# ---------------------------------------------------------------- the SGD map of a model


class _Quadratic(nn.Module):
    """L_B(w) = ½ Σ_i (a_i + c·mean_B x_i) (Uᵀw)_i²: a batch-dependent quadratic whose
    minibatch Hessians commute, so the product of step Jacobians has closed-form exponents."""

    def __init__(self, U: Tensor, a: Tensor, c: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, len(a), dtype=F64))
        self.register_buffer("U", U)
        self.register_buffer("a", a)
        self.c = c

    def forward(self, x: Tensor) -> Tensor:  # (B, d) -> scalar loss
        curv = self.a + self.c * x.mean(0)
        return 0.5 * (curv * (self.U.T @ self.w) ** 2).sum()


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lyapunov_sd_quadratic_model_matches_closed_form(wd: float) -> None:
    d, m, steps, warmup = 8, 4, 110, 80
    U, c = _orthogonal(d, seed=4), 0.3
    model = _Quadratic(U, _A_EIGS.clone(), c)
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset({"inputs": torch.randn(64, d, generator=g, dtype=F64), "targets": torch.zeros(64, dtype=torch.long)}, "classification")
    stream = BatchStream(data, 8, seed=3)
    floss = FunctionalLoss(model, loss_fn=lambda out, _targets: out)
    before = model.w.detach().clone()
    est = lyapunov_sd(floss, stream, lr=_LR, weight_decay=wd, config=_cfg(m, steps, warmup))

    # closed form: the average over the kept steps (batch t at step t) of ln|1 − η(a + c x̄_t) − η wd|
    logs = np.stack([
        np.log(np.abs(1 - _LR * wd - _LR * (_A_EIGS + c * stream.batch(t)[0].mean(0)).numpy()))
        for t in range(warmup, steps)
    ])
    closed = np.sort(logs.mean(0))[::-1]
    np.testing.assert_allclose(est.exponents, closed[:m], rtol=0, atol=1e-8)
    assert est.method == "lyapunov" and est.d == d and est.n_hvp == steps * m
    assert est.sd == pytest.approx(sharpness_dimension(est.exponents))
    assert est.lower_bound == (est.j_star == m)
    top = U[:, np.argsort(-logs.mean(0))[:m].copy()]
    assert float((est.subspace - top @ (top.T @ est.subspace)).abs().max()) < 1e-8
    assert torch.equal(model.w.detach(), before)
    assert est.extras["param_energy"] == {"w": pytest.approx(1.0)}
    assert est.extras["module_energy"] == {"(root)": pytest.approx(1.0)}


def test_lyapunov_sd_counts_neutral_exponents_and_bootstrap() -> None:
    # two zero-curvature directions: their exponent is ln(1 − η·wd) exactly
    a = torch.tensor([7.0, 6.0, 0.0, 0.0, -1.2, 0.6, 1.4, 1.8], dtype=F64)
    wd = 0.05
    model = _Quadratic(_orthogonal(8, seed=6), a, c=0.0)
    data = ArrayDataset({"inputs": torch.zeros(16, 8, dtype=F64), "targets": torch.zeros(16, dtype=torch.long)}, "classification")
    floss = FunctionalLoss(model, loss_fn=lambda out, _targets: out)
    cfg = _cfg(5, 120, 90, n_bootstrap=50, confidence=0.9)
    est = lyapunov_sd(floss, BatchStream(data, 4, seed=0), lr=_LR, weight_decay=wd, config=cfg)
    closed = np.sort(np.log(np.abs(1 - _LR * wd - _LR * a.numpy())))[::-1][:5]
    np.testing.assert_allclose(est.exponents, closed, rtol=0, atol=1e-8)
    assert est.n_neutral == 2 and est.exponents[3] == pytest.approx(math.log(1 - _LR * wd), abs=1e-8)
    # a constant Jacobian: every block gives the same exponents, the interval is a point
    assert est.sd_interval == pytest.approx((est.sd, est.sd), abs=1e-6)
    assert "90% over 10 blocks of 3 steps" in est.uncertainty and est.settings["bootstrap_replicates"] == 50


def _check_estimate(est: SDEstimate, floss: FunctionalLoss, m: int, steps: int) -> None:
    assert est.subspace is not None and est.subspace.shape == (floss.d, m)
    assert _orthonormality_error(est.subspace) < 1e-5
    assert np.all(np.diff(est.exponents) <= 0) and len(est.exponents) == m
    assert est.n_hvp == steps * m and est.extras["n_grad"] == steps
    assert est.sd == pytest.approx(sharpness_dimension(est.exponents))
    assert sum(est.extras["module_energy"].values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(est.extras["param_energy"].values()) == pytest.approx(1.0, abs=1e-9)
    per_column = np.sum(list(est.extras["exponent_energy"].values()), axis=0)
    np.testing.assert_allclose(per_column, 1.0, atol=1e-5)
    assert set(est.extras["param_energy"]) == set(floss.layout.names)
    modules = {n for n, _ in floss.model.named_modules()}
    assert set(est.extras["module_energy"]) <= modules
    # energy of each parameter recomputed directly from the rows of Q
    Q = est.subspace.to(F64)
    for name, rows in floss.layout.slices().items():
        share = float(Q[rows].square().sum()) / m
        assert est.extras["param_energy"][name] == pytest.approx(share, abs=1e-6)


@pytest.fixture(scope="module")
def digits() -> object:
    return load_data("digits")


def test_lyapunov_sd_mlp_matches_dense_float64_reference(digits, tmp_path) -> None:
    lm = load_model("mlp", widths=(64, 6, 10))
    model = lm.model.double()
    floss = FunctionalLoss(model, loss_fn=lm.loss_fn)
    steps, warmup, m, lr, wd = 5, 1, 4, 0.3, 0.01
    batches = [(x.double(), y) for x, y in BatchStream(digits.train, 32, seed=1).take(steps)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    est = lyapunov_sd(floss, batches, lr=lr, weight_decay=wd, config=_cfg(m, steps, warmup, seed=7))
    _check_estimate(est, floss, m, steps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # reference: same QR core fed with the dense float64 step Jacobian (reverse-over-reverse)
    eye = torch.eye(floss.d, dtype=F64)

    def dense_step(w: Tensor, t: int) -> Tensor:
        return w - lr * (torch.func.grad(lambda v: floss(v, batches[t]))(w) + wd * w)

    def dense_jvp(w: Tensor, Q: Tensor, t: int) -> Tensor:
        H = torch.func.jacrev(torch.func.grad(lambda v: floss(v, batches[t])))(w)
        return ((1 - lr * wd) * eye - lr * H) @ Q

    ref = lyapunov_spectrum(dense_step, floss.params_vector(), m, steps, warmup, seed=7, jvp_fn=dense_jvp)
    np.testing.assert_allclose(est.exponents, ref.exponents, rtol=0, atol=1e-9)
    np.testing.assert_allclose(est.subspace.numpy(), ref.Q[:, torch.as_tensor(ref.order)].numpy(), atol=1e-8)
    # the artifact round-trips with its subspace
    est.save(tmp_path)
    back = SDEstimate.load(tmp_path)
    assert back.extras["module_energy"] == est.extras["module_energy"]
    assert torch.equal(back.subspace, est.subspace)


def test_lyapunov_sd_float32_mlp_stream(digits) -> None:
    lm = load_model("mlp", widths=(64, 8, 10))
    floss = FunctionalLoss(lm.model, loss_fn=lm.loss_fn)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    est = lyapunov_sd(floss, BatchStream(digits.train, 32, seed=0), lr=0.2, config=_cfg(3, 6, 2))
    _check_estimate(est, floss, 3, 6)
    assert est.subspace.dtype == torch.float32  # Q stays in the model's dtype
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert set(est.extras["module_energy"]) == {"layers.0", "layers.1"}
    assert est.sd_interval is not None and est.sd_interval[0] <= est.sd_interval[1]


def test_lyapunov_sd_tiny_gpt2() -> None:
    lm = load_model("tiny-gpt2", n_layer=1, n_embd=16, block_size=16)
    data = load_data("pydoc", block_size=16)
    floss = FunctionalLoss(lm.model, loss_fn=None)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    est = lyapunov_sd(floss, BatchStream(data.train, 2, seed=0), lr=0.5, weight_decay=0.01, config=_cfg(3, 3, 1))
    _check_estimate(est, floss, 3, 3)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert "transformer.h.0.attn.c_attn" in est.extras["module_energy"]
    assert np.all(np.isfinite(est.exponents))


def test_subspace_energy_by_hand() -> None:
    from sdcompress.models.functional import ParamLayout

    layout = ParamLayout(("a.weight", "a.bias", "b.weight"), (torch.Size([2]), torch.Size([1]), torch.Size([1])))
    Q = torch.tensor([[1.0, 0.0], [0.0, 0.6], [0.0, 0.0], [0.0, 0.8]])
    energy = subspace_energy(Q, layout)
    assert energy["param_energy"] == pytest.approx({"a.weight": (1 + 0.36) / 2, "a.bias": 0.0, "b.weight": 0.64 / 2})
    assert energy["module_energy"] == pytest.approx({"a": 0.68, "b": 0.32})
    assert energy["exponent_energy"]["a"] == pytest.approx([1.0, 0.36])


def test_lyapunov_sd_bad_input(digits) -> None:
    lm = load_model("mlp", widths=(64, 4, 10))
    floss = FunctionalLoss(lm.model, loss_fn=lm.loss_fn)
    stream = BatchStream(digits.train, 16, seed=0)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got 0"):
        lyapunov_sd(floss, stream, lr=0.0)
    with pytest.raises(ConfigError, match="weight_decay must be a finite number ≥ 0, got -0.1"):
        lyapunov_sd(floss, stream, lr=0.1, weight_decay=-0.1)
    with pytest.raises(ConfigError, match=f"estimate.lyapunov_exponents must be at most d = {floss.d} .*got {floss.d + 1}"):
        lyapunov_sd(floss, stream, lr=0.1, config=_cfg(floss.d + 1, 5, 1))
    with pytest.raises(EstimatorError, match="empty"):
        lyapunov_sd(floss, [], lr=0.1, config=_cfg(2, 5, 1))
    with pytest.raises(EstimatorError, match="got 2 batches for 5"):
        lyapunov_sd(floss, stream.take(2), lr=0.1, config=_cfg(2, 5, 1))
    with pytest.raises(EstimatorError, match="exhausted after 2 batches"):
        lyapunov_sd(floss, iter(stream.take(2)), lr=0.1, config=_cfg(2, 5, 1))
    with pytest.raises(EstimatorError, match=r"steps \(3\) must exceed warmup \(3\)"):
        lyapunov_sd(floss, stream, lr=0.1, config=_cfg(2, 3, 3))
    with pytest.raises(EstimatorError, match="FunctionalLoss"):
        lyapunov_sd(lm.model, stream, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(DivergenceError, match="smaller step size"):
        lyapunov_sd(floss, stream, lr=1e30, config=_cfg(2, 6, 1))


# ---------------------------------------------------------------- convergence test and warm start


def _slow_rotation_map(d: int = 1000):
    """x ↦ s ⊙ x: four weakly expanding axes (ln 1.003 … ln 1.001) in a bulk contracted by
    0.998 = 1 − η·wd (η·wd = 0.002, as on the digits MLP at EoS). A random frame needs
    ~1,000 steps to rotate out of the bulk; the bulk itself is perfectly stable."""
    s = torch.full((d,), 0.998, dtype=F64)
    s[:4] = torch.tensor([1.003, 1.002, 1.0015, 1.001], dtype=F64)
    return s, np.log(s[:4].numpy())


def test_halves_test_alone_is_fooled_by_a_frame_stuck_in_the_bulk() -> None:
    s, _ = _slow_rotation_map()
    res = lyapunov_spectrum(lambda x: s * x, torch.ones(len(s), dtype=F64), 4, steps=400, warmup=0, tol=1e-3,
                            check_every=50, seed=3, jvp_fn=lambda x, Q, t: s[:, None] * Q)
    # "converged" at the bulk's exponent: why one frame's stability is not a test
    assert res.converged and res.steps <= 200
    np.testing.assert_allclose(res.exponents, math.log(0.998), atol=2e-4)


def test_two_frames_converge_to_the_closed_form_or_say_they_did_not() -> None:
    s, closed = _slow_rotation_map()
    d = len(s)
    q0 = torch.zeros(d, 4, dtype=F64)
    q0[:4] = torch.eye(4, dtype=F64)  # the warm start: the expanding axes themselves
    kw = dict(warmup=0, tol=1e-3, check_every=50, seed=3, q0=q0, twin_seed=4, jvp_fn=lambda x, Q, t: s[:, None] * Q)
    res = lyapunov_spectrum(lambda x: s * x, torch.ones(d, dtype=F64), 4, steps=4000, **kw)
    assert res.converged is True
    c = res.convergence
    assert c["test"] == "frames" and c["passed"] and c["frames"] == 2
    assert c["max_frame_difference"] <= 1e-3 and c["max_stderr"] <= 5e-4 and c["dimension_difference"] <= 1.0
    # the random twin needed hundreds of steps to leave the bulk; then both agree
    assert 600 <= res.steps < 4000 and c["burn_in"] == res.steps // 2
    np.testing.assert_allclose(res.exponents, closed, atol=1e-12)  # the warm frame is exact here
    np.testing.assert_allclose(c["frame_b"], closed, atol=1e-3)
    assert res.n_jvp == 2 * 4 * res.steps
    assert res.qr_methods == {"cholesky-qr2": 2 * res.steps}
    # capped before the twin arrives: reported as not converged, never as a measurement
    short = lyapunov_spectrum(lambda x: s * x, torch.ones(d, dtype=F64), 4, steps=300, **kw)
    assert short.converged is False and short.steps == 300
    assert short.convergence["max_frame_difference"] > 1e-3


def test_convergence_settings_are_checked() -> None:
    x0 = torch.zeros(4, dtype=F64)
    with pytest.raises(EstimatorError, match="tolerance"):
        lyapunov_spectrum(lambda x: x, x0, 2, steps=10, warmup=0, tol=-1.0)
    with pytest.raises(EstimatorError, match="check_every"):
        lyapunov_spectrum(lambda x: x, x0, 2, steps=10, warmup=0, tol=1e-3, check_every=0)
    with pytest.raises(EstimatorError, match="tol"):
        lyapunov_spectrum(lambda x: x, x0, 2, steps=10, warmup=0, twin_seed=1)


def test_float32_state_keeps_a_float32_frame() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 50, generator=g) / 10
    res = lyapunov_spectrum(lambda x: A @ x, torch.ones(50), 5, steps=40, warmup=10)
    assert res.Q.dtype == torch.float32
    ref = lyapunov_spectrum(lambda x: A.double() @ x, torch.ones(50, dtype=F64), 5, steps=40, warmup=10)
    np.testing.assert_allclose(res.exponents, ref.exponents, atol=1e-5)


@pytest.mark.parametrize("method", ["auto", "double-backward", "vmap", "loop"])
def test_one_graph_step_equals_gradient_and_dense_jacobian(digits, method: str) -> None:
    from sdcompress.estimator.lyapunov_sgd import sgd_step_and_tangents
    from sdcompress.linalg.dense import dense_hessian

    lm = load_model("mlp", widths=(64, 5, 10))
    floss = FunctionalLoss(lm.model.double(), loss_fn=lm.loss_fn)
    batch = tuple(t.double() if t.is_floating_point() else t for t in BatchStream(digits.train, 16, seed=0).batch(0))
    w = floss.params_vector()
    Q = torch.linalg.qr(torch.randn(floss.d, 3, generator=torch.Generator().manual_seed(1), dtype=F64))[0]
    lr, wd = 0.4, 0.02
    w1, Z = sgd_step_and_tangents(floss, batch, w, Q, lr=lr, weight_decay=wd, method=method, chunk_size=2)
    g = torch.func.grad(lambda x: floss(x, batch))(w)
    H = dense_hessian(floss, batch, w)
    torch.testing.assert_close(w1, w - lr * (g + wd * w), rtol=0, atol=1e-13)
    torch.testing.assert_close(Z, (1 - lr * wd) * Q - lr * H @ Q, rtol=0, atol=1e-12)


def test_lyapunov_sd_converges_on_the_quadratic_and_records_it() -> None:
    d, m = 8, 3
    U = _orthogonal(d, seed=4)
    model = _Quadratic(U, _A_EIGS.clone(), 0.0)  # a constant Jacobian: exponents ln|1 − ηa − η·wd|
    data = ArrayDataset({"inputs": torch.zeros(16, d, dtype=F64), "targets": torch.zeros(16, dtype=torch.long)}, "classification")
    floss = FunctionalLoss(model, loss_fn=lambda out, _targets: out)
    wd = 0.05
    cfg = _cfg(m, 400, 0, lyapunov_tol="auto", lyapunov_check_every=25, lyapunov_warm_start="jacobian", n_bootstrap=0)
    est = lyapunov_sd(floss, BatchStream(data, 4, seed=0), lr=_LR, weight_decay=wd, config=cfg)
    closed = np.sort(np.log(np.abs(1 - _LR * wd - _LR * _A_EIGS.numpy())))[::-1][:m]
    assert est.converged is True
    c = est.convergence
    tol = 0.5 * abs(math.log(1 - _LR * wd))
    assert c["tol"] == pytest.approx(tol) and c["test"] == "frames" and c["warm_start"] == "jacobian"
    assert c["steps"] < 400 and c["max_frame_difference"] <= tol
    # the warm start is J's top-|σ| eigenvectors: exact from the first step
    np.testing.assert_allclose(est.exponents, closed, atol=1e-8)
    np.testing.assert_allclose(est.extras["warm_start_log_stretch"], closed, atol=1e-8)
    # products: the warm start's Lanczos run plus 2m per step (the frame and its random twin)
    assert est.n_hvp == est.extras["warm_start_hvp"] + 2 * m * c["steps"] == c["hvp"]
    assert est.extras["n_grad"] == c["steps"]
    d_ = est.to_dict()
    assert d_["converged"] is True and d_["convergence"]["steps"] == c["steps"]


@pytest.mark.parametrize("warm", ["jacobian", "random"])
def test_lyapunov_sd_at_eos_is_not_called_converged_after_150_steps(digits, warm: str) -> None:
    """PAPER.md §8: on the digits MLP at EoS a frame needs ~1,000 steps. A 150-step cap must
    report "not converged", whichever frame is reported: the other one is started the other
    way (two random frames agreed at the bulk after 50 steps, before this test existed)."""
    from sdcompress.train import pretrained_builtin

    loaded, data, result = pretrained_builtin("mlp")
    cfg_t = result.to_dict()["config"]
    floss = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
    cfg = _cfg(8, 150, 0, lyapunov_tol="auto", lyapunov_warm_start=warm, lyapunov_check_every=50, n_bootstrap=0)
    est = lyapunov_sd(floss, BatchStream(data.train, 64, seed=1), lr=cfg_t["lr"], weight_decay=cfg_t["weight_decay"], config=cfg)
    assert est.converged is False
    c = est.convergence
    assert c["steps"] == 150 and not c["passed"] and c["warm_start"] == warm
    assert c["max_frame_difference"] > c["tol"] or not c["frame_b_halves"]["passed"] or c["max_stderr"] > c["tol"] / 2


def test_lyapunov_settings_are_refused_with_the_fix(digits) -> None:
    from sdcompress.estimator import EstimateConfig

    floss = FunctionalLoss(load_model("mlp", widths=(64, 4, 10)).model, loss_fn=nn.functional.cross_entropy)
    stream = BatchStream(digits.train, 8, seed=0)
    with pytest.raises(ConfigError, match="lyapunov_tol"):
        lyapunov_sd(floss, stream, lr=0.1, config=_cfg(2, 5, 1, lyapunov_tol="often"))
    with pytest.raises(ConfigError, match="lyapunov_warm_start"):
        lyapunov_sd(floss, stream, lr=0.1, config=_cfg(2, 5, 1, lyapunov_warm_start="ritz"))
    for bad in ({"lyapunov_tol": 0.0}, {"lyapunov_tol": "sometimes"}, {"lyapunov_check_every": 0},
                {"lyapunov_warm_start": "hessian"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            EstimateConfig(method="lyapunov", **bad).validate()


def test_frames_test_needs_the_dimensions_to_agree() -> None:
    from sdcompress.estimator.lyapunov import frames_test

    rng = np.random.default_rng(0)
    base = np.array([5e-4, 4e-4, 3e-4, 2e-4])
    # frame b: the same within 4e-4 per exponent, but its smaller ones turned negative
    a = base + 1e-5 * rng.standard_normal((400, 4))
    b = base - np.array([0.0, 5e-4, 9e-4, 9e-4]) + 1e-5 * rng.standard_normal((400, 4))
    res = frames_test(a, b, 1e-3)
    assert res["max_frame_difference"] < 1e-3 and res["max_stderr"] < 5e-4
    assert res["dimension_frame_a"] == 4.0 and res["dimension_frame_b"] < 3.0
    assert not res["passed"] and res["dimension_difference"] > 1.0
    assert frames_test(a, a + 1e-6, 1e-3)["passed"]


def test_convergence_plot_is_written(tmp_path) -> None:
    from sdcompress.estimator.plots import CONVERGENCE_PNG, plot_estimate

    d, m = 8, 3
    model = _Quadratic(_orthogonal(d, seed=4), _A_EIGS.clone(), 0.0)
    data = ArrayDataset({"inputs": torch.zeros(16, d, dtype=F64), "targets": torch.zeros(16, dtype=torch.long)}, "classification")
    floss = FunctionalLoss(model, loss_fn=lambda out, _targets: out)
    est = lyapunov_sd(floss, BatchStream(data, 4, seed=0), lr=_LR, weight_decay=0.05,
                      config=_cfg(m, 100, 0, lyapunov_tol="auto", lyapunov_check_every=25, n_bootstrap=0))
    paths = plot_estimate(est, tmp_path)
    assert tmp_path / CONVERGENCE_PNG in paths and (tmp_path / CONVERGENCE_PNG).stat().st_size > 1000
