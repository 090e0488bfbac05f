"""The papers' findings that an experiment can test, decided from its numbers with their uncertainty.

Each finding is a claim from the literature, the statistic that tests it, that statistic's
interval, and a verdict in ``held`` / ``did not hold`` / ``inconclusive`` (:mod:`ftlens.stats`):
``held`` when the interval excludes the null on the claimed side, ``did not hold`` when it
excludes it on the other side, ``inconclusive`` otherwise or when the evidence cannot carry a
verdict (too few seeds, epochs or runs; unconverged inversions; runs that differ in more than
the factor under test), with the reason. Nothing is written in advance: every verdict is
computed from the experiment's saved results.

Record fields: ``id, claim, source, rule, verdict, statistic, interval, test, n_points,
reason, numbers`` and ``held`` (``True`` / ``False`` / ``None``: the verdict as a boolean, for
older readers). The runs are found by their role in the experiment's configuration
(:func:`ftlens.layout.resolve_roles`): the finetuning from the pretrained start, the scratch
control, the reconstruction task, LP-FT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ftlens.analysis.distortion import (
    difference_interval,
    energy_trend_check,
    energy_vs_distortion,
    read_examples,
)
from ftlens.invariance import load_comparison
from ftlens.layers import layer_numbers
from ftlens.layout import ExperimentLayout, resolve_roles
from ftlens.settings import PAPER, Settings
from ftlens.stats import HELD, INCONCLUSIVE, NOT_HELD, decide, t_interval, welch_interval

#: run settings that are the factor under test of a strategy comparison (not confounders)
_STRATEGY_KEYS = {"name", "strategy", "lp_epochs", "hp_epochs", "lp_lr", "wise_alpha", "surgical"}


def _early(index: pd.Index) -> list:
    """The first half of the layers (at least one)."""
    return list(index[: max(1, len(index) // 2)])


def _load(out: Path, name: str | None):
    if name is None:
        return None
    path = ExperimentLayout(out).compare(name)
    if not (path / "comparison.json").exists():
        return None
    return load_comparison(path)


def _config(out: Path, config: Any) -> dict[str, Any] | None:
    if config is not None:
        return config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return ExperimentLayout(out).read_config() or None


def run_roles(config: dict[str, Any] | None) -> dict[str, str | None]:
    """``{"ft", "scratch", "reconstruction", "lp-ft", "lp-ft-control": run name}`` from
    :func:`ftlens.layout.resolve_roles`."""
    roles = resolve_roles(config)
    return {"ft": roles["pretrained_start"], "scratch": roles["scratch_control"],
            "reconstruction": roles["reconstruction_task"], "lp-ft": roles["lp_ft"],
            "lp-ft-control": roles["lp_ft_control"]}


def confounders(config: dict[str, Any] | None, a: str, b: str) -> list[str]:
    """The settings (besides the strategy) in which runs ``a`` and ``b`` differ: ``"lr: 0.03 vs 0.01"``."""
    if not config:
        return []
    runs = {r["name"]: r for r in config.get("runs", [])}
    if a not in runs or b not in runs:
        return []
    defaults = config.get("defaults") or {}
    ra, rb = {**defaults, **runs[a]}, {**defaults, **runs[b]}
    keys = sorted((set(ra) | set(rb)) - _STRATEGY_KEYS)
    return [f"{k}: {ra.get(k)} vs {rb.get(k)}" for k in keys if ra.get(k) != rb.get(k)]


def _clean(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _finding(fid: str, claim: str, source: str, rule: str, *, verdict: str, statistic: float | None = None,
             interval: tuple[float, float] | None = None, test: str = "", n_points: int = 0,
             reason: str | None = None, numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    interval_ = None if interval is None else [_clean(interval[0]), _clean(interval[1])]
    held = True if verdict == HELD else (False if verdict == NOT_HELD else None)
    return {"id": fid, "claim": claim, "source": source, "rule": rule, "verdict": verdict,
            "statistic": _clean(statistic), "interval": interval_, "test": test, "n_points": int(n_points),
            "reason": reason, "held": held, "numbers": {k: _clean(v) for k, v in (numbers or {}).items()}}


def _not_testable(fid: str, claim: str, source: str, why: str) -> dict[str, Any]:
    return _finding(fid, claim, source, why, verdict=INCONCLUSIVE, reason=why)


# ----------------------------------------------------------------------------- evidence of one comparison


def _per_seed(cmp, column: str, layers: list) -> np.ndarray:
    """Per-seed mean over ``layers`` of ``column`` -> (seeds,)."""
    ps = cmp.per_seed
    sub = ps[ps["layer"].isin(layers)]
    return sub.groupby("seed")[column].mean().to_numpy(np.float64)


def _gate(cmp, layers: list, name: str, settings: Settings) -> list[str]:
    """Reasons why a verdict on ``layers`` of run ``name`` cannot be trusted."""
    reasons = []
    seeds = cmp.per_seed["seed"].nunique()
    if seeds < settings.min_seeds:
        reasons.append(f"too few seeds in run '{name}' ({seeds} < {settings.min_seeds})")
    if "converged" in cmp.per_layer:
        bad = [str(layer) for layer in layers if not bool(cmp.per_layer.loc[layer, "converged"])]
        if bad:
            thr = cmp.per_layer.attrs.get("residual_threshold", settings.residual_threshold)
            reasons.append(f"unconverged inversions in run '{name}' (residual > {thr:g}) at {', '.join(bad)}")
    return reasons


def _layer_numbers(cmp, layers: list) -> str:
    if "layer_number" in cmp.per_layer:
        return ", ".join(str(int(cmp.per_layer.loc[layer, "layer_number"])) for layer in layers)
    numbers = dict(zip(map(str, cmp.per_layer.index), layer_numbers([str(n) for n in cmp.per_layer.index]), strict=True))
    return ", ".join(str(numbers[str(layer)]) for layer in layers)


def _one_sample(values: np.ndarray, level: float) -> tuple[float, tuple[float, float]]:
    lo, hi = t_interval(values, level)
    return float(np.mean(values)), (float(lo), float(hi))


# ----------------------------------------------------------------------------- the findings


def compute_findings(out: str | os.PathLike, config: Any = None, *, settings: Settings = PAPER) -> list[dict[str, Any]]:
    """Decide every testable finding from the results under ``out`` (run roles from ``config``)."""
    out = Path(out)
    cfg = _config(out, config)
    roles = run_roles(cfg)
    ft, scratch, rec = _load(out, roles["ft"]), _load(out, roles["scratch"]), _load(out, roles["reconstruction"])
    level = settings.confidence
    ft_name, scratch_name, rec_name = roles["ft"] or "ft", roles["scratch"] or "scratch", roles["reconstruction"]
    findings: list[dict[str, Any]] = []

    # 1. pretrained start vs scratch: lower learning and forgetting in early layers
    claim = ("Starting from pretrained weights gives lower learning and forgetting in the early layers "
             "than training from scratch (pretraining instils reusable early-layer invariances).")
    source = "Merlin et al. 2023, §4.1, Fig. 1"
    if ft is not None and scratch is not None:
        early = _early(ft.per_layer.index)
        a = (_per_seed(scratch, "learning", early) + _per_seed(scratch, "forgetting", early)) / 2
        b = (_per_seed(ft, "learning", early) + _per_seed(ft, "forgetting", early)) / 2
        interval = welch_interval(a, b, level)
        stat = float(a.mean() - b.mean())
        reasons = _gate(ft, early, ft_name, settings) + _gate(scratch, early, scratch_name, settings)
        verdict, reason = decide(*interval, direction="greater", margin=settings.negligible, reasons=reasons)
        nums = {
            "ft_learning_early": float(ft.per_layer.loc[early, "learning"].mean()),
            "scratch_learning_early": float(scratch.per_layer.loc[early, "learning"].mean()),
            "ft_forgetting_early": float(ft.per_layer.loc[early, "forgetting"].mean()),
            "scratch_forgetting_early": float(scratch.per_layer.loc[early, "forgetting"].mean()),
        }
        findings.append(_finding(
            "early-layers-reused", claim, source,
            f"scratch minus FT of the mean of learning and forgetting over layers {_layer_numbers(ft, early)} "
            "is > 0", verdict=verdict, statistic=stat, interval=interval,
            test=f"Welch t interval ({level:.0%}) over seeds; within +-{settings.negligible:g}: no effect", n_points=len(a) + len(b), reason=reason, numbers=nums))
    else:
        findings.append(_not_testable("early-layers-reused", claim, source,
                                      "needs a run from the pretrained start and a scratch control "
                                      "(config roles pretrained_start, scratch_control)"))

    # 2. CKA misses what STIR sees in early layers
    if ft is not None:
        early = _early(ft.per_layer.index)
        diff = _per_seed(ft, "forgetting", early) - _per_seed(ft, "cka_divergence", early)
        stat, interval = _one_sample(diff, level)
        verdict, reason = decide(*interval, direction="greater", margin=settings.negligible, reasons=_gate(ft, early, ft_name, settings))
        nums = {"cka_divergence_early": float(ft.per_layer.loc[early, "cka_divergence"].mean()),
                "forgetting_early": float(ft.per_layer.loc[early, "forgetting"].mean()),
                "learning_early": float(ft.per_layer.loc[early, "learning"].mean())}
        findings.append(_finding(
            "cka-misses-forgetting",
            "In early layers CKA divergence stays near 0 while forgetting of invariances does not: "
            "representations look alike yet invariances changed.",
            "Merlin et al. 2023, §4.1, Fig. 3",
            f"early-layer forgetting minus cka divergence (run '{ft_name}') is > 0",
            verdict=verdict, statistic=stat, interval=interval, test=f"t interval ({level:.0%}) over seeds; within +-{settings.negligible:g}: no effect",
            n_points=len(diff), reason=reason, numbers=nums))

    # 3. compression below the diagonal of the flow, after removing the pretrained model's own flow
    for name, cmp in ((ft_name, ft), (rec_name, rec)):
        if cmp is None:
            continue
        corrected = np.asarray(cmp.flows_per_seed["flow_corrected"], dtype=np.float64)  # (seeds, L, L)
        below = np.tril_indices(corrected.shape[1], k=-1)
        values = np.array([seed_flow[below].mean() for seed_flow in corrected]) if len(below[0]) else np.array([])
        if values.size == 0:
            continue
        stat, interval = _one_sample(values, level)
        verdict, reason = decide(*interval, direction="greater", margin=settings.negligible,
                                 reasons=_gate(cmp, list(cmp.per_layer.index), name, settings))
        raw = np.asarray(cmp.flows_per_seed["flow"], dtype=np.float64).mean(axis=0)
        base = np.asarray(cmp.flows_per_seed["flow_baseline"], dtype=np.float64).mean(axis=0)
        findings.append(_finding(
            f"compression-{'reconstruction' if cmp is rec else 'ft'}",
            f"Finetuning ({name}) compresses pretrained invariances toward shallower layers: the flow "
            "matrix is positive below its diagonal.",
            "Merlin et al. 2023, §4.3, Fig. 4",
            "mean of the corrected InvarianceFlow (eq. 5 minus the pretrained model's own flow) over the "
            "entries with finetuned layer j < pretrained layer i is > 0",
            verdict=verdict, statistic=stat, interval=interval, test=f"t interval ({level:.0%}) over seeds; within +-{settings.negligible:g}: no effect",
            n_points=len(values), reason=reason,
            numbers={"mean_below_diagonal_raw": float(raw[below].mean()),
                     "mean_below_diagonal_baseline": float(base[below].mean()),
                     "fraction_below_positive": float(np.mean(corrected.mean(axis=0)[below] > 0))}))

    # 4. reconstruction learns more than classification
    if ft is not None and rec is not None:
        layers = list(ft.per_layer.index)
        a, b = _per_seed(rec, "learning", layers), _per_seed(ft, "learning", layers)
        interval = welch_interval(a, b, level)
        reasons = _gate(ft, layers, ft_name, settings) + _gate(rec, layers, rec_name, settings)
        verdict, reason = decide(*interval, direction="greater", margin=settings.negligible, reasons=reasons)
        findings.append(_finding(
            "reconstruction-learns-more",
            "Learning of new invariances is higher when finetuning for reconstruction than for classification.",
            "Merlin et al. 2023, §4.2, Fig. 2",
            f"mean learning over layers: run '{rec_name}' minus run '{ft_name}' is > 0",
            verdict=verdict, statistic=float(a.mean() - b.mean()), interval=interval,
            test=f"Welch t interval ({level:.0%}) over seeds; within +-{settings.negligible:g}: no effect", n_points=len(a) + len(b), reason=reason,
            numbers={"learning_reconstruction": float(rec.per_layer["learning"].mean()),
                     "learning_classification": float(ft.per_layer["learning"].mean())}))

    # 5-6. feature distortion (Kumar et al.)
    layout = ExperimentLayout(out)
    dist_path = layout.distortion
    if dist_path.exists():
        examples = read_examples(layout.distortion_examples) if layout.distortion_examples.exists() else None
        findings.extend(_distortion_findings(pd.read_csv(dist_path), cfg, roles, examples, settings))

    # 7. energy left for finetuning vs feature change (Ren et al. 2023)
    if dist_path.exists():
        findings.extend(_energy_findings(out, pd.read_csv(dist_path), settings))

    # 8. forgetting variability vs robustness
    for name in layout.correlation_names():
        finding = _correlation_finding(layout.correlation(name), settings)
        if finding is not None:
            findings.append(finding)
    return findings


def _paired(sources: dict[str, np.ndarray], a: str, b: str) -> bool:
    """Whether row i of splits ``a`` and ``b`` is made from the same clean image, for every i."""
    if a not in sources or b not in sources:
        return False
    return bool(np.array_equal(sources[a], sources[b]))


def _ood_rows(sources: dict[str, np.ndarray], n_id: int, n_ood: int) -> str:
    """How the OOD rows relate to the ID images, when they are not row-for-row copies."""
    if "ID" not in sources or "OOD" not in sources:
        return "no record of which images the OOD rows were made from"
    shared = np.intersect1d(sources["ID"], sources["OOD"]).size
    if shared == 0:
        return f"the {n_ood} OOD images are other images than the {n_id} ID images"
    return (f"the {n_ood} OOD rows are corrupted copies of {np.unique(sources['OOD']).size} of the {n_id} ID "
            "images, not one row per ID image")


def _distortion_findings(d: pd.DataFrame, cfg: dict[str, Any] | None, roles: dict[str, str | None],
                         examples: tuple[dict, dict] | None = None, settings: Settings = PAPER) -> list[dict]:
    """Kumar et al.'s two claims from the pre-logit mean squared difference, with bootstrap intervals over images.

    ``examples``: the per-example values and image sources of :func:`ftlens.analysis.distortion.read_examples`;
    without them (results of older versions) there is one value per run and split and no interval.
    """
    ft_name, lpft_name = roles.get("lp-ft-control") or roles["ft"] or "ft", roles["lp-ft"] or "lp-ft"
    pl = d[(d["layer"] == "pre_logits") & (d["measure"] == "mean_squared_difference")]
    val = {(r.run, r.split): float(r.value) for r in pl.itertuples()}
    values, sources = examples if examples is not None else ({}, {})
    per = {(run, split): v for (run, split, layer, measure), v in values.items()
           if layer == "pre_logits" and measure == "mean_squared_difference"}
    single = "one distortion value per run and split (no per-image values saved; rerun the distortion stage), so no interval"
    level, resamples = settings.confidence, settings.bootstrap
    result = []
    if (ft_name, "ID") in val and (lpft_name, "ID") in val:
        nums = {f"{run}_{split}": v for (run, split), v in val.items() if run in (ft_name, lpft_name)}
        stat = val[(ft_name, "ID")] - val[(lpft_name, "ID")]
        reasons, intervals = [], {}
        for split in ("ID", "OOD"):
            a, b = per.get((ft_name, split)), per.get((lpft_name, split))
            if a is not None and b is not None and len(a) == len(b):
                diff, lo, hi = difference_interval(a, b, paired=True, level=level, resamples=resamples)
                intervals[split] = (lo, hi)
                nums.update({f"difference_{split}": diff, f"ci_low_{split}": lo, f"ci_high_{split}": hi,
                             f"images_{split}": len(a)})
        if not intervals:
            reasons.append(single)
        elif "OOD" not in intervals:
            reasons.append("no OOD images with per-image values in both runs; the claim is about ID and OOD")
        differ = confounders(cfg, ft_name, lpft_name)
        if differ:
            reasons.append("the runs differ in more than the factor under test (" + "; ".join(differ) + ")")
        interval = intervals.get("ID")
        if reasons:
            verdict, reason = INCONCLUSIVE, "; ".join(reasons)
        elif all(lo > 0 for lo, _ in intervals.values()):
            verdict, reason = HELD, None
        elif any(hi < 0 for _, hi in intervals.values()):
            verdict, reason = NOT_HELD, None
        else:
            verdict, reason = INCONCLUSIVE, "an interval contains 0 (" + "; ".join(
                f"{split} [{lo:.4g}, {hi:.4g}]" for split, (lo, hi) in intervals.items()) + ")"
        n = sum(int(nums.get(f"images_{split}", 0)) for split in intervals)
        result.append(_finding(
            "lpft-distorts-less", "LP-FT distorts the pretrained features less than FT, on ID and OOD data.",
            "Kumar et al. 2022",
            f"mean squared difference of pre-logit features to the pretrained model: FT minus LP-FT > 0 "
            f"(runs '{ft_name}', '{lpft_name}') on ID and on OOD images; statistic and interval: ID, "
            "OOD in the numbers",
            verdict=verdict, statistic=stat, interval=interval,
            test=(f"paired bootstrap ({level:.0%} percentile interval, {resamples} resamples) over the images, "
                  "which both runs see: one resample of the images applies to both" if intervals else
                  "comparison of two values"),
            n_points=n or 2, reason=reason, numbers={**nums, "differences": "; ".join(differ) or "none"}))
    ft_name = roles["ft"] or "ft"
    if (ft_name, "ID") in val and (ft_name, "OOD") in val:
        nums = {"ft_ID": val[(ft_name, "ID")], "ft_OOD": val[(ft_name, "OOD")]}
        a, b = per.get((ft_name, "ID")), per.get((ft_name, "OOD"))
        interval, n, test = None, 2, "comparison of two values"
        if a is not None and b is not None:
            paired = _paired(sources, "ID", "OOD") and len(a) == len(b)
            _, lo, hi = difference_interval(a, b, paired=paired, level=level, resamples=resamples)
            interval, n = (lo, hi), len(a) + len(b)
            how = (f"{level:.0%} percentile interval, {resamples} resamples")
            test = (f"paired bootstrap ({how}): each OOD image is a corrupted copy of the ID image in the "
                    "same row, and one resample applies to both splits" if paired else
                    f"unpaired bootstrap ({how}): {_ood_rows(sources, len(a), len(b))}, so each split is "
                    "resampled on its own")
            verdict, reason = decide(lo, hi, direction="greater")
        else:
            verdict, reason = INCONCLUSIVE, single
        result.append(_finding(
            "ft-distorts-id-more",
            "FT changes features of in-distribution data more than those of OOD (corrupted) data.",
            "Kumar et al. 2022", f"pre-logit mean squared difference, run '{ft_name}': ID minus OOD > 0",
            verdict=verdict, statistic=nums["ft_ID"] - nums["ft_OOD"], interval=interval, test=test,
            n_points=n, reason=reason, numbers=nums))
    return result


def energy_sweep(out: Path, distortion: pd.DataFrame) -> pd.DataFrame | None:
    """Distortion of the runs that logged an "energy" (HP-FT, LP-FT) against that energy."""

    runs = []
    for name in distortion["run"].unique():
        mpath = ExperimentLayout(out).run(name) / "metrics.csv"
        if not mpath.exists():
            continue
        m = pd.read_csv(mpath)
        if "energy_train_loss" not in m.columns or m["energy_train_loss"].dropna().empty:
            continue
        energy = {"run": name, "train_acc": float(m["energy_train_acc"].dropna().iloc[0]),
                  "train_loss": float(m["energy_train_loss"].dropna().iloc[0])}
        runs.append((energy, distortion[distortion["run"] == name].drop(columns=["run"])))
    if len(runs) < 2:
        return None
    return energy_vs_distortion(runs)


def _energy_findings(out: Path, distortion: pd.DataFrame, settings: Settings) -> list[dict[str, Any]]:
    ev = energy_sweep(out, distortion)
    if ev is None:
        return []
    check = energy_trend_check(ev, split="ID", layer="pre_logits")
    rows = {r.measure: r for r in check.itertuples()}
    result = []
    for fid, claim, measures in (
        ("energy-distances-grow", "The more energy is left for finetuning (less head probing), the further the "
         "features move: Euclidean and cosine distance to the starting features grow with energy.",
         ("euclidean_distance", "cosine_distance")),
        ("energy-dot-norm-cap", "Dot product and feature norm first rise and then fall as energy grows.",
         ("dot_product", "norm")),
    ):
        present = [rows[m] for m in measures if m in rows]
        if not present:
            continue
        n_runs = int(present[0].n_runs)
        nums = {f"{r.measure}_spearman_rho": float(r.spearman_rho) for r in present}
        nums["runs"] = n_runs
        helds = [r.held for r in present]
        reasons = []
        if n_runs < settings.min_runs:
            reasons.append(f"too few runs ({n_runs} < {settings.min_runs}) for a rank correlation")
        if any(pd.isna(h) for h in helds):
            reasons.append("the trend is undefined for a measure (see the distortion table's note)")
        grows = fid.endswith("grow")
        if grows and not reasons:
            ps = [float(r.spearman_p) for r in present]
            rhos = [float(r.spearman_rho) for r in present]
            if all(p < settings.alpha for p in ps):
                verdict, reason = (HELD if all(rho > 0 for rho in rhos) else NOT_HELD
                                   if all(rho < 0 for rho in rhos) else INCONCLUSIVE), None
            else:
                verdict, reason = INCONCLUSIVE, f"Spearman p >= {settings.alpha} for a measure ({ps})"
        elif not reasons:
            verdict, reason = (HELD if all(helds) else NOT_HELD), None
        else:
            verdict, reason = INCONCLUSIVE, "; ".join(reasons)
        stat = float(np.mean([float(r.spearman_rho) for r in present]))
        result.append(_finding(
            fid, claim, "Ren et al. 2023",
            "pre-logit features, ID data, runs with a logged energy (train loss at the start of FT): "
            + (f"Spearman rho > 0 with p < {settings.alpha} for each measure" if grows else
               "the maximum lies strictly inside the energy range for each measure"),
            verdict=verdict, statistic=stat, test="Spearman rank correlation over runs" if grows else
            "position of the maximum over runs", n_points=n_runs, reason=reason, numbers=nums))
    return result


def _correlation_finding(path: Path, settings: Settings) -> dict[str, Any] | None:
    """The headline hypothesis of a run's grid, decided with the grid's own Bonferroni correction."""
    grid = pd.read_csv(path)
    head = grid[grid.get("is_headline", pd.Series(False, index=grid.index)).astype(bool)]
    if head.empty:
        return None
    row = head.iloc[0]
    r, p = float(row["r"]), float(row["p"])
    n = int(row.get("n_epochs", 0))
    m = int(row.get("n_hypotheses", 1) or 1)
    p_corr = float(row.get("p_bonferroni", min(1.0, p * m)))
    level = 1 - settings.alpha / m  # the Bonferroni-corrected level of the grid
    interval = (float("nan"), float("nan"))
    if n > 3 and np.isfinite(r):
        half = sps.norm.ppf(0.5 + level / 2) / np.sqrt(n - 3)
        z = np.arctanh(np.clip(r, -0.999999, 0.999999))
        interval = (float(np.tanh(z - half)), float(np.tanh(z + half)))
    reasons = []
    if n < settings.min_epochs:
        reasons.append(f"too few epochs ({n} < {settings.min_epochs}) for a correlation over epochs")
    verdict, reason = decide(*interval, direction="greater", reasons=reasons)
    return _finding(
        f"forgetting-std-robustness-{path.stem}",
        "The spread (std) of forgetting over layers 2..L tracks accuracy under corruptions over epochs.",
        "Merlin et al. 2023, §4.4 (r = 0.78 on CIFAR-10-C)",
        f"Pearson r between the per-epoch std of forgetting (layers 2..L) and mean corrupted accuracy "
        f"(run '{path.stem}') is > 0, with the grid's Bonferroni correction over {m} hypotheses",
        verdict=verdict, statistic=r, interval=interval,
        test=f"Fisher z interval at level 1 - {settings.alpha}/{m} (Bonferroni, as the grid)", n_points=n,
        reason=reason, numbers={"r": r, "p": p, "p_bonferroni": p_corr, "epochs": n, "hypotheses": m})


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def is_smoke(config: Any, settings: Settings = PAPER) -> list[str]:
    """Why a run is smoke-sized (empty when it is not): far fewer images or seeds than the paper's,
    or too few epochs for its dynamics. The inversion budget is not a criterion: with an
    early-stopping schedule ``steps`` is a cap, and whether the inversions converged is the
    convergence gate's question (a finding on an unconverged layer is inconclusive)."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else (config or {})
    a = cfg.get("analysis") or {}
    if not isinstance(a, dict):
        return []
    images, seeds = _number(a.get("images"), settings.images), _number(a.get("seeds"), settings.seeds)
    why = []
    if images < settings.min_images:
        why.append(f"{images:g} images per seed (at least {settings.min_images}; the paper: {settings.images})")
    if seeds < settings.min_seeds:
        why.append(f"{seeds:g} seed(s) (the paper: {settings.seeds})")
    defaults = cfg.get("defaults") or {}
    epochs = _number(defaults.get("epochs"), float("inf")) if isinstance(defaults, dict) else float("inf")
    if a.get("dynamics") and epochs < settings.min_epochs:
        why.append(f"{epochs:g} epochs per run for the dynamics over epochs")
    return why
