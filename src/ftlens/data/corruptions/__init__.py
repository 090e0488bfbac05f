"""Common corruptions: the CIFAR-10-C / CIFAR-100-C files, and our own generator.

Official files
--------------
:func:`load_corrupted` reads the layout of CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich,
ICLR 2019): ``<corruption>.npy`` of ``5 * N`` images ``H x W x 3`` uint8, severity ``s`` in rows
``(s - 1) * N : s * N`` (``N = 10000`` in the official files; we infer it as rows / 5), and
``labels.npy`` (``5 * N`` or ``N`` labels).

Why our own generator
---------------------
The paper evaluates robustness on CIFAR-10-C / CIFAR-100-C, whose files are not always at hand
(and do not exist for other datasets). The ready-made packages do not fit:

- ``imagecorruptions`` 1.1.2 (PyPI) is broken on NumPy 2 / current scikit-image (its import needs
  ``pkg_resources``; glass blur, gaussian blur and fog fail), and
- both it and its maintained fork ``imagecorruptions-imaug`` use the **ImageNet-C** constants,
  tuned for 224 px images and far too strong for 32 x 32 images (e.g. Gaussian-noise sigma
  0.18 at severity 3 against CIFAR-10-C's 0.08; defocus radius 6 against 0.5).

So :func:`corrupt` implements the corruptions with numpy / scipy / scikit-image / PIL and the
per-severity constants of CIFAR-10-C (``make_cifar_c.py`` in Hendrycks' ``robustness``
repository). Only the constants carry over; the code is ours.

Implemented (:data:`CORRUPTIONS`, in CIFAR-10-C's order): gaussian_noise, shot_noise,
impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, fog, brightness,
contrast, elastic_transform, pixelate, jpeg_compression. Extras of CIFAR-10-C
(:data:`EXTRA_CORRUPTIONS`): speckle_noise, gaussian_blur, saturate.

Deviations from CIFAR-10-C:

- **frost** is left out: it blends crops of six frost photographs shipped with the original code
  and available nowhere here. (``load_corrupted`` reads the official ``frost.npy`` fine.)
  spatter (an extra) is left out too (it needs OpenCV's Canny / distance transform).
- **motion_blur** and the motion-blurred **snow** layer use our own kernel in place of
  ImageMagick's (Wand): a one-sided Gaussian-weighted line of ``2 * ceil(radius) + 1`` taps along
  a random angle, edge pixels repeated, the same construction ImageMagick's MotionBlurImage
  documents.
- Results are rounded to the nearest uint8 (CIFAR-10-C truncates, which darkens by 0.5/255 on
  average).
- Randomness: image ``i`` gets its own generator from ``(seed, corruption, i)``; the same random
  numbers are used at every severity (common random numbers), so severities differ only by
  their constants and ``corrupt(x[:k]) == corrupt(x)[:k]``.
- Sizes: the constants were written for 32 x 32. For larger images the pixel-length constants
  (blur radii and sigmas, glass-blur displacement, motion-blur length) are scaled by
  ``min(H, W) / 32`` (at 224 px this lands near ImageNet-C's blur constants); at 32 px and
  below they are exactly CIFAR-10-C's (scaling down would shrink the blurs below a pixel).
  Elastic-transform magnitudes are fractions of the image size, as in CIFAR-10-C; the fog
  map covers the image (``max(32, next power of 2)``). Noise, brightness, contrast,
  saturation, zoom and pixelation factors are size-free; JPEG quality acts on 8 x 8 blocks and
  is not scaled. Images much smaller than 32 px (e.g. 8 x 8 digits) should be upsampled to
  32 px first (:func:`corrupted_dataset_for` does this).
- Severity is not monotone in pixel deviation for every corruption, already with CIFAR-10-C's
  own constants: glass_blur severities 1-3 share one shuffling pass and differ only by a
  Gaussian sigma (0.05 / 0.25 / 0.4; the first two are near no-ops, the third smooths the
  shuffle back towards the original), motion_blur severities 3 and 4 are the same blur (the
  taps added by radius 8 over radius 6 have weight exp(-169/8) ~ 1e-9 at sigma 2), and
  elastic_transform moves from a pure affine warp of +-8 % of the size (severity 1) to smaller
  affine plus local elastic warps, so its mean pixel change falls with severity. We keep the
  constants as they are, to stay comparable with CIFAR-10-C.

:func:`make_corrupted_split` writes our corruptions in the official layout (atomically) and
:func:`corrupted_dataset_for` gives the corrupted test split of any ftlens dataset: the official
CIFAR-10-C / CIFAR-100-C files when present, otherwise generated and cached on disk.
"""

from __future__ import annotations

from ftlens.data.corruptions.catalogue import (
    CIFAR10_CLASSES,
    CIFAR_C_CORRUPTIONS,
    CODE_VERSION,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    META_FILE,
    NOT_IMPLEMENTED,
    SEVERITIES,
)
from ftlens.data.corruptions.datasets import corrupted_dataset_for
from ftlens.data.corruptions.files import (
    available_corruptions,
    load_corrupted,
    make_corrupted_split,
)
from ftlens.data.corruptions.generate import corrupt, corrupt_tensor

__all__ = [
    "CIFAR10_CLASSES", "CIFAR_C_CORRUPTIONS", "CODE_VERSION", "CORRUPTIONS", "EXTRA_CORRUPTIONS",
    "META_FILE", "NOT_IMPLEMENTED", "SEVERITIES", "available_corruptions", "corrupt", "corrupt_tensor",
    "corrupted_dataset_for", "load_corrupted", "make_corrupted_split",
]
