"""Error metrics between a reference tensor `a` and a candidate `b` of the same shape.

All arithmetic is float64 on the CPU, so the metric itself adds no rounding worth naming.
Zero-safe by definition rather than by epsilon:
- rel_l2 = ||b - a|| / ||a||; 0 when both are zero, inf when only `a` is zero.
- cosine = <a, b> / (||a|| ||b||); 1 when both are zero, 0 when exactly one is.
- sqnr_db = 10 log10(||a||^2 / ||b - a||^2); inf when equal, -inf when `a` is zero and `b` is not.
Elements that are NaN or Inf on either side are counted, and left out of every other metric (a
stage with any of them fails on the count alone; see `parity.tolerances`).
Decoded frames also get PSNR and SSIM with the parameters in `SSIM_PARAMS`, recorded in summaries.

Signed components of d = b - a, which a norm cannot see (a 1.001 scale is below one bf16 ulp per
element, yet it is the same sign everywhere):
- bias = mean(d), in the tensor's own units (uint8 levels for decoded frames);
- gain = <d, a> / <a, a>, the least-squares scale error of b against a (1.001 x a has gain 1e-3);
- each with its standard error under independent per-element errors (`bias_sigma`, `gain_sigma`):
  rounding noise gives |bias| and |gain| of a few sigmas, a systematic error many.
- changed_fraction: share of elements that differ at all (decoded frames: pixels off by >= 1 level).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np

SSIM_PARAMS = {"data_range": 255, "channel_axis": -1, "win_size": 7, "gaussian_weights": False}
"""scikit-image structural_similarity arguments, pinned (HWC uint8 frames)."""
PSNR_DATA_RANGE = 255


@dataclass
class Metrics:
    numel: int
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    sqnr_db: float
    nonfinite_a: int
    nonfinite_b: int
    worst_index: tuple[int, ...]
    """Index of the largest |b - a| in the stage tensor's own layout (see `parity.capture.LAYOUTS`)."""
    worst_a: float
    worst_b: float
    bias: float = 0.0
    bias_sigma: float = 0.0
    gain: float = 0.0
    gain_sigma: float = 0.0
    changed_fraction: float = 0.0
    rms_a: float = 0.0
    """Root mean square of `a`: the scale a relative floor on `bias` is taken against."""
    psnr: float | None = None
    ssim: float | None = None

    def to_dict(self) -> dict:
        # Every field is a number or a tuple of ints: a shallow copy is what `asdict` would give,
        # without its deep copy of each value (a 240-frame summary holds ~20,000 of these).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["worst_index"] = list(self.worst_index)
        return d


def to_float64(t) -> np.ndarray:
    """A torch tensor or numpy array as float64 numpy (bf16 goes through fp32, which is exact)."""
    if hasattr(t, "detach"):
        import torch

        t = t.detach().cpu()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return t.to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def compare_arrays(a, b) -> Metrics:
    a64, b64 = to_float64(a), to_float64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shape mismatch {a64.shape} vs {b64.shape}")
    finite_a, finite_b = np.isfinite(a64), np.isfinite(b64)
    nonfinite_a, nonfinite_b = a64.size - int(np.count_nonzero(finite_a)), b64.size - int(np.count_nonzero(finite_b))
    if nonfinite_a or nonfinite_b:
        both = finite_a & finite_b
        av, bv = np.where(both, a64, 0.0), np.where(both, b64, 0.0)
    else:
        av, bv = np.asarray(a64, order="C"), np.asarray(b64, order="C")  # the common case: nothing to mask
    signed_diff = bv - av
    diff = np.abs(signed_diff)
    norm_a_parts = _norm(av)
    (unit_a, sa, scale_a), (unit_b, sb, _), (unit_d, _, scale_d) = norm_a_parts, _norm(bv), _norm(diff)
    norm_a, norm_d = unit_a * scale_a, unit_d * scale_d
    signed = _signed_components(av, signed_diff, norm_a_parts)
    if diff.size:
        flat = int(np.argmax(diff))
        worst = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
        max_abs, mean_abs = float(diff.reshape(-1)[flat]), float(diff.mean())
        worst_a, worst_b = float(a64[worst]), float(b64[worst])
    else:
        worst, max_abs, mean_abs, worst_a, worst_b = (), 0.0, 0.0, 0.0, 0.0
    return Metrics(
        numel=int(a64.size),
        max_abs=max_abs,
        mean_abs=mean_abs,
        rel_l2=_scaled_ratio(unit_d, scale_d, unit_a, scale_a),
        cosine=_cosine(sa, sb, unit_a, unit_b),
        sqnr_db=_sqnr(norm_a, norm_d),
        nonfinite_a=nonfinite_a,
        nonfinite_b=nonfinite_b,
        worst_index=worst,
        worst_a=worst_a,
        worst_b=worst_b,
        changed_fraction=float(np.count_nonzero(diff)) / diff.size if diff.size else 0.0,
        **signed,
    )


