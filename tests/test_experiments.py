"""Experiments (issue 6): rank statistics against scipy and hand-worked cases, and tiny
versions of every experiment so their code paths stay alive (and are deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from sdcompress.errors import ConfigError
from sdcompress.experiments.stats import correlation_table, granulated_kendall, kendall_tau


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=17).astype(float)  # many ties in both samples
    y = rng.integers(0, 5, size=17).astype(float)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    z = rng.normal(size=23)
    w = z + rng.normal(size=23)
    assert kendall_tau(z, w) == pytest.approx(kendalltau(z, w).statistic, abs=1e-12)


def test_kendall_tau_hand_worked():
    # one discordant pair of six: (4 + 1 concordant − 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # tie in x: P = 2, Q = 0, n0 = 3, n_x = 1 → 2 / sqrt(2·3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ConfigError, match="equal length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_granulated_kendall_hand_worked():
    lr = ["a", "b", "a", "b"]
    bs = [1, 1, 2, 2]
    measure = [1, 2, 3, 4]
    gap = [1, 2, 4, 3]
    gk = granulated_kendall(measure, gap, {"lr": lr, "batch_size": bs}, vary=("lr", "batch_size"))
    # ψ_lr: batch 1 gives τ = +1, batch 2 gives τ = −1 → 0; ψ_bs: both lr groups +1 → 1
    assert gk.psi == {"lr": 0.0, "batch_size": 1.0}
    assert gk.mean == 0.5
    assert gk.n_groups == {"lr": 2, "batch_size": 2}
    rows = correlation_table(
        [{"m": m, "g": g, "lr": a, "bs": b} for m, g, a, b in zip(measure, gap, lr, bs)],
        measures=["m"], gaps=["g"], factors=["lr", "bs"], vary=["lr", "bs"],
    )
    assert rows[0]["tau"] == pytest.approx(2 / 3)
    assert rows[0]["psi_lr"] == 0.0 and rows[0]["psi_bs"] == 1.0 and rows[0]["psi_mean"] == 0.5


def test_granulated_kendall_holds_seed_fixed():
    # two seeds: within each (batch, seed) group only lr varies
    runs = [(lr, s) for s in (0, 1) for lr in (0.1, 0.2, 0.3)]
    measure = [lr + 10 * s for lr, s in runs]
    gap = [-lr + 5 * s for lr, s in runs]  # anti-correlated within a seed, correlated across
    gk = granulated_kendall(measure, gap, {"lr": [r[0] for r in runs], "seed": [r[1] for r in runs]}, vary=["lr"])
    assert gk.psi["lr"] == pytest.approx(-1.0)
    assert kendall_tau(measure, gap) > 0
    with pytest.raises(ConfigError, match="missing"):
        granulated_kendall(measure, gap, {"lr": [r[0] for r in runs]}, vary=["batch_size"])
