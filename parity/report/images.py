"""Pixels for the report: |difference| heatmaps, PNG files and the video (sharpness is in parity.metrics).

Shape legend: frames are HWC uint8 (`frame_HW3`), latents CHW float (`latent_CHW`, batch and
frame axes already dropped). Heatmaps use fixed log scales, so colours mean the same thing on
every frame and in every report:
- decoded: |B - A| in 8-bit levels averaged over RGB, 0 black, 1 level dark blue, 255 white;
- latents: |B - A| per element, 1e-4 or less black, 10 or more white.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

DECODED_SCALE = (0.0, math.log2(256.0))  # log2(1 + levels)
LATENT_SCALE = (-4.0, 1.0)  # log10(|d|)
def _colormap() -> np.ndarray:
    """256 x 3 uint8: black, blue, magenta, orange, yellow, white (a perceptually ordered ramp)."""
    stops = np.array([[0, 0, 0], [30, 30, 150], [170, 40, 150], [245, 120, 40], [250, 220, 60], [255, 255, 255]], float)
    pos = np.linspace(0, 1, len(stops))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


CMAP = _colormap()


def colorize(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    idx = np.clip((values - lo) / (hi - lo), 0, 1) * 255
    return CMAP[np.nan_to_num(idx, nan=255).astype(np.uint8)]


def decoded_diff_heatmap(a_HW3: np.ndarray, b_HW3: np.ndarray) -> np.ndarray:
    levels = np.abs(b_HW3.astype(np.int16) - a_HW3.astype(np.int16)).mean(axis=2)
    return colorize(np.log2(1.0 + levels), *DECODED_SCALE)


def latent_diff_heatmap(a_CHW: np.ndarray, b_CHW: np.ndarray, min_tile: int = 48) -> np.ndarray:
    """One tile per channel in a near-square grid, 1 px gaps, tiles upscaled to >= min_tile px."""
    d = np.abs(b_CHW.astype(np.float64) - a_CHW.astype(np.float64))
    c, h, w = d.shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    th, tw = h * scale, w * scale
    out = np.full((rows * (th + 1) - 1, cols * (tw + 1) - 1, 3), 90, np.uint8)
    with np.errstate(divide="ignore"):
        logd = np.log10(d)
    tiles = colorize(logd, *LATENT_SCALE)
    for i in range(c):
        r, k = divmod(i, cols)
        tile = tiles[i].repeat(scale, axis=0).repeat(scale, axis=1)
        out[r * (th + 1):r * (th + 1) + th, k * (tw + 1):k * (tw + 1) + tw] = tile
    return out


def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    # Fast: these are review assets, not archives. Run-length deflate skips zlib's match search:
    # a third faster than level 1's default on textured or noisy frames, and no larger.
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=1, compress_type=zlib.Z_RLE)


class VideoWriter:
    """A | B | diff as mp4 (H.264 via imageio-ffmpeg) or, when ffmpeg is unavailable, a GIF.

    `path_stem` gets `.mp4` or `.gif`; `.path` tells which was written once `close()` returns."""

    def __init__(self, path_stem: Path, fps: int = 8):
        self.path: Path | None = None
        self._writer = None
        try:
            import imageio_ffmpeg  # noqa: F401  (the mp4 plugin needs its binary)
            import imageio.v2 as iio

            self.path = path_stem.with_suffix(".mp4")
            self._writer = iio.get_writer(self.path, fps=fps, codec="libx264", quality=8, macro_block_size=2,
                                          pixelformat="yuv420p", ffmpeg_log_level="error",
                                          output_params=["-preset", "veryfast"])
        except Exception:  # no ffmpeg binary or plugin: fall back to GIF below
            self._writer = None
        if self._writer is None:
            import imageio.v2 as iio

            self.path = path_stem.with_suffix(".gif")
            self._writer = iio.get_writer(self.path, mode="I", duration=1000 / fps, loop=0)

    def append(self, pixels: np.ndarray) -> None:
        h, w = pixels.shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sides
            pixels = np.pad(pixels, ((0, h % 2), (0, w % 2), (0, 0)))
        self._writer.append_data(pixels)

    def close(self) -> Path | None:
        self._writer.close()
        return self.path
