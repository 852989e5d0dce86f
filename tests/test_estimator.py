"""Sharpness exponents and SD: Kaplan–Yorke by hand, known answers on a quadratic loss,
exact SD against a dense float64 reference, estimate_sd on tiny-gpt2, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sdcompress.data import BatchStream, digits, pydoc
from sdcompress.errors import ConfigError, EstimatorError, ModelError
from sdcompress.estimator import EstimateConfig, SDEstimate, critical_index, estimate_sd, sharpness_dimension
from sdcompress.models import MLP, tiny_gpt2

# --- Kaplan–Yorke by hand -------------------------------------------------------------


def test_sharpness_dimension_hand_worked():
    assert sharpness_dimension([1.0, -0.5, -2.0]) == pytest.approx(2.25)  # S_2 = 0.5, |λ_3| = 2
    # running sums 0.5, 0.7, 0.6, 0.3, -0.7: j* = 4 (not the 2 positive exponents)
    lam = [0.5, 0.2, -0.1, -0.3, -1.0]
    assert critical_index(lam) == 4
    assert sharpness_dimension(lam) == pytest.approx(4.3)
    # the popular wrong formula k + |λ_{k+1}|/|λ_k| with k = #positive would give 2.5
    assert sharpness_dimension(lam) != pytest.approx(2 + 0.1 / 0.2)


def test_sharpness_dimension_edge_cases():
    assert sharpness_dimension([-0.1, -0.2]) == 0.0 and critical_index([-0.1, -0.2]) == 0  # j* = 0
    assert sharpness_dimension([0.3, 0.0, -0.2]) == 3.0 and critical_index([0.3, 0.0, -0.2]) == 3  # j* = d
    assert sharpness_dimension([0.0, 0.0]) == 2.0  # all neutral: running sum stays 0 ≥ 0
    with pytest.raises(ValueError, match="decreasing"):
        sharpness_dimension([-1.0, 1.0])


def test_sharpness_dimension_with_weights():
    # groups of 2, 3, 1 directions: running sums 0.6, 0.3, -0.1 → j* = 2 groups,
    # SD = 2 + 3 + 0.3 / 0.4
    assert sharpness_dimension([0.3, -0.1, -0.4], weights=[2, 3, 1]) == pytest.approx(5.75)
    # integer weights equal the expanded spectrum
    expanded = [0.3, 0.3, -0.1, -0.1, -0.1, -0.4]
    assert sharpness_dimension([0.3, -0.1, -0.4], weights=[2, 3, 1]) == pytest.approx(sharpness_dimension(expanded))
    assert sharpness_dimension([0.3, -0.1], weights=[1.5, 2.5]) == 4.0


# --- a quadratic loss: SGD is the linear map I − ηA --------------------------------


class Quadratic(nn.Module):
    """L(w) = ½ wᵀ A w for every batch (inputs ignored): H = A everywhere."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.w = nn.Parameter(torch.linspace(-1, 1, len(A), dtype=A.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


LR = 0.5  # 2/η = 4
EIGS = [-0.8, -0.3, -0.05] + [0.0] * 5 + [0.02 * i for i in range(1, 25)] + [1.7, 2.05, 2.3, 4.5, 6.0]


@pytest.fixture(scope="module")
def quadratic():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(len(EIGS), len(EIGS), generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.tensor(EIGS, dtype=torch.float64)) @ Q.T
    model = Quadratic(0.5 * (A + A.T))
    loss_fn = lambda w, _: 0.5 * w @ model.A @ w  # noqa: E731
    batches = [(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))]
    return model, loss_fn, batches


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_exact_exponents_of_a_quadratic_are_sorted_log_one_minus_eta_a(quadratic, wd):
    model, loss_fn, batches = quadratic
    est = estimate_sd(model, batches * 2, lr=LR, weight_decay=wd, method="exact", loss_fn=loss_fn)  # a list: each once
    expected = np.sort(np.log(np.abs(1 - LR * wd - LR * np.array(EIGS))))[::-1]
    np.testing.assert_allclose(est.exponents, expected, atol=1e-10)
    assert est.sd == pytest.approx(sharpness_dimension(expected), abs=1e-9)
    assert est.n_hvp == 2 * len(EIGS) and est.d == len(EIGS)
    assert est.extras["top_eigenvalue"] == pytest.approx(6.0, abs=1e-10)
    assert est.extras["trace"] == pytest.approx(sum(EIGS), abs=1e-10)
    assert est.extras["n_edge"] == 2  # α > 2/η = 4
    assert est.n_neutral == 5  # the zero eigenvalues, whose exponent is ln|1 − η·wd|


