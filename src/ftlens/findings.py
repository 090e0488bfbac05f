"""The paper's findings that an experiment can test, decided from its numbers.

Each finding is a claim from the literature, the rule used to decide it, the numbers, and
``held`` (True / False, or None when the experiment lacks the runs to test it). Nothing here
is written in advance: every verdict is computed from the experiment's saved results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftlens.layout import ExperimentLayout, resolve_roles


def _early(index: pd.Index) -> list:
    """The first half of the layers (at least one)."""
    return list(index[: max(1, len(index) // 2)])


def _load(out: Path, name: str):
    from ftlens.invariance import load_comparison

    if name is None:
        return None
    path = ExperimentLayout(out).compare(name)
    if not (path / "comparison.json").exists():
        return None
    return load_comparison(path)


def _finding(fid: str, claim: str, source: str, rule: str, held: bool | None, numbers: dict[str, Any]) -> dict:
    clean = {k: (None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v) for k, v in numbers.items()}
    return {"id": fid, "claim": claim, "source": source, "rule": rule, "held": held, "numbers": clean}


def _per_layer(cmp) -> pd.DataFrame:
    return cmp.per_layer


def compute_findings(out: str | os.PathLike, config: Any = None) -> list[dict[str, Any]]:
    """Decide every testable finding from the results under ``out``.

    The runs in each role (pretrained start, scratch control, reconstruction task, LP-FT) come
    from ``config`` (or ``out/config.yaml``): :func:`ftlens.layout.resolve_roles`.
    """
    out = Path(out)
    layout = ExperimentLayout(out)
    if config is None:
        config = layout.read_config() or None
    roles = resolve_roles(config)
    ft_name, scratch_name = roles["pretrained_start"], roles["scratch_control"]
    rec_name, lpft_name = roles["reconstruction_task"], roles["lp_ft"]
    ft, scratch, rec = _load(out, ft_name), _load(out, scratch_name), _load(out, rec_name)
    findings: list[dict[str, Any]] = []

    # 1. pretrained start vs scratch: lower learning and forgetting in early layers
    if ft is not None and scratch is not None:
        a, b = _per_layer(ft), _per_layer(scratch)
        early = _early(a.index)
        nums = {
            "ft_learning_early": float(a.loc[early, "learning"].mean()),
            "scratch_learning_early": float(b.loc[early, "learning"].mean()),
            "ft_forgetting_early": float(a.loc[early, "forgetting"].mean()),
            "scratch_forgetting_early": float(b.loc[early, "forgetting"].mean()),
        }
        held = (nums["ft_learning_early"] < nums["scratch_learning_early"]) and (
            nums["ft_forgetting_early"] < nums["scratch_forgetting_early"]
        )
        findings.append(_finding(
            "early-layers-reused",
            "Starting from pretrained weights gives lower learning and forgetting in the early layers "
            "than training from scratch (pretraining instils reusable early-layer invariances).",
            "Merlin et al. 2023, §4.1, Fig. 1",
            f"mean over layers {', '.join(str(i + 1) for i in range(len(early)))} of learning and of "
            "forgetting: FT (from pretrained) < scratch, both",
            bool(held), nums))
    else:
        findings.append(_finding("early-layers-reused", "Pretrained start vs scratch (early layers)",
                                 "Merlin et al. 2023, §4.1",
                                 "needs a run from the pretrained start and a scratch control "
                                 "(config roles pretrained_start, scratch_control)", None, {}))

    # 2. CKA misses what STIR sees in early layers
    if ft is not None:
        a = _per_layer(ft)
        early = _early(a.index)
        nums = {"cka_divergence_early": float(a.loc[early, "cka_divergence"].mean()),
                "forgetting_early": float(a.loc[early, "forgetting"].mean()),
                "learning_early": float(a.loc[early, "learning"].mean())}
        held = nums["cka_divergence_early"] < nums["forgetting_early"]
        findings.append(_finding(
            "cka-misses-forgetting",
            "In early layers CKA divergence stays near 0 while forgetting of invariances does not: "
            "representations look alike yet invariances changed.",
            "Merlin et al. 2023, §4.1, Fig. 3",
            f"mean early-layer cka divergence < mean early-layer forgetting (run '{ft_name}')",
            bool(held), nums))

    # 3. compression below the flow diagonal
    for role, cmp in (("ft", ft), ("reconstruction", rec)):
        if cmp is None:
            continue
        name = ft_name if role == "ft" else rec_name
        flow = cmp.flow.to_numpy(dtype=float)
        lower = flow[np.tril_indices_from(flow, k=-1)]
        upper = flow[np.triu_indices_from(flow, k=1)]
        nums = {"mean_below_diagonal": float(np.nanmean(lower)), "mean_above_diagonal": float(np.nanmean(upper)),
                "fraction_below_positive": float(np.mean(lower > 0))}
        held = nums["mean_below_diagonal"] > 0 and nums["mean_below_diagonal"] > nums["mean_above_diagonal"]
        findings.append(_finding(
            f"compression-{role}",
            f"Finetuning ({name}) compresses pretrained invariances toward shallower layers: the flow "
            "matrix is positive below its diagonal.",
            "Merlin et al. 2023, §4.3, Fig. 4",
            "mean of InvarianceFlow (eq. 5) over entries with finetuned layer j < pretrained layer i is "
            "> 0 and larger than the mean above the diagonal",
            bool(held), nums))

    # 4. reconstruction learns more than classification
    if ft is not None and rec is not None:
        nums = {"learning_reconstruction": float(_per_layer(rec)["learning"].mean()),
                "learning_classification": float(_per_layer(ft)["learning"].mean())}
        findings.append(_finding(
            "reconstruction-learns-more",
            "Learning of new invariances is higher when finetuning for reconstruction than for classification.",
            "Merlin et al. 2023, §4.2, Fig. 2",
            f"mean learning over layers: run '{rec_name}' > run '{ft_name}'",
            nums["learning_reconstruction"] > nums["learning_classification"], nums))

    # 5-6. feature distortion (Kumar et al.)
    dist_path = layout.distortion
    if dist_path.exists():
        d = pd.read_csv(dist_path)
        pl = d[(d["layer"] == "pre_logits") & (d["measure"] == "mean_squared_difference")]
        val = {(r.run, r.split): float(r.value) for r in pl.itertuples()}
        if (ft_name, "ID") in val and (lpft_name, "ID") in val:
            nums = {f"{run}_{split}": v for (run, split), v in val.items() if run in (ft_name, lpft_name)}
            held = all(val[(lpft_name, s)] < val[(ft_name, s)] for s in ("ID", "OOD") if (ft_name, s) in val)
            findings.append(_finding(
                "lpft-distorts-less",
                "LP-FT distorts the pretrained features less than FT, on ID and OOD data.",
                "Kumar et al. 2022",
                "mean squared difference of pre-logit features to the pretrained model: LP-FT < FT on ID and OOD",
                bool(held), nums))
        if (ft_name, "ID") in val and (ft_name, "OOD") in val:
            nums = {"ft_ID": val[(ft_name, "ID")], "ft_OOD": val[(ft_name, "OOD")]}
            findings.append(_finding(
                "ft-distorts-id-more",
                "FT changes features of in-distribution data more than those of OOD (corrupted) data.",
                "Kumar et al. 2022",
                f"pre-logit mean squared difference, run '{ft_name}': ID > OOD",
                nums["ft_ID"] > nums["ft_OOD"], nums))

    # 7. energy left for finetuning vs feature change (seed 003)
    if dist_path.exists():
        findings.extend(_energy_findings(out, pd.read_csv(dist_path)))

    # 8. forgetting variability vs robustness
    for name in layout.correlation_names():
        path = layout.correlation(name)
        grid = pd.read_csv(path)
        head = grid[grid.get("is_headline", pd.Series(False, index=grid.index)).astype(bool)]
        if head.empty:
            continue
        row = head.iloc[0]
        r, p = float(row["r"]), float(row["p"])
        findings.append(_finding(
            f"forgetting-std-robustness-{path.stem}",
            "The spread (std) of forgetting over layers 2..L tracks accuracy under corruptions over epochs.",
            "Merlin et al. 2023, §4.4 (r = 0.78 on CIFAR-10-C)",
            "Pearson r > 0 with p < 0.05 between per-epoch std of forgetting (layers 2..L) and mean "
            f"corrupted accuracy (run '{path.stem}')",
            bool(np.isfinite(r) and r > 0 and p < 0.05), {"r": r, "p": p, "epochs": int(row.get("n_epochs", 0))}))

    return findings


def energy_sweep(out: Path, distortion: pd.DataFrame) -> pd.DataFrame | None:
    """Distortion of the runs that logged an "energy" (HP-FT, LP-FT) against that energy."""
    from ftlens.analysis.distortion import energy_vs_distortion

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


def _energy_findings(out: Path, distortion: pd.DataFrame) -> list[dict[str, Any]]:
    from ftlens.analysis.distortion import energy_trend_check

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
        helds = [r.held for r in present]
        held = None if any(pd.isna(h) for h in helds) else bool(all(helds))
        nums = {f"{r.measure}_spearman_rho": float(r.spearman_rho) for r in present}
        nums["runs"] = int(present[0].n_runs)
        result.append(_finding(fid, claim, "Ren et al. 2023",
                               "pre-logit features, ID data, runs with a logged energy (train loss at the start of FT): "
                               + ("Spearman rho > 0 for each measure" if fid.endswith("grow") else
                                  "the maximum lies strictly inside the energy range for each measure"),
                               held, nums))
    return result