def _signed_components(a: np.ndarray, d: np.ndarray, norm_a: tuple[float, np.ndarray, float]) -> dict[str, float]:
    """bias, gain and their standard errors (see the module docstring); a and d finite, float64;
    `norm_a` = `_norm(a)`, already taken by the caller.
    Sums run on a / max|a| and d / max|d| (like `_norm`), so huge or tiny values neither overflow
    nor underflow."""
    n = d.size
    if n == 0:
        return {"bias": 0.0, "bias_sigma": 0.0, "gain": 0.0, "gain_sigma": 0.0, "rms_a": 0.0}
    unit_a, ua, sa = norm_a[0], norm_a[1].ravel(), norm_a[2]
    _, ud, sd = _norm(d.ravel())
    bias = float(ud.mean()) * sd
    bias_sigma = float(ud.std()) / math.sqrt(n) * sd
    if unit_a == 0.0:
        gain, gain_sigma = 0.0, 0.0
    else:
        aa = unit_a * unit_a  # <a, a> / sa^2
        g = float(np.dot(ud, ua)) / aa  # gain * sa / sd
        resid = ud - g * ua
        gain = _scaled_ratio(g, sd, 1.0, sa) if g else 0.0
        gain_sigma = _scaled_ratio(float(np.sqrt(np.sum((ua * resid) ** 2))) / aa, sd, 1.0, sa)
    return {"bias": bias, "bias_sigma": bias_sigma, "gain": gain, "gain_sigma": gain_sigma,
            "rms_a": unit_a / math.sqrt(n) * sa}


def compare_frames(a, b) -> Metrics:
    """`compare_arrays` plus PSNR and SSIM, for decoded uint8 frames laid out (H, W, 3)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    m = compare_arrays(a, b)
    a8, b8 = _as_uint8(a), _as_uint8(b)
    if np.array_equal(a8, b8):
        m.psnr, m.ssim = math.inf, 1.0
    else:
        m.psnr = float(peak_signal_noise_ratio(a8, b8, data_range=PSNR_DATA_RANGE))
        m.ssim = float(structural_similarity(a8, b8, **SSIM_PARAMS)) if min(a8.shape[:2]) >= SSIM_PARAMS["win_size"] else None
    return m


def _as_uint8(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t).astype(np.uint8)


def _norm(x: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(||x / scale||, x / scale, scale), scale = max |x|: squares of float64 values beyond ~1e154
    overflow and below ~1e-162 underflow to 0, and multiplying the norm back by a subnormal scale
    rounds it, either of which would turn rel_l2 and cosine into nonsense. Callers combine the
    unit norms and the scales separately."""
    scale = float(np.max(np.abs(x), initial=0.0)) or 1.0
    scaled = x / scale
    return float(np.sqrt(np.sum(scaled * scaled))), scaled, scale


def _scaled_ratio(unit_num: float, scale_num: float, unit_den: float, scale_den: float) -> float:
    """(unit_num * scale_num) / (unit_den * scale_den) without forming either product."""
    if unit_num == 0.0:
        return 0.0
    if unit_den == 0.0:
        return math.inf
    return (unit_num / unit_den) * (scale_num / scale_den)


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _cosine(av: np.ndarray, bv: np.ndarray, norm_a: float, norm_b: float) -> float:
    if norm_a == 0.0 and norm_b == 0.0:
        return 1.0
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return float(np.clip(np.sum(av * bv) / (norm_a * norm_b), -1.0, 1.0))


def _sqnr(norm_a: float, norm_d: float) -> float:
    if norm_d == 0.0:
        return math.inf
    if norm_a == 0.0:
        return -math.inf
    return 20.0 * (math.log10(norm_a) - math.log10(norm_d))  # the quotient itself can underflow to 0


@dataclass
class Run:
    """Stages [start, stop) of a sequence whose values are steadily off zero."""

    start: int
    stop: int
    mean: float
    z: float
    """sum / sqrt(sum of each value's spread squared): the run's mean in standard errors."""


MIN_RUN = 3
"""A steady offset needs a few stages; one stage far off is the distance rule's business."""