def test_density_methods_on_a_quadratic_are_within_their_resolution(quadratic):
    """Same operator every run, full Krylov space: Ritz values are the eigenvalues, and the
    only error is the probe weights τ (about ±√(2/(d·runs)) per eigenvalue)."""
    model, loss_fn, batches = quadratic
    expected = sharpness_dimension(np.sort(np.log(np.abs(1 - LR * np.array(EIGS))))[::-1])
    for method in ("slq", "kde", "ps"):
        est = estimate_sd(model, batches, lr=LR, method=method, slq_runs=60, lanczos_steps=len(EIGS), loss_fn=loss_fn, n_bootstrap=0)
        assert abs(est.sd - expected) <= 1.0, (method, est.sd, expected)  # one eigenvalue's worth
        assert est.extras["top_eigenvalue"] == pytest.approx(6.0, abs=1e-8)


# --- exact SD on a tiny MLP against a dense float64 eigendecomposition ------------------


def reference_exact_sd(model: nn.Module, batches, lr: float, wd: float) -> tuple[float, np.ndarray]:
    """Dense float64 Hessians by double backward, one row at a time (independent of the
    library's jacrev path), then eigh, ln|1 − η·wd − ηα|, sort, average, Kaplan–Yorke."""
    params = [p for p in model.parameters()]
    rows = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
        H = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads[i], params, retain_graph=True)])
                         for i in range(len(grads))])
        alpha = torch.linalg.eigh(0.5 * (H + H.T))[0].numpy()
        rows.append(np.sort(np.log(np.abs(1 - lr * wd - lr * alpha)))[::-1])
    lam = np.mean(rows, axis=0)
    return sharpness_dimension(lam), lam


def test_exact_sd_of_a_tiny_mlp_matches_a_dense_float64_reference():
    torch.manual_seed(0)
    model = MLP((64, 4, 10)).double()
    stream = BatchStream(digits().train, 24, seed=0)
    batches = [(x.double(), y) for x, y in stream.take(3)]
    est = estimate_sd(model, batches, lr=2.0, weight_decay=0.05, method="exact", n_batches=3)
    ref_sd, ref_lam = reference_exact_sd(model, batches, 2.0, 0.05)
    np.testing.assert_allclose(est.exponents, ref_lam, atol=1e-10)
    assert est.sd == pytest.approx(ref_sd, abs=1e-8)
    assert 0 < est.sd < est.d and est.sd_interval is not None
    assert est.sd_interval[0] <= est.sd <= est.sd_interval[1] + 1e-9
    # a float32 model asked to compute in float64 gives the same numbers, and is not changed
    model32 = MLP((64, 4, 10))
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    est64 = estimate_sd(model32, stream, lr=2.0, weight_decay=0.05, method="exact", n_batches=3, dtype="float64")
    assert est64.sd == pytest.approx(ref_sd, abs=1e-4)
    assert next(model32.parameters()).dtype == torch.float32


# --- estimate_sd on tiny-gpt2 ------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt():
    model = tiny_gpt2(seed=0, n_layer=1, n_embd=16, n_head=2, block_size=16).eval()
    stream = BatchStream(pydoc(block_size=16).train, 4, seed=0)
    return model, stream


