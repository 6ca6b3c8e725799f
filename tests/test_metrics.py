"""Metrics: exact values on hand-made tensors, zero-safe, NaN/Inf counted and left out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parity.metrics import compare_arrays, compare_frames, high_frequency_share, laplacian_variance, sharpness


def test_known_values():
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[3.0, 5.0]])
    m = compare_arrays(a, b)
    assert m.max_abs == 1.0 and m.mean_abs == 0.5
    assert m.rel_l2 == pytest.approx(1 / 5)
    assert m.cosine == pytest.approx((9 + 20) / (5 * math.sqrt(34)))
    assert m.sqnr_db == pytest.approx(20 * math.log10(5))
    assert m.worst_index == (0, 1) and (m.worst_a, m.worst_b) == (4.0, 5.0)


def test_zeros_are_safe():
    z = torch.zeros(4)
    m = compare_arrays(z, z)
    assert (m.rel_l2, m.cosine, m.sqnr_db, m.max_abs) == (0.0, 1.0, math.inf, 0.0)
    m = compare_arrays(z, torch.ones(4))
    assert (m.rel_l2, m.cosine, m.sqnr_db) == (math.inf, 0.0, -math.inf)


def test_nonfinite_counted_and_excluded():
    a = torch.tensor([1.0, float("nan"), 2.0])
    b = torch.tensor([1.0, 5.0, float("inf")])
    m = compare_arrays(a, b)
    assert (m.nonfinite_a, m.nonfinite_b) == (1, 1)
    assert m.max_abs == 0.0


def test_bf16_is_compared_exactly():
    a = torch.tensor([1.0], dtype=torch.bfloat16)
    b = torch.nextafter(a.float(), torch.tensor([2.0])).to(torch.bfloat16)  # rounds back to 1.0
    assert compare_arrays(a, b).max_abs == 0.0
    c = torch.tensor([1.0078125], dtype=torch.bfloat16)  # one bf16 ulp above 1
    assert compare_arrays(a, c).max_abs == 0.0078125


def test_frames_get_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    same = compare_frames(a, a.copy())
    assert same.psnr == math.inf and same.ssim == 1.0
    b = a.copy()
    b[0, 0, 0] ^= 1
    diff = compare_frames(a, b)
    mse = 1 / a.size
    assert diff.psnr == pytest.approx(10 * math.log10(255**2 / mse))
    assert 0.99 < diff.ssim < 1.0


def test_masking_path_agrees_with_the_plain_path():
    """Values are masked only when one side has NaN/Inf; both paths give the same numbers where they must."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1000)
    b = a + 1e-3 * rng.standard_normal(1000)
    plain = compare_arrays(a, b)
    masked = compare_arrays(np.append(a, np.nan), np.append(b, 7.0))  # the extra element is left out
    assert masked.nonfinite_a == 1 and plain.nonfinite_a == 0
    for name in ("max_abs", "rel_l2", "cosine", "sqnr_db", "gain", "worst_index", "worst_a", "worst_b"):
        assert getattr(masked, name) == pytest.approx(getattr(plain, name), rel=1e-12), name


def test_strided_input_gives_the_same_numbers_as_a_contiguous_copy():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((64, 96)), rng.standard_normal((64, 96))
    assert compare_arrays(a[:, ::2], b[:, ::2]) == compare_arrays(a[:, ::2].copy(), b[:, ::2].copy())
    assert compare_arrays(np.float64(2.0), np.float64(2.5)).max_abs == 0.5  # 0-d stays 0-d


def test_sharpness_is_both_measures_from_one_luma():
    rng = np.random.default_rng(5)
    for shape in ((36, 64, 3), (48, 40, 3)):  # the frequency mask is cached per shape
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        assert sharpness(frame) == (laplacian_variance(frame), high_frequency_share(frame))
    assert sharpness(np.full((8, 8, 3), 7, np.uint8)) == (0.0, 0.0)
