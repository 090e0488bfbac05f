"""Two state dicts -> the tidy tables of a weight-space diff (pure: tensors in, DataFrames out).

Every floating tensor present in either model is one row of the *tensor table*; the *layer table*
aggregates the tensors under each analysis layer (a layer ``blocks.3`` holds every tensor named
``blocks.3.*``); the *spectrum table* holds the singular values of every matrix's ``ΔW``.
Everything is float64 on the CPU; ``ΔW = W_ft - W_pt`` unless an exact ``ΔW`` is given (a LoRA
adapter's own ``B A * scale``), and then ``W_ft = W_pt + ΔW``.

Definitions (``a = W_pt``, ``b = W_ft``, ``Δ = b - a``, over one tensor or, per layer, over all
its parameters concatenated; buffers never count in a layer's change):

- ``relative_change = ||Δ|| / ||a||`` (Frobenius / L2; NaN when ``a = 0`` moved, 0 when it did not);
- ``cosine = <a, b> / (||a|| ||b||)``, computed as ``1 + (||a|| - ||b||)^2 / (2 ||a|| ||b||) -
  ||Δ||^2 / (2 ||a|| ||b||)``, which is exactly 1 when ``Δ = 0``;
- ``rank`` (singular values above ``max(m, n) * eps`` of the stored dtype times the largest),
  ``effective_rank``, ``stable_rank``, ``top_singular_value`` of ``Δ`` read as a matrix
  (:mod:`~ftlens.analysis.weight_space.spectrum`); a layer's ``effective_rank`` and
  ``stable_rank`` are the means over its matrices weighted by ``||Δ||^2`` (0 when nothing moved);
- BatchNorm running statistics: ``bn_mean_shift``, the root mean square over channels of
  ``(mu_ft - mu_pt) / sqrt(var_pt + eps)`` (how far each channel's mean moved, in pretrained
  standard deviations), and ``bn_log_var_ratio``, the root mean square of ``log((var_ft + eps) /
  (var_pt + eps))``; per layer over all its BatchNorm channels; NaN for a layer without any.

A tensor whose shape differs between the models (a new classification head) or that only one
model has is listed with its ``status`` and no change values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ftlens.analysis.weight_space.spectrum import (
    as_matrix,
    effective_rank,
    numerical_rank,
    rank_rtol,
    stable_rank,
)

__all__ = ["LAYER_COLUMNS", "SPECTRUM_COLUMNS", "TENSOR_COLUMNS", "cosine_from_norms", "diff_tables"]

TENSOR_COLUMNS = ["tensor", "layer", "layer_number", "kind", "shape", "numel", "status", "source", "norm_pretrained",
                  "norm_finetuned", "norm_delta", "relative_change", "cosine", "rank", "effective_rank",
                  "stable_rank", "top_singular_value", "bn_mean_shift", "bn_log_var_ratio"]
LAYER_COLUMNS = ["layer", "layer_number", "n_tensors", "n_parameters", "norm_pretrained", "norm_delta",
                 "relative_change", "cosine", "effective_rank", "stable_rank", "bn_mean_shift", "bn_log_var_ratio",
                 "shape_differs"]
SPECTRUM_COLUMNS = ["tensor", "layer", "layer_number", "index", "singular_value"]
BN_EPS = 1e-5  # BatchNorm's default eps, used when the module's own is not given


def cosine_from_norms(na: float, nb: float, nd: float) -> float:
    """``<a, b> / (||a|| ||b||)`` from ``||a||``, ``||b||`` and ``||a - b||``; exactly 1 when ``||a - b|| = 0``."""
    if na <= 0.0 or nb <= 0.0:
        return float("nan")
    return 1.0 + (na - nb) ** 2 / (2.0 * na * nb) - nd * nd / (2.0 * na * nb)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _owner(name: str, prefixes: Sequence[str]) -> str | None:
    """The longest prefix ``p`` with ``name`` under ``p.`` (the innermost analysis layer holding the tensor)."""
    best = None
    for p in prefixes:
        if name.startswith(p + ".") and (best is None or len(p) > len(best)):
            best = p
    return best


def _bn_stats(name: str, pt: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
              eps: Mapping[str, float]) -> tuple[float, float] | None:
    """``(mean shift RMS, log var ratio RMS)`` of the BatchNorm module owning running_mean ``name``."""
    module = name[: -len(".running_mean")]
    var = module + ".running_var"
    if var not in pt or var not in ft or pt[name].shape != ft[name].shape or pt[var].shape != ft[var].shape:
        return None
    e = float(eps.get(module, BN_EPS))
    va, vb = _f64(pt[var]), _f64(ft[var])
    shift = (_f64(ft[name]) - _f64(pt[name])) / (va + e).sqrt()
    ratio = ((vb + e) / (va + e)).log()
    return float(shift.square().mean().sqrt()), float(ratio.square().mean().sqrt())


def diff_tables(
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    layers: Sequence[tuple[str, int, str | None]],
    *,
    parameters: set[str],
    deltas: Mapping[str, torch.Tensor] | None = None,
    bn_eps: Mapping[str, float] | None = None,
    spectrum: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(layer table, tensor table, spectrum table)`` of two state dicts.

    Args:
        pretrained, finetuned: ``{name: tensor}`` (state dicts; non-floating tensors are skipped).
        layers: ``(layer, layer_number, module prefix)`` in order; prefix None: a layer without
            weights of its own (e.g. ``pre_logits``, read at a module's input).
        parameters: the names that are parameters (the others are buffers).
        deltas: exact ``ΔW`` for some parameters (same shape), e.g. a LoRA adapter's.
        bn_eps: the eps of each BatchNorm module (by module name).
        spectrum: compute the singular spectrum of every matrix's ``ΔW`` (the SVDs are the cost).
    """
    deltas = dict(deltas or {})
    eps = dict(bn_eps or {})
    prefixes = [p for _, _, p in layers if p]
    number_of = {p: n for _, n, p in layers if p}
    names = list(pretrained) + [k for k in finetuned if k not in pretrained]
    rows, spec_rows = [], []
    for name in names:
        a, b = pretrained.get(name), finetuned.get(name)
        t = a if a is not None else b
        if not t.is_floating_point():
            continue
        owner = _owner(name, prefixes)
        row = dict.fromkeys(TENSOR_COLUMNS, np.nan)
        row.update(tensor=name, layer=owner or "", layer_number=number_of.get(owner, np.nan),
                   kind="parameter" if name in parameters else "buffer", shape="x".join(map(str, t.shape)) or "scalar",
                   numel=int(t.numel()), source="difference")
        if a is None or b is None:
            row["status"] = "only finetuned" if a is None else "only pretrained"
            rows.append(row)
            continue
        if a.shape != b.shape:
            row["status"] = "shape differs"
            row["shape"] = f"{row['shape']} -> {'x'.join(map(str, b.shape)) or 'scalar'}"
            rows.append(row)
            continue
        wa = _f64(a)
        if name in deltas:
            delta = _f64(deltas[name]).reshape(wa.shape)
            wb = wa + delta
            row["source"] = "adapter"
        else:
            wb = _f64(b)
            delta = wb - wa
        na, nb, nd = (float(torch.linalg.vector_norm(v)) for v in (wa, wb, delta))
        row.update(status="same shape", norm_pretrained=na, norm_finetuned=nb, norm_delta=nd,
                   relative_change=nd / na if na > 0 else (0.0 if nd == 0 else np.nan),
                   cosine=cosine_from_norms(na, nb, nd))
        m = as_matrix(delta) if spectrum and row["kind"] == "parameter" else None
        if m is not None:
            s = torch.zeros(0, dtype=torch.float64) if nd == 0 else torch.linalg.svdvals(m)
            stored = torch.float64 if name in deltas else torch.promote_types(a.dtype, b.dtype)
            row.update(rank=numerical_rank(s, rank_rtol(tuple(m.shape), stored)), effective_rank=effective_rank(s), stable_rank=stable_rank(s),
                       top_singular_value=float(s[0]) if s.numel() else 0.0)
            spec_rows.extend((name, owner or "", row["layer_number"], k, float(v))
                             for k, v in enumerate(s.tolist(), start=1))
        if name.endswith(".running_mean"):
            bn = _bn_stats(name, pretrained, finetuned, eps)
            if bn is not None:
                row["bn_mean_shift"], row["bn_log_var_ratio"] = bn
        rows.append(row)
    tensors = pd.DataFrame(rows, columns=TENSOR_COLUMNS)
    spectra = pd.DataFrame(spec_rows, columns=SPECTRUM_COLUMNS)
    per_layer = pd.DataFrame([_layer_row(tensors, layer, number, prefix) for layer, number, prefix in layers],
                             columns=LAYER_COLUMNS).set_index("layer")
    return per_layer, tensors, spectra


