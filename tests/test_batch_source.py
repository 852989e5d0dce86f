"""One batch source for every estimator; a finite list of batches is used as given (issue #9, part 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sdcompress.errors import EstimatorError
from sdcompress.estimator import BatchSource, EstimateConfig, estimate_sd


def _ln_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


def _batches(n: int, size: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _dense_hessian(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Reference: the float64 Hessian by double backward through torch.func.functional_call."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts, start = {}, 0
        for n, s in zip(names, shapes):
            k = int(torch.Size(s).numel())
            parts[n] = w[start:start + k].view(s)
            start += k
        x, y = batch
        return nn.functional.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss, w0)


def _kaplan_yorke(lam: np.ndarray) -> float:
    """SD by hand: j* = the largest j with λ_1 + … + λ_j ≥ 0; SD = j* + S_j* / |λ_{j*+1}|."""
    s = np.cumsum(lam)
    j = int(np.max(np.nonzero(s >= 0)[0]) + 1) if s[0] >= 0 else 0
    if j == len(lam):
        return float(j)
    return j + (s[j - 1] if j else 0.0) / abs(lam[j])


def test_exact_over_a_three_batch_list_equals_the_dense_average_over_exactly_those_batches():
    model, batches = _ln_model(), _batches(3)
    hessians = [_dense_hessian(model, b) for b in batches]
    eig = np.stack([torch.linalg.eigvalsh(H).numpy() for H in hessians])  # (3, d)
    d = eig.shape[1]
    lr, wd = 2.5 / eig[:, -1].mean(), 1e-2  # beyond 2/λ_max: some directions expand
    per_batch = -np.sort(-np.log(np.abs(1 - lr * wd - lr * eig)), axis=1)
    reference = _kaplan_yorke(per_batch.mean(axis=0))  # the plain average over exactly the three batches
    # the old behaviour cycled the list to n_batches = 20 draws (weights 7/7/6): a different number
    cycled = _kaplan_yorke((7 * per_batch[0] + 7 * per_batch[1] + 6 * per_batch[2]) / 20)
    assert abs(cycled - reference) > 1e-6 and 1 < reference < d

    est = estimate_sd(model, batches, lr=lr, weight_decay=wd, method="exact", n_bootstrap=0)
    assert est.sd == pytest.approx(reference, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(est.exponents, per_batch.mean(axis=0), rtol=1e-9, atol=1e-12)
    assert est.settings["n_batches"] == 3 and est.n_hvp == 3 * d
    assert est.settings["batches"] == "a list of 3 batches, each used as given"
    assert len(est.extras["per_batch_sd"]) == 3


def test_slq_gives_every_batch_of_a_list_the_same_number_of_runs(monkeypatch):
    import sdcompress.estimator.estimate as estimate_module

    model, batches = _ln_model(), _batches(3)
    seen: list[int] = []
    real = estimate_module.hessian_slq

    def spy(floss, batch_for_run, n_runs, *args, **kwargs):
        for r in range(n_runs):
            b = batch_for_run(r)
            seen.append(next(i for i, (x, _) in enumerate(batches) if torch.equal(b[0], x)))
        return real(floss, batch_for_run, n_runs, *args, **kwargs)

    monkeypatch.setattr(estimate_module, "hessian_slq", spy)
    est = estimate_sd(model, batches, lr=0.5, method="ps", slq_runs=4, lanczos_steps=6, n_bootstrap=0)
    assert est.settings["slq_runs"] == 6  # rounded up to a multiple of 3
    assert seen == [0, 1, 2, 0, 1, 2] and [seen.count(i) for i in range(3)] == [2, 2, 2]
    seen.clear()
    est = estimate_sd(model, batches, lr=0.5, method="ps", slq_runs=6, lanczos_steps=6, n_bootstrap=0)
    assert est.settings["slq_runs"] == 6 and seen == [0, 1, 2, 0, 1, 2]


def test_a_list_is_never_cycled_silently():
    model, batches = _ln_model(), _batches(3)
    with pytest.raises(EstimatorError, match="got 3 batches for 5 Lyapunov steps"):
        estimate_sd(model, batches, lr=0.5, method="lyapunov", lyapunov_steps=5, lyapunov_warmup=1, lyapunov_exponents=2)
    with pytest.raises(EstimatorError, match="exhausted after 3 batches"):
        estimate_sd(model, iter(batches), lr=0.5, method="exact", n_batches=4, n_bootstrap=0)
    with pytest.raises(EstimatorError, match="empty"):
        estimate_sd(model, [], lr=0.5)
    with pytest.raises(EstimatorError, match="empty"):
        estimate_sd(model, iter([]), lr=0.5)
    # an iterator is a stream: exact draws n_batches of it, in order
    est = estimate_sd(model, iter(batches), lr=0.5, method="exact", n_batches=2, n_bootstrap=0)
    ref = estimate_sd(model, batches[:2], lr=0.5, method="exact", n_bootstrap=0)
    assert est.sd == ref.sd and est.settings["n_batches"] == 2


def test_lyapunov_follows_a_list_as_its_trajectory():
    model, batches = _ln_model(), _batches(6)
    kw = dict(lr=0.5, method="lyapunov", lyapunov_steps=4, lyapunov_warmup=1, lyapunov_exponents=2, n_bootstrap=0)
    a = estimate_sd(model, batches, **kw)
    b = estimate_sd(model, batches[:4], **kw)
    np.testing.assert_array_equal(a.exponents, b.exponents)


def test_batch_source_rules():
    batches = _batches(3)
    src = BatchSource(batches, "cpu", torch.float32)
    assert src.finite and src.size == 3 and src(1)[0].dtype == torch.float32 and src(1)[1].dtype == torch.int64
    assert src(1) is src(1)  # the last batch is kept (Lyapunov asks twice per step)
    assert src.n_exact(20) == 3 and src.n_runs(32) == 33 and src.n_runs(3) == 3
    assert [int(src.for_run(r)[1][0]) for r in range(6)] == [int(src(r % 3)[1][0]) for r in range(6)]
    with pytest.raises(EstimatorError, match="batch 4 asked of a list of 3"):
        src(3)
    one = BatchSource(batches[0], "cpu")
    assert one.size == 1 and one.n_runs(5) == 5 and one.for_run(4)[0] is batches[0][0]
    with pytest.raises(EstimatorError, match="must be a BatchStream"):
        BatchSource(3, "cpu")  # type: ignore[arg-type]
    from sdcompress.data import BatchStream, digits

    stream = BatchStream(digits().train, 8, seed=0)
    s = BatchSource(stream, "cpu")
    assert not s.finite and s.n_exact(7) == 7 and s.n_runs(5) == 5
    assert torch.equal(s(4)[0], stream.batch(4)[0])


def test_the_estimators_have_one_batch_source():
    import ast
    from pathlib import Path

    import sdcompress.estimator.estimate as estimate_module
    import sdcompress.estimator.lyapunov_sgd as lyapunov_sgd

    assert estimate_module.BatchSource is BatchSource and lyapunov_sgd.BatchSource is BatchSource
    pkg = Path(estimate_module.__file__).parents[1]
    classes = [f"{p.relative_to(pkg)}:{n.name}" for p in pkg.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.ClassDef) and "BatchSource" in n.name]
    assert classes == ["estimator/batches.py:BatchSource"]


def test_frozen_estimates_are_not_changed_in_place(monkeypatch):
    import sdcompress.estimator.estimate as estimate_module

    made = []
    real = estimate_module.density_estimate

    def keep(*args, **kwargs):
        est = real(*args, **kwargs)
        made.append((est, dict(est.settings)))
        return est

    monkeypatch.setattr(estimate_module, "density_estimate", keep)
    model = _ln_model()
    est = estimate_sd(model, _batches(2), lr=0.5, method="ps", slq_runs=2, lanczos_steps=5, n_bootstrap=0)
    inner, settings_then = made[0]
    assert inner.settings == settings_then  # the estimator's own result was left as it was
    assert est is not inner and est.settings["batches"].startswith("a list of 2") and "n_batches" in est.settings
    assert math.isfinite(est.sd)


def test_the_tracker_passes_its_fixed_batches_as_given():
    from sdcompress.callback import SDTracker

    model, batches = _ln_model(), _batches(3)
    tracker = SDTracker(model, batches, lr=0.5, every=1, sharpness_steps=4,
                        estimate=EstimateConfig(method="exact", n_batches=20, n_bootstrap=0))
    record = tracker.measure()
    ref = estimate_sd(model, batches, lr=0.5, method="exact", n_bootstrap=0)  # each of the 3 batches once
    assert record["sd"] == pytest.approx(ref.sd, rel=1e-12)


def test_too_many_lyapunov_exponents_are_named_as_the_config_field():
    from sdcompress.config import FieldError

    model = _ln_model()  # d = 69
    with pytest.raises(FieldError, match=r"estimate.lyapunov_exponents must be at most d = 69 .*got 70") as info:
        estimate_sd(model, _batches(3), lr=0.5, method="lyapunov", lyapunov_exponents=70, lyapunov_steps=3, lyapunov_warmup=1)
    assert "n_exponents" not in str(info.value)
