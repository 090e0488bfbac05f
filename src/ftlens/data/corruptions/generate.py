"""The corruptions themselves (CIFAR-10-C's constants; :func:`corrupt`, :func:`corrupt_tensor`)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import correlate, gaussian_filter, map_coordinates
from skimage.color import hsv2rgb, rgb2hsv

from ftlens.data.base import float_to_uint8, uint8_to_float
from ftlens.data.corruptions.catalogue import CONSTANTS, check_corruption, check_severity
from ftlens.data.corruptions.kernels import (
    clipped_zoom,
    disk_kernel,
    gauss_filter,
    image_rngs,
    motion_blur_one,
    plasma_fractal,
)
from ftlens.errors import ImageError

# Each takes x: float64 (n, H, W, 3) in [0, 1] (or the uint8 batch, for the PIL ones), the
# severity's constant c, the per-image generators and the size scale s = min(H, W) / 32, and
# returns floats in [0, 1] (clipping is done by the caller) or uint8.


def _gaussian_noise(x, c, rngs, s):
    noise = np.stack([r.standard_normal(x.shape[1:]) for r in rngs])
    return x + c * noise


def _shot_noise(x, c, rngs, s):
    return np.stack([r.poisson(xi * c) for xi, r in zip(x, rngs, strict=True)]) / c


def _impulse_noise(x, c, rngs, s):
    out = x.copy()
    for i, r in enumerate(rngs):
        hit = r.random(x.shape[1:]) < c
        salt = r.random(x.shape[1:]) < 0.5
        out[i][hit] = salt[hit].astype(np.float64)
    return out


def _speckle_noise(x, c, rngs, s):
    noise = np.stack([r.standard_normal(x.shape[1:]) for r in rngs])
    return x + x * c * noise


def _gaussian_blur(x, c, rngs, s):
    return gauss_filter(x, c * s, mode="nearest")


def _defocus_blur(x, c, rngs, s):
    kernel = disk_kernel(c[0] * s, c[1] * s)
    return correlate(x, kernel[None, :, :, None], mode="mirror")


def _glass_blur(x, c, rngs, s):
    sigma, delta, iterations = c[0] * s, max(1, int(round(c[1] * s))), c[2]
    n, h, w = x.shape[:3]
    y = np.rint(np.clip(gauss_filter(x, sigma, mode="nearest"), 0, 1) * 255).astype(np.uint8)
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    pos_h = np.repeat(hs, len(ws))
    pos_w = np.tile(ws, len(hs))
    # per image: (iterations, positions, 2) offsets in [-delta, delta), as in CIFAR-10-C
    offs = np.stack([r.integers(-delta, delta, size=(iterations, len(pos_h), 2)) for r in rngs])
    idx = np.arange(n)
    for it in range(iterations):
        for k in range(len(pos_h)):
            hh, ww = pos_h[k], pos_w[k]
            h2 = hh + offs[:, it, k, 0]
            w2 = ww + offs[:, it, k, 1]
            a = y[idx, hh, ww].copy()
            y[idx, hh, ww] = y[idx, h2, w2]
            y[idx, h2, w2] = a
    return gauss_filter(y / 255.0, sigma, mode="nearest")


def _motion_blur(x, c, rngs, s):
    radius, sigma = c[0] * s, c[1] * s
    return np.stack(
        [
            motion_blur_one(xi, radius, sigma, r.uniform(-45, 45))
            for xi, r in zip(x, rngs, strict=True)
        ]
    )


def _zoom_blur(x, c, rngs, s):
    factors = np.arange(*c)
    out = x.copy()
    for z in factors:
        out += clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


def _snow(x, c, rngs, s):
    loc, scale, zoom, thr, mb_radius, mb_sigma, blend = c
    n, h, w = x.shape[:3]
    grey = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    base = blend * x + (1 - blend) * np.maximum(x, grey * 1.5 + 0.5)
    out = np.empty_like(x)
    for i, r in enumerate(rngs):
        layer = r.normal(loc=loc, scale=scale, size=(1, h, w, 1))
        layer = clipped_zoom(layer, zoom)[0]
        layer[layer < thr] = 0
        layer = np.rint(np.clip(layer, 0, 1) * 255) / 255  # 8-bit, as the original's PNG step
        layer = motion_blur_one(layer, mb_radius * s, mb_sigma * s, r.uniform(-135, -45))
        layer = np.rint(np.clip(layer, 0, 1) * 255) / 255
        out[i] = base[i] + layer + np.rot90(layer, k=2)
    return out


def _fog(x, c, rngs, s):
    strength, decay = c
    n, h, w = x.shape[:3]
    size = 1 << max(5, int(math.ceil(math.log2(max(h, w)))))  # 32 for CIFAR
    out = np.empty_like(x)
    for i, r in enumerate(rngs):
        max_val = x[i].max()
        fog = plasma_fractal(size, decay, r)[:h, :w, None]
        out[i] = (x[i] + strength * fog) * max_val / (max_val + strength)
    return out


def _brightness(x, c, rngs, s):
    hsv = rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv2rgb(hsv)


def _saturate(x, c, rngs, s):
    hsv = rgb2hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return hsv2rgb(hsv)


def _contrast(x, c, rngs, s):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _elastic_transform(x, c, rngs, s):
    n, h, w = x.shape[:3]
    size = min(h, w)
    alpha, sigma, affine = c[0] * size, c[1] * size, c[2] * size
    cy, cx = h // 2, w // 2
    sq = size // 3
    # three points (x, y) around the centre, moved at random: an affine warp
    src = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], np.float64)
    rows, cols = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    out = np.empty_like(x)
    for i, r in enumerate(rngs):
        dst = src + r.uniform(-affine, affine, size=src.shape)
        # inverse map: for each output pixel, where to read in the input (dst -> src)
        a = np.linalg.solve(np.c_[dst, np.ones(3)], src)  # (3, 2): [x y 1] @ a = src point
        sx = cols * a[0, 0] + rows * a[1, 0] + a[2, 0]
        sy = cols * a[0, 1] + rows * a[1, 1] + a[2, 1]
        warped = np.stack(
            [map_coordinates(x[i, :, :, ch], [sy, sx], order=1, mode="mirror") for ch in range(3)],
            axis=-1,
        )
        ux = r.uniform(-1, 1, size=(h, w))
        uy = r.uniform(-1, 1, size=(h, w))
        if sigma > 0:
            ux = gaussian_filter(ux, sigma, mode="reflect", truncate=3.0)
            uy = gaussian_filter(uy, sigma, mode="reflect", truncate=3.0)
        dx, dy = ux * alpha, uy * alpha
        out[i] = np.stack(
            [
                map_coordinates(warped[:, :, ch], [rows + dy, cols + dx], order=1, mode="reflect")
                for ch in range(3)
            ],
            axis=-1,
        )
    return out


def _pixelate(x8, c, rngs, s):
    n, h, w = x8.shape[:3]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = np.empty_like(x8)
    for i in range(n):
        im = Image.fromarray(x8[i]).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
        out[i] = np.asarray(im)
    return out


def _jpeg_compression(x8, c, rngs, s):
    out = np.empty_like(x8)
    for i in range(len(x8)):
        buf = io.BytesIO()
        Image.fromarray(x8[i]).save(buf, format="JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


_FUNCS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "fog": _fog,
    "brightness": _brightness,
    "saturate": _saturate,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
_UINT8_INPUT = {"pixelate", "jpeg_compression"}


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply a corruption with CIFAR-10-C's constants.

    Args:
        images: uint8 array ``(n, H, W, 3)``.
        corruption: one of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
        severity: 1..5.
        seed: the same seed gives the same output; image ``i``'s randomness depends only on
            ``(seed, corruption, i)``.

    Returns:
        uint8 array of the same shape.
    """
    name = check_corruption(corruption)
    sev = check_severity(severity)
    x8 = np.asarray(images)
    if x8.dtype != np.uint8 or x8.ndim != 4 or x8.shape[-1] != 3:
        raise ImageError(
            f"corrupt() needs uint8 images (n, H, W, 3), got {x8.dtype} {tuple(x8.shape)}; "
            "convert float (n, 3, H, W) images in [0, 1] with ftlens.data.float_to_uint8 or use "
            "corrupt_tensor()"
        )
    n, h, w = x8.shape[:3]
    if n == 0:
        return x8.copy()
    if min(h, w) < 4:
        raise ImageError(f"images of {h} x {w} pixels are too small to corrupt (need >= 4)")
    s = max(1.0, min(h, w) / 32.0)  # CIFAR-10-C's pixel constants at <= 32 px, scaled above
    c = CONSTANTS[name][sev - 1]
    rngs = image_rngs(seed, name, n)
    if name in _UINT8_INPUT:
        return _FUNCS[name](np.ascontiguousarray(x8), c, rngs, s)
    y = _FUNCS[name](x8.astype(np.float64) / 255.0, c, rngs, s)
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def corrupt_tensor(images: torch.Tensor, corruption: str, severity: int, seed: int = 0):
    """:func:`corrupt` for float ``(n, 3, H, W)`` tensors in [0, 1] (quantised to 8 bits)."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        raise ImageError("corrupt_tensor() needs a float tensor (n, 3, H, W) in [0, 1]")
    out = corrupt(float_to_uint8(images), corruption, severity, seed)
    return uint8_to_float(out).to(images.device)


