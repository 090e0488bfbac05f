"""Minibatch CKA (Nguyen et al. 2021): the unbiased HSIC_1 terms averaged over minibatches, for
representations too large to hold at once. An accumulator, not a registered ``measure(a, b)``:
for one batch it equals :data:`ftlens.similarity.cka.LINEAR_CKA_DEBIASED`.

Linear kernel: each layer's U-centred Gram is formed once per batch (:func:`batch_u_grams`)
and every layer pair's HSIC_1 comes from one product of the stacked Grams. The Gram of float32
features is a float32 product of the column-centred features (mean in float64; on CUDA only
when float32 matmuls are not TF32); the U-centring of the Gram, HSIC and CKA are float64.
Memory is the Grams of one batch (``L * b^2``), whatever the number of batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from ftlens.errors import ConfigError, ConfigTypeError, NumericalError, UsageError
from ftlens.similarity.cka import describe
from ftlens.similarity.gram import centred_gram, hsic_norm
from ftlens.similarity.inputs import CONSTANT_RTOL, DTYPE, check_debiased_n, check_kernel
from ftlens.similarity.pairwise import as_items, cka_from_hsic, common_rows, pairwise_hsic

__all__ = ["MinibatchCKA", "batch_u_grams"]


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 features keep a float32 Gram product unless TF32 would round it (CUDA)."""
    if x.dtype == torch.float32 and (x.device.type != "cuda" or torch.get_float32_matmul_precision() == "highest"):
        return torch.float32
    return DTYPE


