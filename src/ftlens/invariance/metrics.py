"""The pure metric derivations: tidy STIR and CKA tables -> per-layer metrics and flows.

Definitions (ALGORITHMS.md §4; ``m^[i]`` is layer ``i`` of model ``m``, pt/ft abbreviate the
pretrained and finetuned roles in formulas; column names spell them out, :mod:`ftlens.vocabulary`):

- ``forgetting_i = STIR(pt^[i] | pt^[i]) - STIR(ft^[i] | pt^[i])`` (eq. 2);
- ``learning_i = STIR(ft^[i] | ft^[i]) - STIR(pt^[i] | ft^[i])`` (eq. 3); the first terms are
  *measured* from the same inversions (an exact copy gives exactly 0, inversion error cancels);
  ``first_term="one"`` uses the paper's 1;
- ``cka_divergence_i = 1 - CKA(ft^[i](X), pt^[i](X))`` (eq. 4);
- ``flow[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[j])`` (eq. 5 as printed, antisymmetric),
  rows pretrained layer ``i``, columns finetuned layer ``j``; ``flow_relative[i, j] =
  STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i])`` (relative to the diagonal). Both have an
  exactly zero diagonal.
- ``flow_baseline``: the same two matrices of the pretrained model with itself (``ft = pt``:
  ``STIR(pt^[j] | pt^[i]) - STIR(pt^[i] | pt^[j])``), from the pretrained-side inversions
  scored on the pretrained model (no extra inversion); ``flow_corrected = flow -
  flow_baseline`` (per seed, then averaged), exactly 0 for an exact copy.
- intervals: per-layer ``<metric>_lo`` / ``<metric>_hi`` at ``confidence``: the wider of the t
  interval over seeds and the normal bootstrap interval of the seed mean (its spread under
  resampling the images within each seed, centred on the estimate; :mod:`ftlens.stats`).
- ``converged``: every inversion of the layer (both models, every seed) ends with a mean
  relative residual at most ``residual_threshold``.

Nothing here runs a model: every function maps tables to tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ftlens.errors import ConfigError
from ftlens.settings import PAPER
from ftlens.stats import bootstrap_interval, t_interval
from ftlens.vocabulary import FINETUNED, PRETRAINED, ROLES, residual_column, stir_column

__all__ = ["FIRST_TERMS", "FLOW_TABLES", "METRICS", "STIR_TERMS", "derive_metrics"]

#: the per-layer metrics that carry intervals
METRICS = ("learning", "forgetting", "cka_divergence")
#: the layer x layer tables of a comparison (mean over seeds; each also has a ``_std`` twin)
FLOW_TABLES = ("flow", "flow_relative", "flow_baseline", "flow_relative_baseline", "flow_corrected",
               "flow_relative_corrected")

FIRST_TERMS = ("measured", "one")
#: the per-layer STIR columns, ``stir_<target>_given_<reference>`` for the four role pairs
STIR_TERMS = tuple(stir_column(t, r) for t, r in ((PRETRAINED, PRETRAINED), (FINETUNED, FINETUNED),
                                                   (FINETUNED, PRETRAINED), (PRETRAINED, FINETUNED)))
#: the per-layer mean inversion residual of each role
RESIDUALS = tuple(residual_column(role) for role in ROLES)


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
    bootstrap: pd.DataFrame | None = None,
    confidence: float = PAPER.confidence,
    residual_threshold: float = PAPER.residual_threshold,
) -> dict[str, pd.DataFrame]:
    """Per-layer learning / forgetting / cka divergence and both flow matrices from the tidy tables.

    Args:
        stir_df: tidy STIR table with targets and references ``pretrained``/``finetuned``.
        cka_df: tidy clean-image CKA table (``model, layer, pretrained_layer, seed, cka``; the
            number columns are optional).
        layers: the layers, in order.
        first_term: ``"measured"`` (STIR of the layer with itself, from the same inversions) or
            ``"one"`` (the paper's ``1 - STIR`` form).
        layer_numbers: each layer's 1-based position in its model (default ``1..L``).
        bootstrap: replicates of the per-layer STIR / CKA values (``BOOTSTRAP_COLUMNS`` of
            :mod:`ftlens.invariance.score`); without it the intervals are over seeds only.
        confidence: level of the intervals.
        residual_threshold: the largest mean relative residual of a converged inversion.

    Returns:
        ``{"per_layer", "per_seed", "flows_per_seed"}`` and every table of :data:`FLOW_TABLES`
        with its ``<name>_std``; ``flows_per_seed[name]`` is the (seeds, L, L) array.
    """
    if first_term not in FIRST_TERMS:
        raise ConfigError(f"first_term must be one of {FIRST_TERMS}, got {first_term!r}")
    layers = list(layers)
    seeds = sorted(stir_df["seed"].unique().tolist())
    L = len(layers)
    numbers = list(range(1, L + 1)) if layer_numbers is None else [int(k) for k in layer_numbers]
    diag = np.arange(L)
    per_seed_rows = []
    per_seed_flows: dict[str, list[np.ndarray]] = {name: [] for name in FLOW_TABLES}
    for seed in seeds:
        m_pp = _matrix(stir_df, PRETRAINED, PRETRAINED, seed, layers)
        m_fp = _matrix(stir_df, FINETUNED, PRETRAINED, seed, layers)
        m_ff = _matrix(stir_df, FINETUNED, FINETUNED, seed, layers)
        m_pf = _matrix(stir_df, PRETRAINED, FINETUNED, seed, layers)
        # M[a, b] = STIR(ft^[a] | pt^[b]); flow[i, j] = M[j, i] - M[i, j] (eq. 5)
        # flow_relative[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i]) = M[j, i] - M[i, i]
        # the baselines: the same with the pretrained model as target (m_pp instead of m_fp)
        flow, rel = m_fp.T - m_fp, m_fp.T - np.diag(m_fp)[:, None]
        base, base_rel = m_pp.T - m_pp, m_pp.T - np.diag(m_pp)[:, None]
        for name, value in (("flow", flow), ("flow_relative", rel), ("flow_baseline", base),
                            ("flow_relative_baseline", base_rel), ("flow_corrected", flow - base),
                            ("flow_relative_corrected", rel - base_rel)):
            per_seed_flows[name].append(value)
        res = stir_df[stir_df["seed"] == seed].drop_duplicates(["reference", "reference_layer"])
        res = res.set_index(["reference", "reference_layer"])["residual"]
        cka = cka_df[(cka_df["seed"] == seed) & (cka_df["model"] == FINETUNED)]
        cka = cka[cka["layer"] == cka["pretrained_layer"]].set_index("layer")["cka"]
        for k, layer in enumerate(layers):
            s_pp, s_fp, s_ff, s_pf = m_pp[k, k], m_fp[k, k], m_ff[k, k], m_pf[k, k]
            first_f = s_pp if first_term == "measured" else 1.0
            first_l = s_ff if first_term == "measured" else 1.0
            c = float(cka.get(layer, np.nan))
            per_seed_rows.append({
                "layer": layer,
                "layer_number": numbers[k],
                "seed": seed,
                "learning": first_l - s_pf,
                "forgetting": first_f - s_fp,
                "cka_divergence": 1.0 - c,
                "cka": c,
                **dict(zip(STIR_TERMS, (s_pp, s_ff, s_fp, s_pf), strict=True)),
                **{residual_column(role): float(res.get((role, layer), np.nan)) for role in ROLES},
            })
    per_seed = pd.DataFrame(per_seed_rows)
    value_cols = [c for c in per_seed.columns if c not in ("layer", "layer_number", "seed")]
    stacked = {c: np.stack([per_seed[per_seed["seed"] == s].set_index("layer").loc[layers, c].to_numpy(float)
                            for s in seeds]) for c in value_cols}
    per_layer = pd.DataFrame(index=pd.Index(layers, name="layer"))
    per_layer["layer_number"] = numbers
    boot = _bootstrap_means(bootstrap, layers, seeds, first_term) if bootstrap is not None and len(bootstrap) else {}
    for c in METRICS:
        per_layer[c] = stacked[c].mean(axis=0)
        per_layer[f"{c}_std"] = _std(stacked[c])
        lo, hi = t_interval(stacked[c], confidence)
        if c in boot:
            b_lo, b_hi = bootstrap_interval(per_layer[c].to_numpy(), boot[c], confidence)
            lo, hi = np.fmin(lo, b_lo), np.fmax(hi, b_hi)  # the wider of the two (fmin/fmax skip NaN)
        per_layer[f"{c}_lo"], per_layer[f"{c}_hi"] = lo, hi
    for c in (*STIR_TERMS, "cka", *RESIDUALS):
        per_layer[c] = stacked[c].mean(axis=0)
    worst = np.fmax(*(stacked[c] for c in RESIDUALS)).max(axis=0)
    per_layer["residual_max"] = worst
    per_layer["converged"] = worst <= residual_threshold
    per_layer["n_seeds"] = len(seeds)
    estimator = stir_df["estimator"].iloc[0] if "estimator" in stir_df and len(stir_df) else "biased"
    per_layer.attrs.update({"estimator": estimator, "first_term": first_term, "confidence": confidence,
                            "residual_threshold": residual_threshold,
                            "interval": "the wider of the t interval over seeds and the bootstrap (images) "
                                        "interval of the seed mean" if boot else "t interval over seeds"})

    def frame(values: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(values, index=pd.Index(layers, name="pretrained_layer"),
                          columns=pd.Index(layers, name="finetuned_layer"))
        df.attrs["estimator"] = estimator
        return df

    out: dict = {"per_layer": per_layer, "per_seed": per_seed, "flows_per_seed": {}}
    for name, values in per_seed_flows.items():
        arr = np.stack(values)
        mean = arr.mean(axis=0)
        mean[diag, diag] = 0.0  # already exactly 0 (x - x); written to make the contract explicit
        out[name], out[f"{name}_std"] = frame(mean), frame(_std(arr))
        out["flows_per_seed"][name] = arr
    return out


def _bootstrap_means(boot: pd.DataFrame, layers: list[str], seeds: list[int], first_term: str) -> dict[str, np.ndarray]:
    """``{metric: (replicates, L)}``: each bootstrap replicate's per-layer metric, averaged over seeds."""
    def values(quantity: str, target: str, reference: str) -> np.ndarray:
        sub = boot[(boot["quantity"] == quantity) & (boot["target"] == target) & (boot["reference"] == reference)]
        piv = sub.pivot_table(index=["seed", "replicate"], columns="layer", values="value")
        arr = piv.reindex(columns=layers).to_numpy(np.float64)
        n_rep = sub["replicate"].nunique()
        return arr.reshape(len(seeds), n_rep, len(layers))  # (seeds, replicates, L), rows sorted by seed

    try:
        s_pp = values("stir", PRETRAINED, PRETRAINED)
        s_fp = values("stir", FINETUNED, PRETRAINED)
        s_ff = values("stir", FINETUNED, FINETUNED)
        s_pf = values("stir", PRETRAINED, FINETUNED)
        cka = values("cka", FINETUNED, PRETRAINED)
    except ValueError:  # an incomplete table (e.g. written by an older version): intervals over seeds only
        return {}
    one = first_term == "one"
    return {
        "learning": ((1.0 if one else s_ff) - s_pf).mean(axis=0),
        "forgetting": ((1.0 if one else s_pp) - s_fp).mean(axis=0),
        "cka_divergence": (1.0 - cka).mean(axis=0),
    }
