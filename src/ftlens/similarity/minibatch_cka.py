"""Minibatch CKA (Nguyen et al. 2021): the unbiased HSIC_1 terms averaged over minibatches, for
representations too large to hold at once. An accumulator, not a registered ``measure(a, b)``:
for one batch it equals :data:`ftlens.similarity.cka.LINEAR_CKA_DEBIASED`.

Linear kernel: each layer's U-centred Gram is formed once per batch (:func:`batch_u_grams`)
and every layer pair's HSIC_1 comes from one product of the stacked Grams. The Gram of float32
features is a float32 product of the column-centred features (on CUDA only when float32
matmuls are not TF32); the U-centring of the Gram, HSIC and CKA are float64.
Memory is the Grams of one batch (``L * b^2``), whatever the number of batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from ftlens.errors import ConfigError, ConfigTypeError, NumericalError, UsageError
from ftlens.similarity.cka import describe
from ftlens.similarity.gram import hsic_norm
from ftlens.similarity.inputs import CONSTANT_RTOL, DTYPE, check_debiased_n, check_kernel
from ftlens.similarity.pairwise import as_items, cka_from_hsic, common_rows, pairwise_hsic

__all__ = ["MinibatchCKA", "batch_u_grams"]


#: below this fraction of its squared norm, a centred batch is checked for being exactly constant
_SUSPECT = 1e-8


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 features keep a float32 Gram product unless TF32 would round it (CUDA)."""
    if x.dtype == torch.float32 and (x.device.type != "cuda" or torch.get_float32_matmul_precision() == "highest"):
        return torch.float32
    return DTYPE


def batch_u_grams(items: list[tuple[str, Any]], n: int, batches: int = 1) -> torch.Tensor:
    """``(batches, L, n*n)`` float64 U-centred linear Grams: item ``l``'s rows ``b*n .. (b+1)*n``
    are batch ``b`` (``items``: ``(name, representation (batches * n, ...))``).

    A few tensor operations per item for all batches at once (a bmm of the centred features),
    then one U-centring of every Gram: on a busy CPU each operation costs a thread wake-up, so
    their number matters as much as their FLOPs. A batch that is constant gives a zero Gram (its
    CKA is then NaN with a warning); NaN or inf is a :class:`NumericalError` naming the item.
    """
    first = items[0][1]
    device = first.device if isinstance(first, torch.Tensor) and first.device.type == "cuda" else None
    grams = torch.empty((len(items), batches, n, n), dtype=DTYPE, device=device)
    norms = torch.empty((len(items), batches), dtype=DTYPE, device=device)
    for i, (_name, raw) in enumerate(items):
        x = torch.as_tensor(raw).detach()
        if device is not None:
            x = x.to(device)
        x = x.reshape(batches, n, -1)
        x = x.to(_product_dtype(x) if x.is_floating_point() else DTYPE)
        # centring only conditions the product: the U-centred Gram is the same for any shift of the rows
        mean = x.mean(dim=1, keepdim=True)
        xc = x - mean
        grams[i] = torch.bmm(xc, xc.transpose(1, 2))
        del xc
        norms[i] = n * mean.square().sum(dim=(1, 2))  # ||x||^2 = ||x_c||^2 + n ||mean||^2
    finite = torch.isfinite(grams).all(dim=(1, 2, 3))
    if not bool(finite.all()):
        name = items[int((~finite).nonzero()[0, 0])][0]
        raise NumericalError(f"{name} contains NaN/inf values; similarity needs finite representations "
                             "(a diverged model or checkpoint gives NaN activations)")
    centred = grams.diagonal(dim1=-2, dim2=-1).sum(-1)  # ||x_c||^2 per item and batch
    for i, b in (centred <= _SUSPECT * (centred + norms)).nonzero().tolist():  # rare: is it exactly constant?
        x = torch.as_tensor(items[i][1]).detach().reshape(batches, n, -1)[b]
        if bool((x == x[:1]).all()) or (x.dtype == DTYPE and float(centred[i, b]) <= CONSTANT_RTOL**2 * float(
                x.square().sum())):
            grams[i, b] = 0.0  # constant over the batch: its HSIC with anything is 0
    # U-centring (Szekely & Rizzo) of every Gram at once: zero diagonal, remove row/column means
    grams.diagonal(dim1=-2, dim2=-1).zero_()
    col = grams.sum(dim=-2) / (n - 2)
    total = grams.sum(dim=(-2, -1)) / ((n - 1) * (n - 2))
    grams -= col[..., None, :]
    grams -= col[..., :, None]
    grams += total[..., None, None]
    grams.diagonal(dim1=-2, dim2=-1).zero_()
    return grams.reshape(len(items), batches, n * n).transpose(0, 1)


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

    def update(self, reps_a: Any, reps_b: Any = None, *, batches: int = 1) -> None:
        """Add one minibatch: tensors (n, ...) or dicts ``{layer: (n, ...)}`` of the same n inputs.

        ``batches=k``: the rows are ``k`` consecutive minibatches of equal size (the same as ``k``
        calls with their slices, in fewer and larger tensor operations; linear kernel only)."""
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
        rows = common_rows(items_a + (items_b or []))
        if batches < 1 or rows % batches:
            raise ConfigError(f"batches={batches} does not divide the {rows} rows into equal minibatches")
        n = rows // batches
        check_debiased_n(n, "each minibatch of MinibatchCKA")
        if self.kernel == "linear" and self.method == "auto":
            ua = batch_u_grams(items_a, n, batches)  # (batches, L_a, n*n)
            ub = ua if items_b is None else batch_u_grams(items_b, n, batches).to(ua.device)
            norm = hsic_norm(n, True)
            cross = torch.bmm(ua, ub.transpose(1, 2)).sum(0) / norm
            sa = (ua * ua).sum(dim=(0, 2)) / norm
            sb = sa if items_b is None else (ub * ub).sum(dim=(0, 2)) / norm
        elif batches != 1:
            raise ConfigError("batches > 1 is for the linear kernel with method='auto'; feed other minibatches one by one")
        else:
            cross, sa, sb = pairwise_hsic(items_a, items_b, self.kernel, self.sigma, True, self.method)
        if self._cross is None:
            self._mode, self._names_a, self._names_b = mode, names_a, names_b
            self._cross, self._self_a, self._self_b = cross.clone(), sa.clone(), sb.clone()
        else:
            self._cross += cross.to(self._cross.device)
            self._self_a += sa.to(self._self_a.device)
            self._self_b += sb.to(self._self_b.device)
        self.n_batches += batches
        self.n_samples += rows

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
