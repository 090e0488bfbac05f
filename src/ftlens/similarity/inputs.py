"""Input checks shared by every measure: any tensor or array -> a finite float64 ``(n, features)``
tensor, matching row counts, estimator options, column centring, and the warning for a
constant (degenerate) representation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ftlens.errors import (
    ConfigError,
    ConfigTypeError,
    DegenerateRepresentationWarning,
    NumericalError,
)
from ftlens.warn import warn

DTYPE = torch.float64
# A representation whose centred Frobenius norm is below this fraction of its raw norm is
# constant up to float64 rounding of the mean (real float32 data is >= ~1e-7 above it).
CONSTANT_RTOL = 1e-10
KERNELS = ("linear", "rbf")


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def rows(x: Any, name: str) -> int:
    shape = _shape(x)
    if len(shape) == 0:
        raise ConfigError(f"{name} is a scalar; expected a representation of shape (n, features).")
    return int(shape[0])


def width(x: Any) -> int:
    shape = _shape(x)
    return int(math.prod(shape[1:])) if len(shape) > 1 else 1


def as_matrix(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a finite float64 ``(n, features)`` tensor (1-D: one feature; >2-D: flattened)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise ConfigTypeError(f"{name} must be a numeric tensor or array, got dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ConfigTypeError(f"{name} is complex; similarity needs real-valued representations.")
    if t.ndim == 0:
        raise ConfigError(f"{name} is a scalar; expected a representation of shape (n, features).")
    if t.ndim == 1:
        t = t.unsqueeze(1)
    elif t.ndim > 2:
        t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(t.shape)}); expected (n, features).")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NumericalError(
            f"{name} contains {bad} NaN/inf value(s) out of {t.numel()}; similarity needs finite "
            "representations. Check the model or checkpoint that produced them (a diverged "
            "finetuning run gives NaN activations)."
        )
    if device is None:
        device = t.device if t.device.type in ("cpu", "cuda") else torch.device("cpu")
    return t.to(device=device, dtype=DTYPE)


def check_same_rows(n_a: int, n_b: int, name_a: str = "a", name_b: str = "b") -> None:
    if n_a != n_b:
        raise ConfigError(
            f"{name_a} has {n_a} rows and {name_b} has {n_b}: CKA compares representations of "
            "the same inputs, row by row, so both need the same number of samples."
        )


def check_debiased_n(n: int, what: str = "debiased CKA") -> None:
    if n < 4:
        raise ConfigError(
            f"{what} needs at least 4 samples (the unbiased HSIC divides by n(n-3)); got n={n}. "
            "Use more samples or debiased=False."
        )


def check_kernel(kernel: str, sigma: float) -> None:
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if kernel == "rbf" and not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ConfigError(f"sigma must be a positive number, got {sigma!r}.")


def centre(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Column-centred copy of ``x`` and whether ``x`` is constant (then the copy is exactly 0)."""
    xc = x - x.mean(dim=0, keepdim=True)
    raw = float(torch.linalg.vector_norm(x))
    constant = float(torch.linalg.vector_norm(xc)) <= CONSTANT_RTOL * raw
    if constant:
        xc.zero_()
    return xc, constant


def warn_degenerate(names: Sequence[str], what: str = "CKA", stacklevel: int = 4) -> None:
    """A :class:`DegenerateRepresentationWarning` at the caller's code (``stacklevel``: unused, kept
    for callers that pass it)."""
    listed = ", ".join(names)
    warn(
        f"{what} is undefined for {listed}: the representation is constant over the samples "
        "(its HSIC with itself is 0), so the result is NaN. A constant layer carries no "
        "information about the inputs; check the layer and the inputs.",
        DegenerateRepresentationWarning,
    )


def paired(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_rows(rows(a, "a"), rows(b, "b"))
    am = as_matrix(a, "a")
    return am, as_matrix(b, "b", am.device)