@pytest.mark.parametrize("method", ["exact", "slq", "kde", "ps", "lyapunov"])
def test_estimate_sd_on_tiny_gpt2_with_every_method(gpt, method, tmp_path):
    model, stream = gpt
    kw = dict(slq_runs=3, lanczos_steps=8, n_batches=2, lyapunov_exponents=3, lyapunov_steps=5, lyapunov_warmup=1, n_bootstrap=20)
    params = ["transformer.h.0.attn.c_proj"] if method == "exact" else None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    est = estimate_sd(model, stream, lr=0.3, method=method, weight_decay=0.01, params=params, **kw)
    n_all = sum(p.numel() for p in model.parameters())
    assert est.method == method
    assert est.d == (16 * 16 + 16 if method == "exact" else n_all)
    assert est.n_hvp > 0 and est.wall_time_s > 0 and math.isfinite(est.sd)
    assert 0 <= est.sd <= est.d
    lam = np.asarray(est.exponents)
    assert np.all(np.diff(lam) <= 1e-12)  # sorted decreasing
    if not est.lower_bound:
        assert est.sd == pytest.approx(sharpness_dimension(lam, est.weights), abs=1e-9)
        assert est.j_star == critical_index(lam, est.weights)
    if method in ("slq", "kde", "ps"):
        assert est.n_hvp == 3 * 8 and est.weights.sum() == pytest.approx(est.d, rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    est.save(tmp_path)
    again = SDEstimate.load(tmp_path)
    assert again.sd == pytest.approx(est.sd) and again.method == method and again.d == est.d


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimate_sd_on_cuda_matches_cpu(gpt):
    model, stream = gpt
    cpu = estimate_sd(model, stream, lr=0.3, method="ps", slq_runs=2, lanczos_steps=6, n_bootstrap=0, dtype="float64")
    gpu_model = tiny_gpt2(seed=0, n_layer=1, n_embd=16, n_head=2, block_size=16).eval().cuda()
    gpu = estimate_sd(gpu_model, stream, lr=0.3, method="ps", slq_runs=2, lanczos_steps=6, n_bootstrap=0, dtype="float64")
    assert gpu.sd == pytest.approx(cpu.sd, rel=1e-6)


# --- batches and bad input ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mlp():
    torch.manual_seed(1)
    return MLP((64, 4, 10)), BatchStream(digits().train, 16, seed=0)


def test_batches_from_a_short_list_an_iterator_or_a_single_batch(small_mlp, caplog):
    model, stream = small_mlp
    batches = stream.take(2)
    # a list is used as given: 4 runs over 2 batches = 2 runs each, in the order 0, 1, 0, 1
    from_list = estimate_sd(model, batches, lr=0.5, method="slq", slq_runs=4, lanczos_steps=5, n_bootstrap=0)
    from_iter = estimate_sd(model, iter(batches * 2), lr=0.5, method="slq", slq_runs=4, lanczos_steps=5, n_bootstrap=0)
    assert from_iter.sd == pytest.approx(from_list.sd)
    assert "cyclically" not in caplog.text
    single = estimate_sd(model, batches[0], lr=0.5, method="exact", n_batches=2, n_bootstrap=0)
    one = estimate_sd(model, [batches[0]], lr=0.5, method="exact", n_batches=1, n_bootstrap=0)
    np.testing.assert_allclose(single.exponents, one.exponents, atol=1e-6)
    assert single.settings["n_batches"] == 1  # one batch given: used once


def test_bad_input_gives_one_clear_error_each(small_mlp):
    model, stream = small_mlp
    for lr in (0.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
            estimate_sd(model, stream, lr=lr)
    with pytest.raises(ConfigError, match="weight_decay must be a finite number ≥ 0"):
        estimate_sd(model, stream, lr=0.1, weight_decay=-1.0)
    with pytest.raises(EstimatorError, match="empty"):
        estimate_sd(model, [], lr=0.1)
    with pytest.raises(EstimatorError, match="empty"):
        estimate_sd(model, iter([]), lr=0.1)
    with pytest.raises(ModelError, match=r"matches no parameter.*layers\.0\.weight"):
        estimate_sd(model, stream, lr=0.1, params=["encoder.nothing"])
    with pytest.raises(ConfigError, match="n_quantiles must be an integer ≥ 1, got 0"):
        estimate_sd(model, stream, lr=0.1, n_quantiles=0)
    with pytest.raises(ConfigError, match="lanczos_steps must be an integer ≥ 1, got -3"):
        estimate_sd(model, stream, lr=0.1, lanczos_steps=-3)
    with pytest.raises(ConfigError, match="method must be one of"):
        estimate_sd(model, stream, lr=0.1, method="hutchinson")
    with pytest.raises(ConfigError, match=r"unknown estimator setting\(s\) \['slq_steps'\]"):
        estimate_sd(model, stream, lr=0.1, slq_steps=3)
    with pytest.raises(EstimatorError, match=r"d = 296 .*GiB.*method='slq'.*params"):
        estimate_sd(model, stream, lr=0.1, method="exact", max_dense_params=100)
    dropout = nn.Sequential(nn.Linear(64, 10), nn.Dropout(0.5)).train()
    with pytest.raises(ModelError, match="dropout"):
        estimate_sd(dropout, stream, lr=0.1)


def test_config_validation_and_overrides():
    cfg = EstimateConfig()
    assert cfg.validate() is cfg and cfg.method == "ps"
    assert cfg.with_overrides(slq_runs=5).slq_runs == 5 and cfg.slq_runs == 32
    for bad in (dict(eps=-1.0), dict(bandwidth=0.0), dict(bandwidth="scott"), dict(grid_size=1000, n_bins=256),
                dict(dtype="float16"), dict(hvp_method="magic"), dict(confidence=1.5), dict(lyapunov_warmup=200)):
        with pytest.raises(ConfigError):
            cfg.with_overrides(**bad).validate()
