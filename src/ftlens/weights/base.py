"""What a set of shipped weights needs besides its tensors, and the error for a missing package."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ftlens.errors import WeightsPackageError  # noqa: F401 (re-exported; defined with every error class)


@dataclass(frozen=True)
class WeightsInfo:
    """Metadata of a pretrained preset.

    Attributes:
        arch: the timm architecture the tensors are loaded into (``"timm:NAME"``); checkpoints and
            ``scratch`` runs rebuild this architecture.
        input_size: ``(C, H, W)`` the weights were trained at (other sizes work for CNNs).
        mean, std: per-channel normalisation of [0, 1] pixels.
        num_classes: classes of the pretrained head (ImageNet-1k: 1000).
        source: where the tensors come from (package, version, file, sha256).
        license: licence note.
    """

    arch: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    source: str
    license: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
