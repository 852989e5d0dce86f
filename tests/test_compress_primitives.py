"""Pure tensor primitives of compression against references: SVD truncation, weighted
SVD, quantization SNR, packing, pruning masks."""

from __future__ import annotations

import math

import pytest
import torch

from sdcompress.compress.lowrank import weighted_svd
from sdcompress.compress.prune import prune_mask, prune_scores
from sdcompress.compress.quant import (
    PackedTensor,
    dequantize_groups,
    pack_bits,
    pack_int4,
    quantize_groups,
    unpack_bits,
    unpack_int4,
)
from sdcompress.errors import CompressionError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_truncation_error_is_norm_of_dropped_singular_values():
    w = torch.randn(20, 12, generator=_gen(), dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    for k in (1, 5, 11, 12):
        u, v = weighted_svd(w, k)
        assert u.shape == (20, k) and v.shape == (k, 12)
        err = torch.linalg.norm(w - u @ v)
        assert err.item() == pytest.approx(s[k:].square().sum().sqrt().item(), abs=1e-10)


def test_exact_low_rank_matrix_is_reproduced():
    g = _gen(1)
    w = torch.randn(15, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 9, generator=g, dtype=torch.float64)
    u, v = weighted_svd(w, 3)
    torch.testing.assert_close(u @ v, w, atol=1e-12, rtol=0)


def test_weighted_svd_hand_example():
    # W = diag(1, 2). Plain rank 1 keeps the 2; row weights (16, 1) make the first entry
    # worth 16·1² = 16 > 1·2² = 4, so the weighted rank-1 approximation is diag(1, 0).
    w = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    u, v = weighted_svd(w, 1)
    torch.testing.assert_close(u @ v, torch.diag(torch.tensor([0.0, 2.0], dtype=torch.float64)), atol=1e-12, rtol=0)
    u, v = weighted_svd(w, 1, row_weights=(16.0, 1.0))
    torch.testing.assert_close(u @ v, torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)), atol=1e-12, rtol=0)


def test_weighted_svd_matches_closed_form():
    g = _gen(2)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    r = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    c = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    k = 2
    u, v = weighted_svd(w, k, tuple(r.tolist()), tuple(c.tolist()))
    # Closed form: W̃ = diag(√r) W diag(√c); UV = diag(1/√r) [W̃]_k diag(1/√c).
    scaled = r.sqrt()[:, None] * w * c.sqrt()[None, :]
    uu, s, vh = torch.linalg.svd(scaled)
    best = (uu[:, :k] * s[:k]) @ vh[:k]
    torch.testing.assert_close(u @ v, best / r.sqrt()[:, None] / c.sqrt()[None, :], atol=1e-12, rtol=0)
    # Factor semantics: √r·U = Ũ_k S_k^{1/2} and V·√c = S_k^{1/2} Ṽ_kᵀ, so both Gram
    # matrices equal S_k (independent of singular-vector signs).
    gu = (r.sqrt()[:, None] * u).T @ (r.sqrt()[:, None] * u)
    gv = (v * c.sqrt()[None, :]) @ (v * c.sqrt()[None, :]).T
    torch.testing.assert_close(gu, torch.diag(s[:k]), atol=1e-12, rtol=0)
    torch.testing.assert_close(gv, torch.diag(s[:k]), atol=1e-12, rtol=0)
    # Weighted Eckart–Young: the weighted error is the norm of the dropped σ(W̃), and no
    # random rank-k matrix nearby does better.
    def werr(x: torch.Tensor) -> float:
        return float((r[:, None] * c[None, :] * (w - x) ** 2).sum().sqrt())

    assert werr(u @ v) == pytest.approx(float(s[k:].square().sum().sqrt()), rel=1e-10)
    for i in range(20):
        du = 1e-2 * torch.randn(7, k, generator=_gen(100 + i), dtype=torch.float64)
        assert werr((u + du) @ v) >= werr(u @ v)


def test_weighted_svd_rejects_bad_input():
    w = torch.randn(4, 3, generator=_gen())
    with pytest.raises(CompressionError, match="rank 4"):
        weighted_svd(w, 4)
    with pytest.raises(CompressionError, match="row_weights"):
        weighted_svd(w, 1, row_weights=(1.0, 1.0, 0.0, 1.0))


