"""The pure metric derivations: tidy STIR and CKA tables -> per-layer metrics and flows.

Definitions (ALGORITHMS.md §4; ``m^[i]`` is layer ``i`` of model ``m``, pt/ft the pretrained and
finetuned roles):

- ``forgetting_i = STIR(pt^[i] | pt^[i]) - STIR(ft^[i] | pt^[i])`` (eq. 2);
- ``learning_i = STIR(ft^[i] | ft^[i]) - STIR(pt^[i] | ft^[i])`` (eq. 3); the first terms are
  *measured* from the same inversions (an exact copy gives exactly 0, inversion error cancels);
  ``first_term="one"`` uses the paper's 1;
- ``cka_divergence_i = 1 - CKA(ft^[i](X), pt^[i](X))`` (eq. 4);
- ``flow[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[j])`` (eq. 5 as printed, antisymmetric),
  rows pretrained layer ``i``, columns finetuned layer ``j``; ``flow_relative[i, j] =
  STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i])`` (relative to the diagonal). Both have an
  exactly zero diagonal.

Nothing here runs a model: every function maps tables to tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ftlens.errors import ConfigError
from ftlens.invariance.score import FINETUNED, PRETRAINED

__all__ = ["FIRST_TERMS", "derive_metrics"]

FIRST_TERMS = ("measured", "one")


def _matrix(stir_df: pd.DataFrame, target: str, reference: str, seed: int, layers: list[str]) -> np.ndarray:
    """``M[a, b] = STIR(target^[a] | reference^[b])`` of one seed, rows/columns in ``layers`` order."""
    sub = stir_df[(stir_df["target"] == target) & (stir_df["reference"] == reference) & (stir_df["seed"] == seed)]
    piv = sub.pivot(index="target_layer", columns="reference_layer", values="stir")
    return piv.reindex(index=layers, columns=layers).to_numpy(dtype=np.float64)


def _std(values: np.ndarray) -> np.ndarray:
    """Sample std over seeds (axis 0, ddof=1); NaN with a single seed."""
    if values.shape[0] < 2:
        return np.full(values.shape[1:], np.nan)
    return values.std(axis=0, ddof=1)


def derive_metrics(
    stir_df: pd.DataFrame,
    cka_df: pd.DataFrame,
    layers: Sequence[str],
    *,
    first_term: str = "measured",
    layer_numbers: Sequence[int] | None = None,
) -> dict[str, pd.DataFrame]:
    """Per-layer learning / forgetting / cka divergence and both flow matrices from the tidy tables.

    Args:
        stir_df: tidy STIR table with targets and references ``pretrained``/``finetuned``.
        cka_df: tidy clean-image CKA table (``model_a, layer_a, model_b, layer_b, seed, cka``).
        layers: the layers, in order.
        first_term: ``"measured"`` (STIR of the layer with itself, from the same inversions) or
            ``"one"`` (the paper's ``1 - STIR`` form).
        layer_numbers: each layer's 1-based position in its model (default ``1..L``).

    Returns:
        ``{"per_layer", "per_seed", "flow", "flow_std", "flow_relative", "flow_relative_std"}``.
    """
    if first_term not in FIRST_TERMS:
        raise ConfigError(f"first_term must be one of {FIRST_TERMS}, got {first_term!r}")
    layers = list(layers)
    seeds = sorted(stir_df["seed"].unique().tolist())
    L = len(layers)
    diag = np.arange(L)
    per_seed_rows = []
    flows, rels = [], []
    for seed in seeds:
        m_pp = _matrix(stir_df, PRETRAINED, PRETRAINED, seed, layers)
        m_fp = _matrix(stir_df, FINETUNED, PRETRAINED, seed, layers)
        m_ff = _matrix(stir_df, FINETUNED, FINETUNED, seed, layers)
        m_pf = _matrix(stir_df, PRETRAINED, FINETUNED, seed, layers)
        # M[a, b] = STIR(ft^[a] | pt^[b]); flow[i, j] = M[j, i] - M[i, j] (eq. 5)
        flows.append(m_fp.T - m_fp)
        # flow_relative[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i]) = M[j, i] - M[i, i]
        rels.append(m_fp.T - np.diag(m_fp)[:, None])
        res = stir_df[stir_df["seed"] == seed].drop_duplicates(["reference", "reference_layer"])
        res = res.set_index(["reference", "reference_layer"])["residual"]
        cka = cka_df[(cka_df["seed"] == seed) & (cka_df["model_a"] == FINETUNED) & (cka_df["model_b"] == PRETRAINED)]
        cka = cka[cka["layer_a"] == cka["layer_b"]].set_index("layer_a")["cka"]
        for k, layer in enumerate(layers):
            s_pp, s_fp, s_ff, s_pf = m_pp[k, k], m_fp[k, k], m_ff[k, k], m_pf[k, k]
            first_f = s_pp if first_term == "measured" else 1.0
            first_l = s_ff if first_term == "measured" else 1.0
            c = float(cka.get(layer, np.nan))
            per_seed_rows.append({
                "layer": layer,
                "seed": seed,
                "learning": first_l - s_pf,
                "forgetting": first_f - s_fp,
                "cka_divergence": 1.0 - c,
                "cka": c,
                "stir_pt_pt": s_pp,
                "stir_ft_ft": s_ff,
                "stir_ft_given_pt": s_fp,
                "stir_pt_given_ft": s_pf,
                "residual_pt": float(res.get((PRETRAINED, layer), np.nan)),
                "residual_ft": float(res.get((FINETUNED, layer), np.nan)),
            })
    per_seed = pd.DataFrame(per_seed_rows)
    value_cols = [c for c in per_seed.columns if c not in ("layer", "seed")]
    stacked = {c: np.stack([per_seed[per_seed["seed"] == s].set_index("layer").loc[layers, c].to_numpy(float)
                            for s in seeds]) for c in value_cols}
    per_layer = pd.DataFrame(index=pd.Index(layers, name="layer"))
    per_layer["layer_number"] = np.arange(1, L + 1) if layer_numbers is None else [int(k) for k in layer_numbers]
    for c in ("learning", "forgetting", "cka_divergence"):
        per_layer[c] = stacked[c].mean(axis=0)
        per_layer[f"{c}_std"] = _std(stacked[c])
    for c in ("stir_pt_pt", "stir_ft_ft", "stir_ft_given_pt", "stir_pt_given_ft", "cka", "residual_pt", "residual_ft"):
        per_layer[c] = stacked[c].mean(axis=0)
    per_layer["n_seeds"] = len(seeds)
    estimator = stir_df["estimator"].iloc[0] if "estimator" in stir_df and len(stir_df) else "biased"
    per_layer.attrs.update({"estimator": estimator, "first_term": first_term})

    def frame(values: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(values, index=pd.Index(layers, name="pretrained_layer"),
                          columns=pd.Index(layers, name="finetuned_layer"))
        df.attrs["estimator"] = estimator
        return df

    flow_arr, rel_arr = np.stack(flows), np.stack(rels)
    flow_mean, rel_mean = flow_arr.mean(axis=0), rel_arr.mean(axis=0)
    flow_mean[diag, diag] = 0.0  # already exactly 0 (x - x); written to make the contract explicit
    rel_mean[diag, diag] = 0.0
    return {
        "per_layer": per_layer,
        "per_seed": per_seed,
        "flow": frame(flow_mean),
        "flow_std": frame(_std(flow_arr)),
        "flow_relative": frame(rel_mean),
        "flow_relative_std": frame(_std(rel_arr)),
    }
