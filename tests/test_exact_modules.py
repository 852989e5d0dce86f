"""Per-module SD and expansion share of the exact estimator (PAPER.md §8) against an
independent dense float64 eigendecomposition and a quadratic loss with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sdcompress.data import BatchStream, digits
from sdcompress.estimator import SDEstimate, estimate_sd, sharpness_dimension

F64 = torch.float64


class LayerNormNet(nn.Module):
    """16 (every 4th pixel) → 5 → LayerNorm → tanh → 10, float64 (d = 155)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(16, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 10)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x[:, ::4]))))


def _reference(model: nn.Module, batches, lr: float, wd: float) -> tuple[float, dict[str, float], dict[str, float]]:
    """Row-by-row double-backward Hessians, numpy eigh, own sorting, tie groups and weights."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    bounds = np.cumsum([0] + [p.numel() for p in params])
    per_batch, masses = [], []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
        H = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(g[i], params, retain_graph=True)])
                         for i in range(len(g))]).detach().numpy()
        alpha, U = np.linalg.eigh(0.5 * (H + H.T))
        lam = np.log(np.abs(1 - lr * wd - lr * alpha))
        order = np.argsort(-lam)
        per_batch.append(lam[order])
        masses.append(np.array([(U[lo:hi, order] ** 2).sum(axis=0) for lo, hi in zip(bounds[:-1], bounds[1:])]))
    lam_avg = np.mean(per_batch, axis=0)
    sd = sharpness_dimension(lam_avg)
    running = np.cumsum(lam_avg)
    j = int(np.sum(running >= 0)) if lam_avg[0] >= 0 else 0
    w = np.zeros(len(lam_avg))
    w[:j] = 1.0
    if j < len(w):
        w[j] = sd - j
    sd_b, ex_b = np.zeros(len(names)), np.zeros(len(names))
    for lam, mass in zip(per_batch, masses):
        wt = w.copy()
        i = 0
        while i < len(lam):  # groups of tied exponents share their mean weight
            k = i
            while k + 1 < len(lam) and lam[i] - lam[k + 1] <= 1e-9:
                k += 1
            wt[i : k + 1] = w[i : k + 1].mean()
            i = k + 1
        sd_b += mass @ wt
        ex_b += mass @ np.maximum(lam, 0)
    n = len(batches)
    return sd, dict(zip(names, sd_b / n)), dict(zip(names, ex_b / ex_b.sum()))


def test_module_sd_and_expansion_match_a_dense_float64_reference(tmp_path) -> None:
    model = LayerNormNet()
    stream = BatchStream(digits().train, 24, seed=0)
    batches = [(x.double(), y) for x, y in stream.take(3)]
    lr, wd = 2.0, 0.05
    est = estimate_sd(model, batches, lr=lr, weight_decay=wd, method="exact", n_batches=3, n_bootstrap=0)
    ref_sd, ref_sd_b, ref_ex_b = _reference(model, batches, lr, wd)
    assert est.sd == pytest.approx(ref_sd, abs=1e-8)
    assert 1 < est.sd < est.d - 1 and est.sd != int(est.sd)  # a fractional weight is in play
    names = [n for n, _ in model.named_parameters()]
    assert list(est.module_sd) == names and list(est.module_expansion) == names
    for n in names:
        assert est.module_sd[n] == pytest.approx(ref_sd_b[n], abs=1e-8), n
        assert est.module_expansion[n] == pytest.approx(ref_ex_b[n], abs=1e-8), n
    assert sum(est.module_sd.values()) == pytest.approx(est.sd, abs=1e-8)
    assert sum(est.module_expansion.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(v >= -1e-12 for v in est.module_expansion.values())
    sizes = est.extras["param_sizes"]
    assert sizes == {n: p.numel() for n, p in model.named_parameters()}
    # saved into estimates.json under those names, and read back
    est.save(tmp_path)
    back = SDEstimate.load(tmp_path)
    assert back.module_sd == est.module_sd and back.module_expansion == est.module_expansion


class TwoBlockQuadratic(nn.Module):
    """L(w) = ½ w₁ᵀA₁w₁ + ½ w₂ᵀA₂w₂: each block's eigenvectors live in that block."""

    def __init__(self, eigs1: list[float], eigs2: list[float]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        blocks = []
        for eigs in (eigs1, eigs2):
            Q = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=F64))[0]
            blocks.append(Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T)
        self.register_buffer("A", torch.block_diag(*blocks))
        self.first = nn.Parameter(torch.linspace(-1, 1, len(eigs1), dtype=F64))
        self.second = nn.Parameter(torch.linspace(1, 2, len(eigs2), dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first, self.second])


