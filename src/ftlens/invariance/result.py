"""The result of a comparison (:class:`Comparison`) and its persistence (save / load).

A saved comparison is its primary tables (STIR, CKA, inversions) and configuration; every
derived table (per layer, per seed, flows) is recomputed from them on load
(:func:`ftlens.invariance.metrics.derive_metrics`), so a result always matches its definitions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftlens import io
from ftlens.display import ComparisonDisplay
from ftlens.errors import ConfigError, ResultNotFoundError
from ftlens.invariance.metrics import FLOW_TABLES, derive_metrics
from ftlens.invariance.plan import Plan
from ftlens.inversion import Inversion
from ftlens.models import ModelWrapper
from ftlens.settings import PAPER
from ftlens.vocabulary import (
    FINETUNED,
    PRETRAINED,
    add_layer_numbers,
    residual_column,
    stir_column,
    upgrade_columns,
)

__all__ = ["Comparison", "build_comparison", "inversion_table", "load_comparison", "model_info"]


@dataclass
class Comparison(ComparisonDisplay):
    """Learning, forgetting, cka divergence and InvarianceFlow of ``finetuned`` against ``pretrained``.

    Attributes:
        per_layer: DataFrame indexed by ``layer`` (names; ``layer_number`` is 1-based) with
            ``learning``, ``forgetting``, ``cka_divergence`` and their ``*_std`` (sample std
            over seeds, NaN for one seed), the STIR terms ``stir_<target>_given_<reference>``
            (``stir_pretrained_given_pretrained = STIR(pt^[i] | pt^[i])``,
            ``stir_finetuned_given_finetuned``, ``stir_finetuned_given_pretrained = STIR(ft^[i] |
            pt^[i])``, ``stir_pretrained_given_finetuned``), ``cka = CKA(ft^[i], pt^[i])`` and the
            mean inversion residuals ``residual_pretrained`` / ``residual_finetuned`` (means over
            seeds); ``<metric>_lo`` / ``<metric>_hi``: the
            interval (level ``config["confidence"]``) of each metric; ``residual_max`` (the
            worst inversion of the layer) and ``converged`` (``residual_max <=
            config["residual_threshold"]``).
        per_seed: the same per (layer, seed), tidy.
        stir: tidy STIR table (``target, reference, target_layer, target_layer_number,
            reference_layer, reference_layer_number, seed, stir, residual, estimator``) for the
            four (target, reference) pairs of the two models.
        cka: tidy clean-image CKA table: ``CKA(model^[layer], pt^[pretrained_layer])`` with columns
            ``model, layer, layer_number, pretrained_layer, pretrained_layer_number, seed, cka,
            estimator`` (``model``: finetuned or pretrained).
        flow: InvarianceFlow, eq. 5 as printed: rows pretrained layer ``i``, columns
            finetuned layer ``j``, ``STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[j])``
            (antisymmetric, mean over seeds). ``flow_std``: its std over seeds.
        flow_relative: ``STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i])`` (relative to the
            diagonal). ``flow_relative_std``: its std over seeds.
        flow_baseline, flow_relative_baseline: both flows of the pretrained model with itself
            (``ft = pt``), from the pretrained-side inversions: what directionality alone gives.
        flow_corrected, flow_relative_corrected: flow minus its baseline (per seed, then the
            mean): what finetuning changed; exactly 0 for an exact copy. Each has a ``_std``.
        flows_per_seed: ``{table name: (seeds, L, L) array}`` of every flow table.
        bootstrap: per-layer STIR and CKA under resamples of the images within each seed
            (``quantity, target, reference, layer, seed, replicate, value``).
        inversions: one row per inversion (reference, reference_layer, reference_layer_number,
            seed, residuals, seconds, cached, key).
        config: the full configuration, package versions, fingerprints, seeds and timings.
    """

    per_layer: pd.DataFrame
    per_seed: pd.DataFrame
    stir: pd.DataFrame
    cka: pd.DataFrame
    flow: pd.DataFrame
    flow_std: pd.DataFrame
    flow_relative: pd.DataFrame
    flow_relative_std: pd.DataFrame
    inversions: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    flow_baseline: pd.DataFrame | None = None
    flow_baseline_std: pd.DataFrame | None = None
    flow_relative_baseline: pd.DataFrame | None = None
    flow_relative_baseline_std: pd.DataFrame | None = None
    flow_corrected: pd.DataFrame | None = None
    flow_corrected_std: pd.DataFrame | None = None
    flow_relative_corrected: pd.DataFrame | None = None
    flow_relative_corrected_std: pd.DataFrame | None = None
    flows_per_seed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    bootstrap: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def layers(self) -> list[str]:
        return list(self.per_layer.index)

    @property
    def estimator(self) -> str:
        return str(self.config.get("estimator", "biased"))

    def stir_matrix(self, target: str = FINETUNED, reference: str = PRETRAINED, stat: str = "mean") -> pd.DataFrame:
        """``STIR(target^[a] | reference^[b])`` over seeds (``stat``: mean or std).

        Rows ``target_layer`` a, columns ``reference_layer`` b; ``attrs`` names the two roles.
        """
        if target not in (PRETRAINED, FINETUNED) or reference not in (PRETRAINED, FINETUNED):
            raise ConfigError(f"target and reference must be {PRETRAINED!r} or {FINETUNED!r}")
        sub = self.stir[(self.stir["target"] == target) & (self.stir["reference"] == reference)]
        grouped = sub.groupby(["target_layer", "reference_layer"])["stir"]
        values = grouped.mean() if stat == "mean" else grouped.std(ddof=1)
        df = values.unstack("reference_layer").reindex(index=self.layers, columns=self.layers)
        df.index.name, df.columns.name = "target_layer", "reference_layer"
        df.attrs.update({"target": target, "reference": reference, "stat": stat})
        return df

    @property
    def stir_matrices(self) -> dict[tuple[str, str], pd.DataFrame]:
        """``{(target, reference): mean STIR matrix}`` for the four pairs."""
        return {(t, r): self.stir_matrix(t, r) for t in (PRETRAINED, FINETUNED) for r in (PRETRAINED, FINETUNED)}

    def cka_matrix(self, model: str = FINETUNED) -> pd.DataFrame:
        """Clean-image ``CKA(model^[a], pt^[b])`` averaged over seeds; rows ``layer`` a, columns ``pretrained_layer`` b."""
        sub = self.cka[self.cka["model"] == model]
        df = sub.groupby(["layer", "pretrained_layer"])["cka"].mean().unstack("pretrained_layer")
        return df.reindex(index=pd.Index(self.layers, name="layer"),
                          columns=pd.Index(self.layers, name="pretrained_layer"))

    def summary(self) -> pd.DataFrame:
        """A small per-layer table to print (1-based layer numbers)."""
        cols = ["learning", "learning_std", "learning_lo", "learning_hi", "forgetting", "forgetting_std",
                "forgetting_lo", "forgetting_hi", "cka_divergence", "cka_divergence_std", "cka_divergence_lo",
                "cka_divergence_hi", stir_column(PRETRAINED, PRETRAINED), stir_column(FINETUNED, FINETUNED),
                residual_column(PRETRAINED), residual_column(FINETUNED), "converged"]
        out = self.per_layer[[c for c in cols if c in self.per_layer]].copy()
        out.insert(0, "layer_number", self.per_layer["layer_number"])
        out.attrs.update(self.per_layer.attrs)
        return out

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"Comparison({cfg.get('pretrained', {}).get('name')} -> {cfg.get('finetuned', {}).get('name')}, "
            f"{len(self.layers)} layers, seeds={cfg.get('seeds')}, n_images={cfg.get('n_images')}, "
            f"steps={cfg.get('inversion', {}).get('steps')}, CKA estimator={self.estimator})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tables (CSV) and ``comparison.json`` into ``directory`` (atomic writes)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        io.write_table(d / "per_layer.csv", self.per_layer)
        io.write_table(d / "per_seed.csv", self.per_seed.set_index("layer"))
        io.write_table(d / "stir.csv", self.stir.set_index("target"))
        io.write_table(d / "cka.csv", self.cka.set_index("model"))
        io.write_table(d / "inversions.csv", self.inversions.set_index("reference"))
        for name in FLOW_TABLES:
            for suffix in ("", "_std"):
                table = getattr(self, name + suffix)
                if table is not None:
                    io.write_table(d / f"{name}{suffix}.csv", table)
        if self.bootstrap is not None and len(self.bootstrap):
            io.write_table(d / "bootstrap.csv", self.bootstrap.set_index("quantity"))
        io.write_json(d / "comparison.json", self.config)
        return d


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ResultNotFoundError(f"{path} is missing; is {path.parent} a directory written by Comparison.save?")
    return pd.read_csv(path, float_precision="round_trip")


def load_comparison(directory: str | os.PathLike) -> Comparison:
    """Read a :class:`Comparison` written by :meth:`Comparison.save`.

    The primary tables (STIR, CKA, inversions) are read and every derived table (per layer,
    per seed, flows) is recomputed from them with the saved configuration. Column names of
    earlier versions are mapped to the current ones (:func:`ftlens.vocabulary.upgrade_columns`).
    """
    d = Path(directory)
    config = io.read_json(d / "comparison.json") if (d / "comparison.json").exists() else None
    if config is None:
        raise ResultNotFoundError(f"{d / 'comparison.json'} is missing; is {d} a directory written by Comparison.save?")
    stir_df = _read_csv(d / "stir.csv")
    cka_df = _read_csv(d / "cka.csv")
    inv_df = _read_csv(d / "inversions.csv")
    cka_df = upgrade_columns(cka_df)
    for df in (stir_df, cka_df):
        df["seed"] = df["seed"].astype(int)
    boot = _read_csv(d / "bootstrap.csv") if (d / "bootstrap.csv").exists() else None
    return build_comparison(stir_df, cka_df, inv_df, config, boot)


def build_comparison(stir_df: pd.DataFrame, cka_df: pd.DataFrame, inversions: pd.DataFrame, config: dict[str, Any],
                     bootstrap: pd.DataFrame | None = None) -> Comparison:
    """A :class:`Comparison` from its primary tables; every derived table follows from ``config``.

    Every table gets the 1-based ``*_number`` of each of its layer columns from
    ``config["layer_numbers"]`` (default ``1..L``).
    """
    layers = config["layers"]
    numbers = dict(zip(layers, config.get("layer_numbers") or range(1, len(layers) + 1), strict=True))
    stir_df = add_layer_numbers(stir_df, numbers, ("target_layer", "reference_layer"))
    cka_df = add_layer_numbers(cka_df, numbers, ("layer", "pretrained_layer"))
    inversions = add_layer_numbers(inversions, numbers, ("reference_layer",))
    if bootstrap is not None:
        bootstrap = add_layer_numbers(bootstrap, numbers, ("layer",))
    derived = derive_metrics(stir_df, cka_df, config["layers"], first_term=config.get("first_term", "measured"),
                             layer_numbers=config.get("layer_numbers"), bootstrap=bootstrap,
                             confidence=config.get("confidence", PAPER.confidence),
                             residual_threshold=config.get("residual_threshold", PAPER.residual_threshold))
    return Comparison(stir=stir_df, cka=cka_df, inversions=inversions, config=config, bootstrap=bootstrap, **derived)


def model_info(m: ModelWrapper) -> dict[str, Any]:
    return {**m.describe(), "fingerprint": m.fingerprint, "mean": list(m.mean), "std": list(m.std)}


def inversion_table(plan: Plan, invs: Mapping[str, Inversion]) -> pd.DataFrame:
    rows = []
    for item in plan.items:
        inv = invs[item.key]
        r = inv.residual.double()
        rows.append({
            "reference": item.reference, "reference_layer": item.layer, "seed": item.seed, "n_images": inv.n,
            "residual_mean": float(r.mean()), "residual_median": float(r.median()),
            "residual_max": float(r.max()), "start_residual": float(inv.history[0]),
            "image_steps": int(inv.extra.get("image_steps", -1)),
            "seconds": float(inv.seconds), "cached": bool(inv.cached), "key": item.key,
        })
    return pd.DataFrame(rows)