def _rms(values: pd.Series, weights: pd.Series) -> float:
    ok = values.notna()
    w = weights[ok].astype(float)
    return float(np.sqrt((w * values[ok] ** 2).sum() / w.sum())) if w.sum() > 0 else float("nan")


def _layer_row(tensors: pd.DataFrame, layer: str, number: int, prefix: str | None) -> dict:
    """The aggregate over every tensor under ``prefix`` (nested layers included)."""
    under = tensors[tensors["tensor"].str.startswith(prefix + ".")] if prefix else tensors.iloc[:0]
    params = under[(under["kind"] == "parameter") & (under["status"] == "same shape")]
    na = math.sqrt(float((params["norm_pretrained"] ** 2).sum()))
    nb = math.sqrt(float((params["norm_finetuned"] ** 2).sum()))
    nd = math.sqrt(float((params["norm_delta"] ** 2).sum()))
    mats = params[params["effective_rank"].notna()]
    w = mats["norm_delta"] ** 2
    mean_rank = {c: (float((w * mats[c]).sum() / w.sum()) if w.sum() > 0 else (0.0 if len(mats) else np.nan))
                 for c in ("effective_rank", "stable_rank")}
    bn = under[under["tensor"].str.endswith(".running_mean") & under["bn_mean_shift"].notna()]
    return {
        "layer": layer, "layer_number": number, "n_tensors": len(under), "n_parameters": int(params["numel"].sum()),
        "norm_pretrained": na if len(params) else np.nan, "norm_delta": nd if len(params) else np.nan,
        "relative_change": (nd / na if na > 0 else np.nan) if len(params) else np.nan,
        "cosine": cosine_from_norms(na, nb, nd) if len(params) else np.nan,
        **mean_rank,
        "bn_mean_shift": _rms(bn["bn_mean_shift"], bn["numel"]),
        "bn_log_var_ratio": _rms(bn["bn_log_var_ratio"], bn["numel"]),
        "shape_differs": int((under["status"] != "same shape").sum()),
    }