def strongest_run(values, groups=None, min_length: int = MIN_RUN, min_z: float | None = None,
                  min_mean: float = 0.0) -> Run | None:
    """The run of at least `min_length` consecutive values whose mean is furthest from 0 in units of
    its standard error (a scan statistic): a steady offset over many stages stands out even when each
    stage alone is within its noise. Each value's spread is the sample standard deviation of its
    group (`groups`, e.g. the denoise step: the last, sharpest step wanders more than the first),
    or of the whole sequence. With `min_z`: the earliest-starting run with |z| >= min_z and
    |mean| > min_mean (where a steady offset begins), or None. None for fewer than `min_length`
    values or no spread."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < max(min_length, 3) or not np.all(np.isfinite(v)):
        return None
    keys = list(groups) if groups is not None else [0] * v.size
    spread = np.empty_like(v)
    overall = float(v.std(ddof=1))
    for g in set(keys):
        members = np.array([k == g for k in keys])
        spread[members] = float(v[members].std(ddof=1)) if members.sum() >= 3 else overall
    if not np.all(spread > 0):
        return None
    c = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(spread * spread)])
    best = None
    for i in range(v.size - min_length + 1):
        stop = np.arange(i + min_length, v.size + 1)
        z = (c[stop] - c[i]) / np.sqrt(c2[stop] - c2[i])
        mean = (c[stop] - c[i]) / (stop - i)
        ok = (np.abs(z) >= min_z) & (np.abs(mean) > min_mean) if min_z is not None else np.ones(z.size, bool)
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, np.abs(z), -1.0)))
        if best is None or abs(z[j]) > abs(best.z):
            best = Run(i, int(stop[j]), float(mean[j]), float(z[j]))
    if best is None or min_z is None:
        return best
    start = _onset(v, spread, best.mean, best.stop)
    if start != best.start and start < best.stop:  # the detection's z stands; the run is reported from where the offset begins
        best = Run(start, best.stop, float((c[best.stop] - c[start]) / (best.stop - start)), best.z)
    return best


def _onset(v: np.ndarray, spread: np.ndarray, shift: float, stop: int) -> int:
    """Where an offset of `shift` begins, before `stop`: the last restart of a one-sided CUSUM
    (Gaussian log-likelihood ratio of "offset `shift`" against "no offset") before its maximum."""
    s, best, start, best_start = 0.0, -1.0, 0, 0
    for k in range(stop):
        d = shift / spread[k] ** 2
        s = s + d * (v[k] - shift / 2)
        if s <= 0:
            s, start = 0.0, k + 1
        elif s > best:
            best, best_start = s, start
    return best_start


HF_CUTOFF = 0.25
"""High-frequency share: energy above this fraction of the Nyquist radius (of the luma spectrum)."""


def luma(frame) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float64, Rec. 601 weights."""
    f = _as_uint8(frame).astype(np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def laplacian_variance(frame) -> float:
    """Variance of the 4-neighbour Laplacian of the luma, valid pixels only: the usual focus measure.
    Lower means less detail (blur or flat content)."""
    return _laplacian_variance(luma(frame))


def high_frequency_share(frame, cutoff: float = HF_CUTOFF) -> float:
    """Share of the luma's spectral energy (mean removed) above `cutoff` x Nyquist; 0 for a flat frame."""
    return _high_frequency_share(luma(frame), cutoff)


def sharpness(frame, cutoff: float = HF_CUTOFF) -> tuple[float, float]:
    """(`laplacian_variance`, `high_frequency_share`) of one frame, its luma computed once."""
    y = luma(frame)
    return _laplacian_variance(y), _high_frequency_share(y, cutoff)


def _laplacian_variance(y: np.ndarray) -> float:
    lap = y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4.0 * y[1:-1, 1:-1]
    return float(lap.var())


def _high_frequency_share(y: np.ndarray, cutoff: float) -> float:
    power = np.abs(np.fft.fft2(y - y.mean())) ** 2
    total = power.sum()
    return float(power[_above(y.shape, cutoff)].sum() / total) if total > 0 else 0.0


@functools.lru_cache(maxsize=8)
def _above(shape: tuple[int, int], cutoff: float) -> np.ndarray:
    """Mask of the FFT bins beyond `cutoff` x Nyquist; the same for every frame of a run."""
    fy = np.fft.fftfreq(shape[0])[:, None] / 0.5
    fx = np.fft.fftfreq(shape[1])[None, :] / 0.5
    mask = np.sqrt(fx**2 + fy**2) > cutoff
    mask.setflags(write=False)
    return mask
