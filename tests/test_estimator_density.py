"""SD-SLQ, SD-KDE and SD-PS against exact SD on the digits MLP at the edge of stability,
and the effect of each choice the paper leaves open (ε, bandwidth, bins, M, grid).

Setting (PAPER.md §7 at laptop scale): the no-bias ReLU MLP 64-16-16-10 (d = 1,440) on
scikit-learn digits, plain SGD with η = 0.5 and weight decay 0.01 for 60 epochs, so
λ_max(H_B) hovers at 2/η. Exact SD comes from dense Hessians of 8 minibatches; the
density methods use the same 8 minibatches (24 SLQ runs cycle through them, three
probes per batch) so that the comparison measures the estimator, not batch sampling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdcompress.data import BatchStream, digits
from sdcompress.estimator import EstimateConfig, estimate_sd, sharpness_dimension
from sdcompress.estimator.density import cell_mean_exponent, from_u, step_exponent, to_u
from sdcompress.estimator.density_sd import density_estimate
from sdcompress.estimator.exact import minibatch_eigenvalues, sorted_exponents
from sdcompress.linalg import hessian_slq
from sdcompress.models import MLP, FunctionalLoss

LR, WD = 0.5, 0.01
N_BATCHES, RUNS, STEPS = 8, 24, 50


@pytest.fixture(scope="module")
def eos():
    data = digits()
    torch.manual_seed(0)
    model = MLP((64, 16, 16, 10))
    stream = BatchStream(data.train, 64, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD)
    for t in range(60 * stream.steps_per_epoch):
        x, y = stream.batch(t)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batches = BatchStream(data.train, 64, seed=1).take(N_BATCHES)
    floss = FunctionalLoss(model)
    evs = minibatch_eigenvalues(floss, lambda i: batches[i], N_BATCHES, chunk_size=256)
    exact = {wd: sharpness_dimension(sorted_exponents(evs, LR, wd).mean(axis=0)) for wd in (0.0, WD)}
    measure = hessian_slq(floss, lambda i: batches[i % N_BATCHES], RUNS, STEPS, seed=0)
    return dict(model=model, batches=batches, evs=evs, exact=exact, measure=measure, d=floss.d)


def density_sd(eos, method: str, wd: float = WD, **settings) -> float:
    cfg = EstimateConfig(n_bootstrap=0, **settings)
    return density_estimate(eos["measure"], method, lr=LR, weight_decay=wd, config=cfg).sd


def test_the_model_is_at_the_edge_of_stability_and_sd_is_well_below_d_only_with_weight_decay(eos):
    assert eos["evs"][:, -1].mean() >= 0.95 * 2 / LR  # mean top minibatch eigenvalue ≈ 2/η
    assert (eos["evs"][:, 0] < 0).all()  # saddle directions in every minibatch Hessian
    assert eos["exact"][0.0] / eos["d"] > 0.95  # PAPER.md §7: SD ≈ d without weight decay
    assert eos["exact"][WD] / eos["d"] < 0.6  # and far below d with it


@pytest.mark.parametrize("method", ["slq", "kde", "ps"])
def test_density_sd_within_ten_percent_of_exact_for_fewer_hvps(eos, method):
    est = estimate_sd(eos["model"], eos["batches"], lr=LR, weight_decay=WD, method=method,
                      slq_runs=RUNS, lanczos_steps=STEPS, n_bootstrap=100)
    exact = eos["exact"][WD]
    assert abs(est.sd / exact - 1) < 0.10, (method, est.sd, exact)
    assert est.n_hvp == RUNS * STEPS < N_BATCHES * eos["d"]  # exact costs d HVPs per batch
    assert est.sd_interval[0] <= est.sd <= est.sd_interval[1]
    assert est.sd_interval[1] - est.sd_interval[0] > 0
    # the same measure through density_estimate gives the same number (estimate_sd cycles the list)
    assert est.sd == pytest.approx(density_sd(eos, method), rel=1e-9)
    # without weight decay (same point, same spectrum): SD ≈ d, and still within 10%
    assert abs(density_sd(eos, method, wd=0.0) / eos["exact"][0.0] - 1) < 0.10


def test_eps_must_stay_far_below_eta_wd(eos):
    exact = eos["exact"][WD]
    base = density_sd(eos, "kde", eps=1e-8)
    assert abs(density_sd(eos, "kde", eps=1e-10) - base) < 1e-3 * exact
    assert abs(density_sd(eos, "kde", eps=0.0) - base) < 1e-3 * exact
    # every neutral exponent gains ≈ ε: ε = 1e-3 (a fifth of η·wd) inflates SD
    assert density_sd(eos, "kde", eps=1e-3) > 1.15 * exact
    assert density_sd(eos, "kde", eps=1e-4) > base


def test_bandwidth_inflates_sd_as_it_grows(eos):
    exact = eos["exact"][WD]
    values = [density_sd(eos, "kde", bandwidth=h) for h in (0.02, 0.05, 0.1, 0.3, 1.0)]
    assert max(values[:3]) - min(values[:3]) < 0.02 * exact  # small widths agree
    assert values[1] <= values[3] <= values[4]
    assert values[4] > 1.2 * exact
    wide = density_estimate(eos["measure"], "kde", lr=LR, weight_decay=WD, config=EstimateConfig(n_bootstrap=0, bandwidth="silverman"))
    assert wide.extras["bandwidth_u"] > 0.5 and wide.sd > 1.15 * exact  # Silverman is far too wide here


def test_histogram_bins_and_the_linear_outer_grid(eos):
    exact = eos["exact"][WD]
    coarse, default, fine = (density_sd(eos, "slq", n_bins=b) for b in (64, 256, 1024))
    assert coarse > default > fine - 1e-3 * exact and abs(fine / exact - 1) < 0.03
    # a purely logarithmic grid (c → ∞) smears the outliers beyond 2/η upward
    log_only = density_sd(eos, "kde", bandwidth=0.3, density_linear=1e6)
    log_linear = density_sd(eos, "kde", bandwidth=0.3)
    assert log_only > log_linear + 0.05 * exact


def test_pseudo_spectrum_mean_groups_are_stable_in_m_and_quantile_midpoints_are_not(eos):
    exact = eos["exact"][WD]
    kde = density_sd(eos, "kde")
    for M in (10, 100, 1000):
        assert density_sd(eos, "ps", n_quantiles=M) == pytest.approx(kde, rel=5e-3)
    q = {M: density_sd(eos, "ps", n_quantiles=M, ps_representative="quantile") for M in (10, 100, 1000)}
    assert q[10] < 0.6 * exact < q[100] < q[1000]  # the paper's midpoints: biased at small M
    assert abs(q[1000] / exact - 1) < 0.10
    est = density_estimate(eos["measure"], "ps", lr=LR, weight_decay=WD, config=EstimateConfig(n_bootstrap=0, n_quantiles=100))
    assert len(est.exponents) == 100 and np.allclose(est.weights, eos["d"] / 100)
    assert est.sd == pytest.approx(sharpness_dimension(est.exponents, est.weights))
    # M larger than d is clipped to d (a quantile never stands for less than one eigenvalue)
    big = density_estimate(eos["measure"], "ps", lr=LR, weight_decay=WD, config=EstimateConfig(n_bootstrap=0, n_quantiles=5000))
    assert len(big.exponents) == eos["d"]


def test_grid_transform_and_cell_exponents_are_exact():
    alpha = np.array([-50.0, -0.3, -1e-9, 0.0, 1e-7, 3e-3, 2.0, 1e4])
    s, c = 1e-6, 1.0
    np.testing.assert_allclose(from_u(to_u(alpha, s, c), s, c), alpha, rtol=1e-12, atol=1e-18)
    assert np.all(np.diff(to_u(alpha, s, c)) > 0)
    # the cell mean of g equals a fine quadrature, including a cell across the singularity
    lr, wd, eps = 0.5, 0.01, 1e-8
    lo, hi = np.array([0.1, 1.5, 1.97, -0.2]), np.array([0.2, 2.5, 1.99, 0.3])
    fine = [step_exponent(np.linspace(a, b, 2_000_001), lr, wd, eps).mean() for a, b in zip(lo, hi)]
    np.testing.assert_allclose(cell_mean_exponent(lo, hi, lr, wd, eps), fine, atol=2e-5)