def batch_u_grams(items: list[tuple[str, Any]], n: int) -> torch.Tensor:
    """``(L, n*n)`` float64 U-centred linear Grams of one batch of ``n`` rows per item.

    ``items``: ``(name, representation (n, ...))``; a constant representation gives a zero Gram
    (then its CKA is NaN with a warning); NaN or inf is a :class:`NumericalError` naming it.
    """
    first = items[0][1]
    device = first.device if isinstance(first, torch.Tensor) and first.device.type == "cuda" else None
    out = torch.empty((len(items), n * n), dtype=DTYPE, device=device)
    for i, (name, raw) in enumerate(items):
        x = torch.as_tensor(raw).detach().reshape(n, -1)
        if device is not None:
            x = x.to(device)
        x = x.to(_product_dtype(x) if x.is_floating_point() else DTYPE)
        # centring only conditions the product (the U-centred Gram is the same for any shift of the
        # rows); the mean is taken in float64, so a constant column centres to exactly 0
        mean = x.mean(dim=0, keepdim=True, dtype=DTYPE)
        xc = x - mean.to(x.dtype)
        k = (xc @ xc.T).to(DTYPE)
        if not bool(torch.isfinite(k).all()):
            raise NumericalError(f"{name} contains NaN/inf values; similarity needs finite representations "
                                 "(a diverged model or checkpoint gives NaN activations)")
        centred = float(k.trace())  # ||x_c||^2; ||x||^2 = ||x_c||^2 + n ||mean||^2
        if centred <= CONSTANT_RTOL**2 * (centred + n * float(mean.square().sum())):
            out[i] = 0.0  # constant over the batch: its HSIC with anything is 0, its CKA NaN
        else:
            out[i] = centred_gram(k, True).reshape(-1)
    return out


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSIC_1 averaged over minibatches.

    For each minibatch, :meth:`update` computes ``HSIC_1`` for every (layer of a, layer of b)
    pair and for each layer with itself, and adds them to running sums (an ``L_a x L_b``
    accumulator plus ``L_a`` and ``L_b`` self terms). :meth:`compute` divides each sum by the
    number of batches (every batch weighs the same) and returns
    ``mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) * mean HSIC_1(L, L))``. Each batch needs at
    least 4 samples; the same images must be fed to both sides. This estimates the same
    population CKA as debiased :func:`linear_cka` and, for a single batch, equals it.

    ``update(a, b)`` with tensors (n, ...) -> ``compute()`` returns a float; with dicts
    ``{layer: tensor}`` -> a DataFrame (index: layers of a, columns: layers of b).
    ``b=None`` compares ``a`` with itself. RBF: each batch uses its own median bandwidth.
    """

    def __init__(self, kernel: str = "linear", *, sigma: float = 0.8, method: str = "auto") -> None:
        check_kernel(kernel, sigma)
        self.kernel, self.sigma, self.method = kernel, sigma, method
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._mode: str | None = None
        self._names_a: list[str] | None = None
        self._names_b: list[str] | None = None
        self._cross: torch.Tensor | None = None
        self._self_a: torch.Tensor | None = None
        self._self_b: torch.Tensor | None = None
        self.n_batches = 0
        self.n_samples = 0

    def update(self, reps_a: Any, reps_b: Any = None) -> None:
        """Add one minibatch: tensors (n, ...) or dicts ``{layer: (n, ...)}`` of the same n inputs."""
        mode = "dict" if isinstance(reps_a, Mapping) else "tensor"
        if reps_b is not None and isinstance(reps_b, Mapping) != (mode == "dict"):
            raise ConfigTypeError("reps_a and reps_b must both be dicts or both be tensors.")
        if self._mode is not None and mode != self._mode:
            raise ConfigTypeError(f"this accumulator was fed {self._mode}s before; got a {mode} now.")
        if mode == "dict":
            items_a = as_items(reps_a, "reps_a")
            items_b = None if reps_b is None else as_items(reps_b, "reps_b")
            names_a = list(reps_a.keys())
            names_b = names_a if reps_b is None else list(reps_b.keys())
        else:
            items_a = [("a", reps_a)]
            items_b = None if reps_b is None else [("b", reps_b)]
            names_a, names_b = ["a"], ["b"] if reps_b is not None else ["a"]
        if self._names_a is not None and (names_a != self._names_a or names_b != self._names_b):
            raise ConfigError(
                f"layers changed between minibatches: first {self._names_a} x {self._names_b}, "
                f"now {names_a} x {names_b}."
            )
        n = common_rows(items_a + (items_b or []))
        check_debiased_n(n, "each minibatch of MinibatchCKA")
        if self.kernel == "linear" and self.method == "auto":
            ua = batch_u_grams(items_a, n)
            ub = ua if items_b is None else batch_u_grams(items_b, n).to(ua.device)
            norm = hsic_norm(n, True)
            cross = (ua @ ub.T) / norm
            sa = (ua * ua).sum(dim=1) / norm
            sb = sa if items_b is None else (ub * ub).sum(dim=1) / norm
        else:
            cross, sa, sb = pairwise_hsic(items_a, items_b, self.kernel, self.sigma, True, self.method)
        if self._cross is None:
            self._mode, self._names_a, self._names_b = mode, names_a, names_b
            self._cross, self._self_a, self._self_b = cross.clone(), sa.clone(), sb.clone()
        else:
            self._cross += cross.to(self._cross.device)
            self._self_a += sa.to(self._self_a.device)
            self._self_b += sb.to(self._self_b.device)
        self.n_batches += 1
        self.n_samples += n

    def compute(self) -> float | pd.DataFrame:
        """CKA from the averaged HSIC_1 terms: a float (tensor mode) or a DataFrame (dict mode)."""
        if self._cross is None:
            raise UsageError("MinibatchCKA.compute() called before any update(); feed it batches first.")
        k = float(self.n_batches)
        values = cka_from_hsic(
            self._cross / k, self._self_a / k, self._self_b / k, self._names_a, self._names_b
        )
        if self._mode == "tensor":
            return float(values[0, 0])
        df = pd.DataFrame(
            values.cpu().numpy(),
            index=pd.Index(self._names_a, name="first_layer"),
            columns=pd.Index(self._names_b, name="second_layer"),
        )
        describe(df, self.kernel, True, minibatch=True, n_batches=self.n_batches)
        return df