def _snr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return 10 * math.log10(float(w.square().sum() / (w - w_hat).square().sum()))


# Measured on these Gaussian weights (256×512, group 64): int8 44.5 dB, int4 19.4 dB.
# Theory for a Gaussian group of 64 (max ≈ 2.4σ, uniform rounding noise s²/12):
# 10·log10(12·q_max² / 2.4²) ≈ 44 dB (int8) and 20 dB (int4). Floors leave a margin.
@pytest.mark.parametrize("bits, floor_db", [(8, 40.0), (4, 17.0)])
def test_quantization_snr_floor(bits, floor_db):
    w = torch.randn(256, 512, generator=_gen(3))
    q, scales = quantize_groups(w, bits, 64)
    assert q.dtype == torch.int8 and scales.shape == (256, 8)
    assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
    w_hat = dequantize_groups(q, scales, 64)
    assert _snr_db(w, w_hat) >= floor_db
    # every entry is within half a step of its group's scale
    step = scales.repeat_interleave(64, dim=1)
    assert bool(((w - w_hat).abs() <= step / 2 + 1e-6).all())


def test_quantization_ragged_last_group_and_zero_group():
    w = torch.randn(3, 10, generator=_gen(4))
    w[1] = 0.0
    q, scales = quantize_groups(w, 8, 4)  # groups of 4, 4, 2
    assert scales.shape == (3, 3)
    w_hat = dequantize_groups(q, scales, 4)
    assert bool((w_hat[1] == 0).all())
    assert _snr_db(w, w_hat) > 35


def test_int4_and_bit_packing_round_trip():
    vals = torch.randint(-7, 8, (17,), generator=_gen(5), dtype=torch.int8)
    packed = pack_int4(vals)
    assert packed.dtype == torch.uint8 and packed.numel() == 9
    assert torch.equal(unpack_int4(packed, 17), vals)
    mask = torch.rand(3, 7, generator=_gen(6)) > 0.5
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == 3
    assert torch.equal(unpack_bits(bits, 21).view(3, 7), mask)


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_tensor_storage_and_mask(bits):
    w = torch.randn(8, 40, generator=_gen(7))
    mask = torch.rand(8, 40, generator=_gen(8)) > 0.6
    pt = PackedTensor.quantize(w, bits, 16, mask)
    n = int(mask.sum())
    assert pt.n_values == n
    assert pt.storage_bytes() == (n if bits == 8 else math.ceil(n / 2)) + 8 * 3 * 4
    w_hat = pt.dequantize(mask)
    assert bool((w_hat[~mask] == 0).all())
    assert _snr_db(w * mask, w_hat) > (35 if bits == 8 else 15)


def test_prune_mask_exact_count_and_top_scores():
    w = torch.randn(30, 17, generator=_gen(9))
    for frac in (0.1, 0.25, 0.5, 0.93, 1.0):
        mask = prune_mask(w, frac)
        assert int(mask.sum()) == math.floor(frac * w.numel() + 0.5)
        kept, dropped = w.abs()[mask], w.abs()[~mask]
        if dropped.numel():
            assert float(kept.min()) >= float(dropped.max())


def test_weighted_prune_scores():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    r, c = (4.0, 1.0), (1.0, 9.0)
    expected = torch.tensor([[1.0 * 2 * 1, 2.0 * 2 * 3], [3.0 * 1 * 1, 0.5 * 1 * 3]], dtype=torch.float64)
    torch.testing.assert_close(prune_scores(w, r, c), expected)
    # weighted scores 2, 12, 3, 1.5: keep 12 and 3; plain magnitudes 1, 2, 3, 0.5: keep 3 and 2
    assert prune_mask(w, 0.5, r, c).tolist() == [[False, True], [True, False]]
    assert prune_mask(w, 0.5).tolist() == [[False, True], [True, False]]  # plain: 2, 3 kept
    assert prune_mask(w, 0.25, r, c).tolist() == [[False, True], [False, False]]
    assert prune_mask(w, 0.25).tolist() == [[False, False], [True, False]]
