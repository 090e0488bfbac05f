"""Image operations the corruptions share: per-image generators, filters, zoom, motion and disk kernels, plasma fractal."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d, gaussian_filter


def image_rngs(seed: int, corruption: str, n: int) -> list[np.random.Generator]:
    """One generator per image, independent of ``n`` and of the severity."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(corruption.encode())])
    return [np.random.default_rng(child) for child in ss.spawn(n)]


def gauss_filter(x: np.ndarray, sigma: float, mode: str, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of a batch ``(n, H, W, C)`` over H and W only."""

    if sigma <= 0:
        return x
    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom a batch ``(n, H, W, C)`` into its centre by ``factor`` (>= 1), keeping ``H x W``."""

    if factor == 1:
        return x
    h, w = x.shape[1:3]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = torch.from_numpy(np.ascontiguousarray(x[:, top : top + ch, left : left + cw]))
    # linear interpolation with corners mapped to corners and the output size rounded, i.e.
    # scipy.ndimage.zoom(order=1) (checked to agree to 1e-15), but much faster on batches
    out_size = (int(round(ch * factor)), int(round(cw * factor)))
    z = (
        F.interpolate(crop.permute(0, 3, 1, 2), size=out_size, mode="bilinear", align_corners=True)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    th, tw = (z.shape[1] - h) // 2, (z.shape[2] - w) // 2
    return z[:, th : th + h, tw : tw + w]


def motion_kernel(radius: float, sigma: float, angle_deg: float):
    """Taps ``(dy, dx, weight)`` of a one-sided Gaussian line blur along ``angle_deg``."""
    width = 2 * int(math.ceil(radius)) + 1 if radius > 0 else 3
    i = np.arange(width, dtype=np.float64)
    wts = np.exp(-(i**2) / (2.0 * sigma**2))
    wts /= wts.sum()
    t = math.radians(angle_deg)
    dx = np.ceil(i * math.cos(t) - 0.5).astype(np.int64)  # round half up
    dy = np.ceil(i * math.sin(t) - 0.5).astype(np.int64)
    return dy, dx, wts


def motion_blur_one(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion blur of one ``(H, W, C)`` float image, edges repeated."""
    h, w = img.shape[:2]
    out = np.zeros_like(img, dtype=np.float64)
    rows, cols = np.arange(h), np.arange(w)
    for dy, dx, wt in zip(*motion_kernel(radius, sigma, angle), strict=True):
        r = np.clip(rows + dy, 0, h - 1)
        c = np.clip(cols + dx, 0, w - 1)
        out += wt * img[r][:, c]
    return out


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A periodic diamond-square height map ``(size, size)`` in [0, 1] (``size`` a power of 2).

    Displacements start at amplitude 100 (``100 * U(-100, 100)``) and the amplitude is divided
    by ``decay`` at each level, as in the fog of ImageNet-C / CIFAR-10-C.
    """
    m = np.zeros((size, size), dtype=np.float64)
    step, amp = size, 100.0
    while step >= 2:
        half = step // 2
        corners = m[0::step, 0::step]
        acc = corners + np.roll(corners, -1, axis=0)
        acc = acc + np.roll(acc, -1, axis=1)  # the 4 corners of each square
        m[half::step, half::step] = acc / 4 + amp * rng.uniform(-amp, amp, acc.shape)
        centres = m[half::step, half::step]
        corners = m[0::step, 0::step]
        # midpoints of horizontal edges: left/right corners + centres below/above
        acc = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=0)
        m[0::step, half::step] = acc / 4 + amp * rng.uniform(-amp, amp, acc.shape)
        # midpoints of vertical edges: corners above/below + centres right/left
        acc = corners + np.roll(corners, -1, axis=0) + centres + np.roll(centres, 1, axis=1)
        m[half::step, 0::step] = acc / 4 + amp * rng.uniform(-amp, amp, acc.shape)
        step = half
        amp /= decay
    m -= m.min()
    return m / m.max()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased disk (defocus) kernel, normalised to sum 1."""

    half = 8 if radius <= 8 else int(math.ceil(radius))
    taps = 3 if radius <= 8 else 5
    r = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    if alias_blur > 0:
        t = np.arange(taps) - taps // 2
        g = np.exp(-(t**2) / (2.0 * alias_blur**2))
        g /= g.sum()
        disk = correlate1d(correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    nz = np.argwhere(disk > 1e-12)
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0)
    k = max(half - y0, y1 - half, half - x0, x1 - half)  # keep the kernel centred
    disk = disk[half - k : half + k + 1, half - k : half + k + 1]
    return disk / disk.sum()