def test_quadratic_known_answer() -> None:
    # η = 0.5: exponents ln|1 − α/2|. Block 1: 6.0 → ln 2, 0.5 → ln 0.75, 0.0 → 0;
    # block 2: 4.5 → ln 1.25, −0.3 → ln 1.15, 0.1 → ln 0.95, 0.2 → ln 0.9, 1.0 → ln 0.5.
    # Sorted: ln 2, ln 1.25, ln 1.15, 0, ln .95, ln .9, ln .75 | ln .5: running sums stay ≥ 0
    # for 7 exponents, so j* = 7 and SD = 7 + S₇/ln 2. All of block 1 is counted (weight 1),
    # block 2 gets its 4 leading directions plus the fraction SD − 7 of the 1.0 direction.
    model = TwoBlockQuadratic([6.0, 0.5, 0.0], [4.5, -0.3, 0.1, 0.2, 1.0])
    loss_fn = lambda w, _: 0.5 * w @ model.A @ w  # noqa: E731
    batches = [(torch.zeros(1, 1, dtype=F64), torch.zeros(1))]
    est = estimate_sd(model, batches, lr=0.5, method="exact", n_batches=2, loss_fn=loss_fn, n_bootstrap=0)
    s7 = math.log(2) + math.log(1.25) + math.log(1.15) + math.log(0.95) + math.log(0.9) + math.log(0.75)
    sd = 7 + s7 / math.log(2)
    assert est.sd == pytest.approx(sd, abs=1e-10)
    assert est.module_sd["first"] == pytest.approx(3.0, abs=1e-10)
    assert est.module_sd["second"] == pytest.approx(sd - 3.0, abs=1e-10)
    pos = math.log(2) + math.log(1.25) + math.log(1.15)
    assert est.module_expansion["first"] == pytest.approx(math.log(2) / pos, abs=1e-10)
    assert est.module_expansion["second"] == pytest.approx((math.log(1.25) + math.log(1.15)) / pos, abs=1e-10)


def test_no_expansion_gives_no_expansion_share() -> None:
    # η = 0.5 and 0 < α < 4: every |1 − ηα| < 1, every exponent negative, SD = 0
    model = TwoBlockQuadratic([1.0, 2.0], [0.5, 3.0])
    loss_fn = lambda w, _: 0.5 * w @ model.A @ w  # noqa: E731
    batches = [(torch.zeros(1, 1, dtype=F64), torch.zeros(1))]
    est = estimate_sd(model, batches, lr=0.5, method="exact", n_batches=1, loss_fn=loss_fn, n_bootstrap=0)
    assert est.sd == 0.0
    assert est.module_sd == {"first": 0.0, "second": 0.0}
    assert est.module_expansion is None


def test_report_shows_the_per_module_table_and_the_lyapunov_verdict() -> None:
    from sdcompress.report.render import lyapunov_convergence_lines, module_share_lines

    model = TwoBlockQuadratic([6.0, 0.5, 0.0], [4.5, -0.3, 0.1, 0.2, 1.0])
    loss_fn = lambda w, _: 0.5 * w @ model.A @ w  # noqa: E731
    est = estimate_sd(model, [(torch.zeros(1, 1, dtype=F64), torch.zeros(1))], lr=0.5, method="exact", n_batches=1,
                      loss_fn=loss_fn, n_bootstrap=0)
    lines = module_share_lines(est.to_dict())
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:6]] for ln in lines if ln.startswith("| first") or ln.startswith("| second")}
    assert rows["first"] == ["3.00", f"{3.0 / est.sd:.3f}", f"{est.module_expansion['first']:.3f}", f"{3 / 8:.3f}"]
    assert rows["second"][3] == f"{5 / 8:.3f}"
    assert module_share_lines({"module_sd": None}) == []
    ok = {"converged": True, "sd": 16.0, "lower_bound": True,
          "convergence": {"steps": 1500, "test": "frames", "tol": 1e-3, "max_frame_difference": 2e-4, "hvp": 48052}}
    assert "converged after 1500 steps" in lyapunov_convergence_lines(ok)[1] and "D_Λ = ≥ 16.0" in lyapunov_convergence_lines(ok)[1]
    bad = {**ok, "converged": False, "convergence": {**ok["convergence"], "steps": 50}}
    assert "NOT converged within 50 steps" in lyapunov_convergence_lines(bad)[1]
    assert lyapunov_convergence_lines({"converged": None}) == []
