"""Turn an experiment directory (see :mod:`ftlens.experiment`) into ``report.html``.

Works on whatever the directory holds: a full experiment, or a single ``ftlens compare``
output (``comparison.json``). Every figure has axis labels, units, a legend and a caption
saying what to read from it; every table says which CKA estimator produced it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftlens.report import html
from ftlens.report.figures import figure_png, layer_label
from ftlens.report.html import Figure, Section, Table, Text, esc


def _fig(fig, caption: str, title: str = "") -> Figure:
    return Figure(figure_png(fig), caption, title)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _layer_index(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.index = [f"{layer_label(str(i))} ({i})" if str(i).startswith("blocks.") else str(i) for i in df.index]
    df.index.name = "layer"
    return df


def read_config(path: Path) -> dict[str, Any]:
    """A config.yaml as a dict ({} when absent); ConfigError when it is not a readable mapping."""
    from ftlens.errors import ConfigError

    if not path.exists():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(exc).split())}); restore it (it is the "
                          "experiment's configuration) or remove it to build the report without it") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} holds a {type(cfg).__name__}, not a mapping of options; restore it or remove it")
    return cfg


# --------------------------------------------------------------------------- sections


def _overview(out: Path) -> Section:
    cfg = read_config(out / "config.yaml")
    timings = _read_json(out / "timings.json") or {}
    from ftlens.io import versions

    env = versions()
    s = Section("What was run")
    a = cfg.get("analysis", {}) if cfg else {}
    if cfg:
        s.lead = (
            f"Model <code>{esc(cfg.get('model'))}</code>"
            + (f", pretrained on <code>{esc(cfg['pretrain'].get('data'))}</code>" if cfg.get("pretrain") else "")
            + f", finetuned on <code>{esc(cfg.get('data'))}</code> in {len(cfg.get('runs', []))} ways. "
            f"STIR uses {esc(a.get('images'))} images per seed, {esc(a.get('seeds'))} seeds, {esc(a.get('steps'))} "
            f"inversion steps of size {esc(a.get('step_size'))}; CKA estimator: "
            f"<b>{'debiased' if a.get('debiased') else 'biased'} linear CKA</b>. Layers are numbered from 1 "
            "(layer 1 = <code>blocks.0</code>)."
        )
    rows = {**{f"version: {k}": v for k, v in env.items()}, **{f"time: {k}": f"{v:.1f} s" for k, v in timings.items()}}
    if timings:
        rows["time: total"] = f"{sum(timings.values()):.1f} s"
    s.blocks.append(Table(pd.DataFrame({"value": rows}).rename_axis("item"), "Versions of the software and wall time of each stage.", "Environment and timings"))
    models = _models_table(out)
    if models is not None:
        s.blocks.append(Table(models, "Every model that was compared: the spec it was loaded from and the sha256 of its "
                              "weights (first 16 hex digits), so a result can be traced to exact weights.", "Models"))
    if cfg:
        s.blocks.append(Text(f"<details><summary>Full configuration</summary><pre>{esc(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>"))
    return s


def _models_table(out: Path) -> pd.DataFrame | None:
    rows = {}
    for path in sorted((out / "compare").glob("*/comparison.json")) if (out / "compare").exists() else []:
        cfg = _read_json(path) or {}
        for role in ("pretrained", "finetuned"):
            m = cfg.get(role) or {}
            if m.get("name") and m["name"] not in rows:
                rows[m["name"]] = {"role": role, "spec": m.get("spec", ""),
                                   "fingerprint": str(m.get("fingerprint", ""))[:16],
                                   "input size": "x".join(map(str, m.get("input_size", [])))}
    if not rows:
        return None
    return pd.DataFrame(rows).T.rename_axis("model")


def _findings(out: Path) -> Section | None:
    findings = _read_json(out / "findings.json")
    if not findings:
        return None
    s = Section("Findings of the papers, tested on this run",
                "Each verdict is computed from this run's numbers by the stated rule; nothing is written in advance. "
                "Small models and data can legitimately disagree with the paper.")
    rows = []
    for f in findings:
        held = f["held"]
        verdict = "held" if held is True else ("did not hold" if held is False else "not testable")
        cls = "held" if held is True else ("nothold" if held is False else "na")
        nums = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in f["numbers"].items())
        rows.append(f"<tr><td>{esc(f['claim'])}<br/><span class='caption'>{esc(f['source'])}</span></td>"
                    f"<td class='{cls}'>{verdict}</td><td>{esc(f['rule'])}</td><td>{esc(nums)}</td></tr>")
    s.blocks.append(Text("<table><thead><tr><th>claim</th><th>verdict</th><th>rule</th><th>numbers</th></tr></thead>"
                         f"<tbody>{''.join(rows)}</tbody></table>"))
    return s


def _accuracies(out: Path) -> Section | None:
    runs = sorted(p for p in (out / "runs").glob("*") if (p / "metrics.csv").exists()) if (out / "runs").exists() else []
    if not runs:
        return None
    rows = {}
    for run in runs:
        m = pd.read_csv(run / "metrics.csv")
        if m.empty:
            continue
        cfg = read_config(run / "config.yaml")
        last = m.iloc[-1]
        row: dict[str, Any] = {"strategy": cfg.get("strategy", ""), "task": cfg.get("task", ""),
                               "data": cfg.get("data", ""), "epochs": int(last.get("epoch", len(m)))}
        for col in ("test_acc", "corrupted_acc_mean", "test_l1", "test_psnr", "train_acc", "train_loss"):
            if col in m.columns and pd.notna(last.get(col)):
                row[col] = float(last[col])
        for col in ("energy_train_acc", "energy_train_loss"):
            if col in m.columns and m[col].notna().any():
                row[col] = float(m[col].dropna().iloc[0])
        rows[run.name] = row
    df = pd.DataFrame(rows).T.rename_axis("run")
    s = Section("Accuracy of every run, in and out of distribution",
                "LP, FT, LP-FT, HP-FT and scratch side by side at their last epoch. <code>test_acc</code> is clean "
                "test accuracy (ID); <code>corrupted_acc_mean</code> is the mean over corruptions and severities (OOD); "
                "<code>energy_*</code> is the training accuracy/loss when full finetuning starts (HP-FT, LP-FT).")
    s.blocks.append(Table(df, "Last-epoch metrics per run (accuracy as a fraction; L1 in pixel units of [0, 1]; PSNR in dB).",
                          "Runs"))
    try:
        import matplotlib.pyplot as plt

        downstream = df[df["data"] == cfg_data] if (cfg_data := _experiment_data(out)) else df
        acc = downstream[[c for c in ("test_acc", "corrupted_acc_mean") if c in df.columns]].dropna(how="all").astype(float)
        if not acc.empty:
            fig, ax = plt.subplots(figsize=(6.4, 3.6))
            acc.plot.bar(ax=ax, color=["#2f6db5", "#d1495b"][: acc.shape[1]])
            ax.set_ylabel("accuracy (fraction correct)")
            ax.set_xlabel("run")
            ax.set_ylim(0, 1)
            ax.legend(["clean test (ID)", "corrupted (OOD), mean"][: acc.shape[1]], fontsize=8)
            ax.set_title("ID vs OOD accuracy per finetuning strategy", fontsize=10)
            fig.tight_layout()
            s.blocks.append(_fig(fig, "Read: the gap between the blue (clean) and red (corrupted) bars is each strategy's "
                                      "robustness loss; compare LP-FT with FT for the ID/OOD trade-off."))
    except Exception:  # a figure must never lose the table
        pass
    return s


def _experiment_data(out: Path) -> str | None:
    path = out / "config.yaml"
    return read_config(path).get("data")


def _comparison_blocks(name: str, cmp) -> list:
    from ftlens.report import invariance_plots as ip

    blocks: list = []
    est = cmp.estimator if hasattr(cmp, "estimator") else "biased linear CKA"
    blocks.append(_fig(ip.plot_per_layer(cmp), f"{name}: learning and forgetting of invariances (STIR) and cka divergence per "
                       "layer, mean ± std over seeds. Read: where forgetting is high but cka divergence low, representations "
                       "look alike to CKA while their invariances changed."))
    blocks.append(_fig(ip.plot_flow(cmp), f"{name}: InvarianceFlow (eq. 5), rows = pretrained layer i, columns = finetuned "
                       "layer j. Read: red below the diagonal = invariances of deeper pretrained layers now found in "
                       "shallower finetuned layers (compression); above = expansion."))
    if getattr(cmp, "flow_relative", None) is not None:
        blocks.append(_fig(ip.plot_flow(cmp, relative=True), f"{name}: flow relative to the diagonal "
                           "(STIR(ft[j] | pt[i]) - STIR(ft[i] | pt[i])), the paper's textual definition."))
    cols = [c for c in cmp.per_layer.columns if not c.startswith("residual") and c != "layer_number"]
    blocks.append(Table(_layer_index(cmp.per_layer[cols]), f"{name}: per-layer metrics ({est}); *_std is over seeds; "
                        "stir_pt_pt / stir_ft_ft are the measured first terms (inversion quality; 1 = perfect).",
                        f"{name}: per layer"))
    res = [c for c in cmp.per_layer.columns if c.startswith("residual")]
    if res:
        blocks.append(Table(_layer_index(cmp.per_layer[res]), f"{name}: mean final relative inversion residual "
                            "||r(x') - r(x)|| / ||r(x)|| per layer and reference model (0 = converged).",
                            f"{name}: inversion residuals"))
    return blocks


def _comparisons(out: Path) -> Section | None:
    from ftlens.invariance import load_comparison

    dirs = sorted(p.parent for p in (out / "compare").glob("*/comparison.json")) if (out / "compare").exists() else []
    if not dirs:
        return None
    comparisons = {d.name: load_comparison(d) for d in dirs}
    s = Section("Invariances per layer: learning, forgetting, flow",
                "Every finetuned model against the pretrained one (scratch: the same architecture trained from random "
                "initialisation, compared with the pretrained model as in the paper). " + _inversion_quality(comparisons))
    for name, cmp in comparisons.items():
        s.blocks.extend(_comparison_blocks(name, cmp))
    return s


def _inversion_quality(comparisons: dict) -> str:
    """One sentence on how well the inversions converged (residuals and self-STIR), from the numbers."""
    first = next(iter(comparisons.values()))
    pl = first.per_layer
    parts = []
    if "residual_pt" in pl.columns:
        parts.append(f"final relative residual of the pretrained-side inversions: {pl['residual_pt'].iloc[0]:.2f} at "
                     f"layer 1 to {pl['residual_pt'].iloc[-1]:.2f} at layer {len(pl)}")
    selfs = [c.per_layer[col] for c in comparisons.values() for col in ("stir_pt_pt", "stir_ft_ft")
             if col in c.per_layer.columns]
    if selfs:
        lo = min(float(v.min()) for v in selfs)
        hi = max(float(v.max()) for v in selfs)
        parts.append(f"STIR of a layer with itself (1 = perfect inversion) between {lo:.3f} and {hi:.3f}")
    if not parts:
        return ""
    return ("Inversion quality: " + "; ".join(parts) + ". Learning and forgetting use these measured self-STIR "
            "terms, so inversion error largely cancels; the residual tables below give every layer.")


def _dynamics(out: Path) -> Section | None:
    from ftlens.analysis.dynamics import run_metrics, severity_accuracy
    from ftlens.report import dynamics_plots as dp

    tables = sorted((out / "dynamics").glob("*/dynamics.csv")) if (out / "dynamics").exists() else []
    if not tables:
        return None
    s = Section("Dynamics over finetuning epochs",
                "Each epoch's checkpoint against the pretrained model (pretrained-side inversions computed once and "
                "reused), next to clean and corrupted accuracy.")
    for path in tables:
        name = path.parent.name
        dyn = pd.read_csv(path)
        s.blocks.append(_fig(dp.metric_over_epochs(dyn), f"{name}: learning, forgetting and cka divergence per layer over "
                             "epochs (colour = depth). Read: early layers (dark) should move least."))
        metrics = run_metrics(out / "runs" / name)
        if not metrics.empty:
            s.blocks.append(_fig(dp.accuracy_over_epochs(metrics, severity_accuracy(metrics)),
                                 f"{name}: clean accuracy and accuracy per corruption severity over epochs."))
        mean = dyn.groupby("epoch")[["learning", "forgetting", "cka_divergence"]].mean()
        s.blocks.append(Table(mean, f"{name}: mean over layers per epoch.", f"{name}: per epoch"))
    return s


def _correlation(out: Path) -> Section | None:
    from ftlens.analysis import correlation as corr
    from ftlens.analysis.dynamics import corrupted_accuracy, run_metrics
    from ftlens.report import analysis_plots as ap

    grids = sorted((out / "correlation").glob("*.csv")) if (out / "correlation").exists() else []
    if not grids:
        return None
    s = Section("Forgetting and robustness: the hypothesis grid",
                "Pearson correlation over epochs between each aggregate of the per-layer metrics and the mean corrupted "
                "accuracy; Bonferroni-corrected within each family. The paper's headline hypothesis (std of forgetting "
                "over layers 2..L) is always shown.")
    for path in grids:
        name = path.stem
        grid = pd.read_csv(path)
        dyn = pd.read_csv(out / "dynamics" / name / "dynamics.csv")
        acc = corrupted_accuracy(run_metrics(out / "runs" / name))
        best = corr.best_hypotheses(grid, k=10)
        cols = [c for c in ("hypothesis", "family", "r", "p", "p_bonferroni", "significant", "n_epochs") if c in best.columns]
        s.blocks.append(Table(best[cols].set_index("hypothesis"), f"{name}: the 10 hypotheses with the largest |r| "
                              f"({len(grid)} tested).", f"{name}: best hypotheses"))
        head = grid[grid["is_headline"].astype(bool)] if "is_headline" in grid.columns else grid.iloc[:0]
        if not head.empty:
            s.blocks.append(Table(head[cols].set_index("hypothesis"), "The paper's headline hypothesis on this run "
                                  "(paper: r = 0.78 on CIFAR-10-C).", f"{name}: headline"))
        s.blocks.append(_fig(ap.plot_correlation_scatter(dyn, acc), f"{name}: one point per epoch. Read: a rising cloud "
                             "means epochs with a larger spread of forgetting are more robust."))
        s.blocks.append(_fig(ap.plot_top_hypotheses(grid, k=10), f"{name}: r of the strongest hypotheses per family "
                             "(STIR metrics vs the cka-divergence and subspace baselines)."))
        try:
            prefix = corr.prefix_correlation(dyn, acc)
            s.blocks.append(_fig(ap.plot_prefix_correlation(prefix), f"{name}: the headline r computed on epochs 0..n "
                                 "(paper Fig. 14). Read: a strong early r makes forgetting usable for early stopping."))
        except Exception as exc:  # too few epochs
            s.blocks.append(Text(f"<p class='caption'>prefix correlation not available: {esc(exc)}</p>"))
    return s


def _distortion(out: Path) -> Section | None:
    from ftlens.report import analysis_plots as ap

    path = out / "distortion.csv"
    if not path.exists():
        return None
    d = pd.read_csv(path)
    s = Section("Feature distortion (Kumar et al.)",
                "Pre-logit and per-layer features of each finetuned model against the pretrained ones, on clean (ID) "
                "and corrupted (OOD) test images.")
    s.blocks.append(_fig(ap.plot_distortion(d, measure="mean_squared_difference", model_column="run"),
                         "Mean squared difference of pre-logit features to the pretrained model, ID vs OOD. Read: LP "
                         "leaves features untouched; LP-FT should distort less than FT."))
    s.blocks.append(_fig(ap.plot_distortion(d, measure="cosine_distance", model_column="run"),
                         "Mean cosine distance of pre-logit features to the pretrained model, ID vs OOD."))
    pl = d[d["layer"] == "pre_logits"].pivot_table(index="run", columns=["split", "measure"], values="value")
    pl.columns = [f"{split}: {measure}" for split, measure in pl.columns]
    s.blocks.append(Table(pl, "Pre-logit distortion per run (feature units; cosine distance unitless).", "Distortion"))
    energy = _energy_table(out, d)
    if energy is not None and not energy.empty:
        s.blocks.append(_fig(ap.plot_energy_vs_distortion(energy), "HP-FT sweep: distortion against the energy left for "
                             "finetuning (train loss at the start of FT). Seed 003: distances grow with energy, dot product "
                             "and norm first rise then fall."))
    return s


def _energy_table(out: Path, distortion: pd.DataFrame) -> pd.DataFrame | None:
    from ftlens.findings import energy_sweep

    return energy_sweep(out, distortion)


def build_report(directory: str | os.PathLike) -> Path:
    """Write ``DIRECTORY/report.html`` from whatever results the directory holds."""
    out = Path(directory)
    if (out / "comparison.json").exists():  # a single `ftlens compare` output
        from ftlens.invariance import load_comparison

        cmp = load_comparison(out)
        sections = [Section("Comparison", "", _comparison_blocks(out.name, cmp))]
        return html.write(out / "report.html", f"ftlens: {out.name}", "One pretrained/finetuned comparison.", sections)
    cfg = read_config(out / "config.yaml")
    builders = (_overview, _findings, _accuracies, _comparisons, _dynamics, _correlation, _distortion)
    sections = []
    for build in builders:
        try:
            section = build(out)
        except Exception as exc:  # one broken part must not lose the rest of the page
            section = Section(f"{build.__name__.strip('_')} (failed)", f"This section could not be built: {esc(exc)}")
        if section is not None:
            sections.append(section)
    title = cfg.get("title") or f"ftlens report: {out.name}"
    subtitle = ("What finetuning changed inside the model, layer by layer: invariances learned, forgotten and moved "
                "(STIR), representation divergence (CKA), dynamics, robustness and feature distortion.")
    return html.write(out / "report.html", title, subtitle, sections)
