"""Turn results into ``report.html``: an experiment, a single command's output, a folder of
several, or several experiments side by side (:mod:`ftlens.report.inputs` finds them).

Order of the page: findings, then the figures (runs overlaid on shared axes, one figure per
metric), then per-run details, and what was run (configuration, versions, timings) last.
Every caption states what the figure shows on these numbers; every table says which CKA
estimator produced it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ftlens.layers import layer_numbers
from ftlens.layout import MARKERS
from ftlens.report import html
from ftlens.report.figures import (
    decimals_for,
    figure_png,
    fmt_num,
    fmt_value,
    layer_label,
    layer_title,
)
from ftlens.report.html import Figure, Section, Table, Text, esc
from ftlens.report.inputs import NothingToReportError, Source, discover
from ftlens.vocabulary import FINETUNED, PRETRAINED, residual_column, stir_column

__all__ = ["NothingToReportError", "build_report"]

METRIC_TEXT = {
    "learning": ("Learning of invariances", "learning = STIR(ft|ft) - STIR(pt|ft)"),
    "forgetting": ("Forgetting of invariances", "forgetting = STIR(pt|pt) - STIR(ft|pt)"),
    "cka_divergence": ("CKA divergence", "cka divergence = 1 - CKA(ft, pt)"),
}


def _fig(fig, caption: str, title: str = "") -> Figure:
    return Figure(figure_png(fig), caption, title)


def _read_json(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def _layer_index(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` indexed by layer name, shown as "number (name)"; the ``layer_number`` column (if any) gives the number."""
    df = df.copy()
    names = [str(i) for i in df.index]
    numbers = df.pop("layer_number").astype(int).tolist() if "layer_number" in df.columns else layer_numbers(names)
    df.index = [layer_title(name, n) for name, n in zip(names, numbers, strict=True)]
    df.index.name = "layer"
    return df


def read_config(path: Path) -> dict[str, Any]:
    """A config.yaml as a dict ({} when absent); ConfigError when it is not a readable mapping."""
    from ftlens.layout import read_yaml_config

    return read_yaml_config(path)


class _Labels:
    """Run labels: the run name alone for one source, ``source/run`` for several."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.many = len(sources) > 1

    def __call__(self, src: Source, name: str) -> str:
        return f"{src.name}/{name}" if self.many else name


# --------------------------------------------------------------------------- findings


def _findings(sources: Sequence[Source], label: _Labels) -> Section | None:
    per_source = {s.name: _read_json(s.findings) for s in sources if s.findings is not None}
    per_source = {k: v for k, v in per_source.items() if v}
    if not per_source:
        return None
    s = Section("Findings of the papers, tested on this run" if len(per_source) == 1 else
                "Findings of the papers, tested on each experiment",
                "Each verdict is computed from the numbers by the stated rule; nothing is written in advance. "
                "Small models and data can legitimately disagree with the papers.")
    if len(per_source) == 1:
        findings = next(iter(per_source.values()))
        rows = []
        for f in findings:
            cls, verdict = _verdict(f)
            rows.append(f"<tr><td>{esc(f['claim'])}<br/><span class='caption'>{esc(f['source'])}</span></td>"
                        f"<td class='{cls}'>{verdict}</td><td>{esc(f['rule'])}</td><td>{esc(_numbers(f))}</td></tr>")
        s.blocks.append(Text("<table class='text'><thead><tr><th>claim</th><th>verdict</th><th>rule</th><th>numbers</th></tr>"
                             f"</thead><tbody>{''.join(rows)}</tbody></table>"))
        return s
    claims: dict[str, str] = {}
    for findings in per_source.values():
        for f in findings:
            claims.setdefault(f["id"], f["claim"])
    head = "".join(f"<th>{esc(name)}</th>" for name in per_source)
    rows = []
    for fid, claim in claims.items():
        cells = []
        for findings in per_source.values():
            f = next((x for x in findings if x["id"] == fid), None)
            if f is None:
                cells.append("<td class='na'>–</td>")
                continue
            cls, verdict = _verdict(f)
            cells.append(f"<td class='{cls}' title='{esc(_numbers(f))}'>{verdict}</td>")
        rows.append(f"<tr><td>{esc(claim)}</td>{''.join(cells)}</tr>")
    s.blocks.append(Text(f"<table class='text'><thead><tr><th>claim</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"))
    return s


def _verdict(f: dict) -> tuple[str, str]:
    """(css class, text) of a finding's verdict (``held`` / ``did not hold`` / ``inconclusive``)."""
    verdict = f.get("verdict")
    if verdict is None:  # written before verdicts had three values
        held = f.get("held")
        verdict = "held" if held is True else ("did not hold" if held is False else "inconclusive")
    return {"held": "held", "did not hold": "nothold"}.get(verdict, "na"), verdict


def _numbers(f: dict) -> str:
    """The statistic with its interval, the test, the reason when inconclusive, then the numbers."""
    parts = []
    stat, interval = f.get("statistic"), f.get("interval")
    if stat is not None:
        text = f"statistic = {stat:.4g}"
        if interval and None not in interval:
            text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
        parts.append(text)
    if f.get("test"):
        parts.append(f"{f['test']}, n = {f.get('n_points')}")
    if f.get("reason"):
        parts.append(f"inconclusive because: {f['reason']}")
    parts.extend(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in f["numbers"].items())
    return "; ".join(parts)


# --------------------------------------------------------------------------- comparisons


def _load_comparisons(sources: Sequence[Source], label: _Labels) -> dict[str, tuple[Source, Any]]:
    from ftlens.invariance import load_comparison

    out = {}
    for src in sources:
        for name, folder in src.compare.items():
            out[label(src, name)] = (src, load_comparison(folder))
    return out


def _group_key(src: Source, cmp: Any) -> tuple:
    cfg = cmp.config
    data = (cfg.get("data") or {}).get("name") or src.config.get("data") or ""
    return (cfg.get("pretrained", {}).get("name", ""), len(cmp.layers), data)


def _layer_no(table: pd.DataFrame, i: int) -> int:
    """The 1-based position in the model of row ``i`` of a per-layer table (not its row number)."""
    if "layer_number" in table.columns:
        return int(table["layer_number"].iloc[i])
    return i + 1


def _describe_metric(tables: dict[str, pd.DataFrame], metric: str) -> str:
    """What the overlaid figure shows, from its numbers."""
    means = {k: float(t[metric].mean()) for k, t in tables.items() if metric in t.columns}
    if not means:
        return ""
    name = METRIC_TEXT[metric][0].lower() if metric in METRIC_TEXT else metric
    if len(means) == 1:
        (label, t), = ((k, tables[k]) for k in means)
        v = t[metric].to_numpy(dtype=float)
        top = int(np.nanargmax(v))
        return (f"{label}: {name} averages {fmt_value(means[label])} over {len(v)} layers, from {fmt_value(v[0])} at "
                f"layer {_layer_no(t, 0)} to {fmt_value(v[-1])} at layer {_layer_no(t, len(v) - 1)}; largest at layer "
                f"{_layer_no(t, top)} ({fmt_value(v[top])}).")
    hi = max(means, key=means.get)
    lo = min(means, key=means.get)
    peak_run, peak_layer, peak = "", 0, -np.inf
    for k, t in tables.items():
        if metric in t.columns:
            v = t[metric].to_numpy(dtype=float)
            if np.isfinite(v).any() and np.nanmax(v) > peak:
                peak, peak_run, peak_layer = float(np.nanmax(v)), k, _layer_no(t, int(np.nanargmax(v)))
    return (f"Mean {name} over layers is highest for {hi} ({fmt_value(means[hi])}) and lowest for {lo} "
            f"({fmt_value(means[lo])}); the largest single value is {fmt_value(peak)} ({peak_run}, layer {peak_layer}).")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _flow_caption(label: str, cmp: Any) -> str:
    """Where the flow points on this run: the corrected flow when the baseline is known, else the raw one."""
    corrected = getattr(cmp, "flow_corrected", None)
    flow = (corrected if corrected is not None else cmp.flow).to_numpy(dtype=float)
    which = "corrected InvarianceFlow (raw minus the pretrained model's own flow)" if corrected is not None \
        else "InvarianceFlow (eq. 5; no baseline recorded, so this includes STIR's own asymmetry)"
    below = flow[np.tril_indices_from(flow, k=-1)]
    above = flow[np.triu_indices_from(flow, k=1)]
    if not below.size:
        return f"{label}: {which} (one layer: nothing off the diagonal)."
    where = "below" if np.nanmean(below) > np.nanmean(above) else "above"
    meaning = "compression toward shallower layers" if where == "below" else "expansion toward deeper layers"
    return (f"{label}: {which}, rows = pretrained layer i, columns = finetuned layer j. Mean below the "
            f"diagonal {fmt_value(np.nanmean(below))}, above {fmt_value(np.nanmean(above))}: on this run the flow points "
            f"{where} the diagonal ({meaning}).")


def _comparisons(sources: Sequence[Source], label: _Labels) -> Section | None:
    from ftlens.report import invariance_plots as ip
    from ftlens.report.figures import overlay_per_layer

    loaded = _load_comparisons(sources, label)
    if not loaded:
        return None
    s = Section("Invariances per layer: learning, forgetting, flow",
                "Every finetuned model against its pretrained one, runs overlaid on shared axes: one figure per metric, "
                "one line per run (scratch: the same architecture trained from random weights, compared with the "
                "pretrained model as in the paper). " + _inversion_quality({k: c for k, (_, c) in loaded.items()})
                + _model_notes({k: c for k, (_, c) in loaded.items()}))
    groups: dict[tuple, dict[str, Any]] = {}
    for lab, (src, cmp) in loaded.items():
        groups.setdefault(_group_key(src, cmp), {})[lab] = cmp
    for (model, _, data), cmps in groups.items():
        tables = {k: c.per_layer for k, c in cmps.items()}
        est = "/".join(sorted({c.estimator for c in cmps.values()}))
        where = f" ({model}{', ' + data if data else ''})" if len(groups) > 1 else ""
        for metric, (title, ylabel) in METRIC_TEXT.items():
            fig = overlay_per_layer(tables, metric, ylabel=ylabel, title=f"{title}{where}; linear CKA, {est} HSIC")
            s.blocks.append(_fig(fig, _describe_metric(tables, metric)))
        finite = [np.abs(c.flow.to_numpy(dtype=float)) for c in cmps.values()]
        vmax = max((float(np.nanmax(f)) for f in finite if np.isfinite(f).any()), default=1.0) or 1.0
        for lab, cmp in cmps.items():
            if getattr(cmp, "flow_baseline", None) is not None:
                # raw, baseline and corrected side by side: the raw matrix alone mostly shows STIR's own asymmetry
                s.blocks.append(_fig(ip.flow_panels(cmp, title=lab), f"{lab}: InvarianceFlow (eq. 5) of the finetuned "
                                     "model (raw), next to the pretrained model's own flow (baseline: STIR is "
                                     "directional, so a model compared with itself already has one) and their "
                                     "difference (corrected = raw - baseline, what finetuning changed), on one colour "
                                     "scale. " + _sentence(_flow_caption(lab, cmp).split(": ", 1)[1])))
            else:
                s.blocks.append(_fig(ip.plot_flow(cmp, title=f"InvarianceFlow: {lab}", vmax=vmax),
                                     _flow_caption(lab, cmp)
                                     + (" Same colour scale for every run." if len(cmps) > 1 else "")))
    for lab, (_, cmp) in loaded.items():
        cols = [c for c in cmp.per_layer.columns if not c.startswith("residual")]
        s.blocks.append(Table(_layer_index(cmp.per_layer[cols]), f"{lab}: per-layer metrics (linear CKA, {cmp.estimator} "
                              "HSIC); *_std is over seeds, *_lo / *_hi the 95% interval (seeds and a bootstrap over "
                              "images); converged: every inversion of the layer ended below the residual threshold "
                              "(unconverged layers are hatched in the figures); stir_pretrained_given_pretrained / "
                              "stir_finetuned_given_finetuned are the measured first terms (inversion quality; 1 = perfect).", f"{lab}: per layer",
                              collapsed=True))
        res = [c for c in cmp.per_layer.columns if c.startswith("residual")]
        res = ["layer_number", *res] if res else res
        if res:
            s.blocks.append(Table(_layer_index(cmp.per_layer[res]), f"{lab}: mean final relative inversion residual "
                                  "||r(x') - r(x)|| / ||r(x)|| per layer and reference model (0 = converged).",
                                  f"{lab}: inversion residuals", collapsed=True))
    return s


def _model_notes(comparisons: dict) -> str:
    """Sentences on how models were read: LoRA adapters merged, a token mode other than all tokens."""
    notes = []
    for lab, cmp in comparisons.items():
        for role in ("pretrained", "finetuned"):
            m = cmp.config.get(role) or {}
            lora = m.get("lora")
            if lora:
                notes.append(f"{esc(lab)}: the {role} model {esc(m.get('name', ''))} is a LoRA finetune (rank "
                             f"{esc(lora.get('r'))}, adapter {esc(lora.get('adapter'))}), analysed with its adapters "
                             "merged into the base weights.")
            if m.get("tokens", "all") != "all":
                notes.append(f"{esc(lab)}: layers of the {role} model are read as {esc(m['tokens'])} tokens "
                             "(not all tokens flattened).")
    return (" " + " ".join(notes)) if notes else ""


def _inversion_quality(comparisons: dict) -> str:
    """One sentence on how well the inversions converged (residuals and self-STIR), from the numbers."""
    first = next(iter(comparisons.values()))
    pl = first.per_layer
    parts = []
    res = residual_column(PRETRAINED)
    if res in pl.columns:
        parts.append(f"final relative residual of the pretrained-side inversions: {fmt_value(pl[res].iloc[0])} "
                     f"at layer {_layer_no(pl, 0)} to {fmt_value(pl[res].iloc[-1])} at layer "
                     f"{_layer_no(pl, len(pl) - 1)}")
    selfs = [c.per_layer[col] for c in comparisons.values()
             for col in (stir_column(PRETRAINED, PRETRAINED), stir_column(FINETUNED, FINETUNED))
             if col in c.per_layer.columns]
    if selfs:
        lo = min(float(v.min()) for v in selfs)
        hi = max(float(v.max()) for v in selfs)
        parts.append(f"STIR of a layer with itself (1 = perfect inversion) between {fmt_value(lo)} and {fmt_value(hi)}")
    if not parts:
        return ""
    return ("Inversion quality: " + "; ".join(parts) + ". Learning and forgetting use these measured self-STIR "
            "terms, so inversion error largely cancels; the residual tables give every layer.")


# --------------------------------------------------------------------------- accuracy


def _accuracies(sources: Sequence[Source], label: _Labels) -> Section | None:
    rows = {}
    downstream = set()
    for src in sources:
        if src.config.get("data"):
            downstream.add(src.config["data"])
        for name, run in src.runs.items():
            m = pd.read_csv(run / MARKERS["run"])
            if "epoch" not in m.columns:
                from ftlens.errors import ConfigError

                raise ConfigError(f"{run / MARKERS['run']} is not an ftlens metrics table (no epoch column)")
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
            rows[label(src, name)] = row
    if not rows:
        return None
    df = pd.DataFrame(rows).T.rename_axis("run")
    s = Section("Accuracy of every run, in and out of distribution",
                "Every finetuning run at its last epoch. <code>test_acc</code> is clean test accuracy (ID); "
                "<code>corrupted_acc_mean</code> is the mean over corruptions and severities (OOD); "
                "<code>energy_*</code> is the training accuracy/loss when full finetuning starts (HP-FT, LP-FT).")
    try:
        import matplotlib.pyplot as plt

        from ftlens.report.figures import styled

        chosen = df[df["data"].isin(downstream)] if downstream else df
        acc = chosen[[c for c in ("test_acc", "corrupted_acc_mean") if c in df.columns]].dropna(how="all").astype(float)
        if not acc.empty:
            fig = styled(_accuracy_bars)(acc)
            s.blocks.append(_fig(fig, _accuracy_caption(acc)))
            plt.close("all")
    except Exception:  # a figure must never lose the table
        pass
    s.blocks.append(Table(df, "Last-epoch metrics per run (accuracy as a fraction; L1 in pixel units of [0, 1]; "
                          "PSNR in dB).", "Runs"))
    return s


def _accuracy_bars(acc: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(acc) + 3.0), 3.8))
    acc.plot.bar(ax=ax, color=["#2f6db5", "#d1495b"][: acc.shape[1]], rot=30)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_xlabel("run")
    ax.set_ylim(0, 1)
    ax.legend(["clean test (ID)", "corrupted (OOD), mean"][: acc.shape[1]], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("ID vs OOD accuracy per run")
    fig.tight_layout()
    return fig


def _accuracy_caption(acc: pd.DataFrame) -> str:
    parts = []
    if "test_acc" in acc.columns and acc["test_acc"].notna().any():
        best = acc["test_acc"].idxmax()
        parts.append(f"Highest clean accuracy: {best} ({fmt_value(acc.loc[best, 'test_acc'])})")
    if {"test_acc", "corrupted_acc_mean"} <= set(acc.columns):
        gap = (acc["test_acc"] - acc["corrupted_acc_mean"]).dropna()
        if not gap.empty:
            parts.append(f"smallest drop under corruption: {gap.idxmin()} ({fmt_value(gap.min())}); largest: "
                         f"{gap.idxmax()} ({fmt_value(gap.max())})")
    return "; ".join(parts) + "." if parts else "Accuracy per run."


# --------------------------------------------------------------------------- dynamics


def _dynamics(sources: Sequence[Source], label: _Labels) -> Section | None:
    from ftlens.analysis.dynamics import read_dynamics, run_metrics, severity_accuracy
    from ftlens.report import dynamics_plots as dp

    items = [(label(src, name), src, name, folder) for src in sources for name, folder in src.dynamics.items()]
    if not items:
        return None
    s = Section("Dynamics over finetuning epochs",
                "Each epoch's checkpoint against the pretrained model (pretrained-side inversions computed once and "
                "reused), next to clean and corrupted accuracy.")
    means = {}
    for lab, src, name, folder in items:
        dyn = read_dynamics(folder / MARKERS["dynamics"])
        means[lab] = dyn.groupby("epoch")[["learning", "forgetting", "cka_divergence"]].mean()
        s.blocks.append(_fig(dp.metric_over_epochs(dyn), _dynamics_caption(lab, dyn)))
        run = src.run_of(name)
        metrics = run_metrics(run) if run is not None else pd.DataFrame()
        if not metrics.empty:
            s.blocks.append(_fig(dp.accuracy_over_epochs(metrics, severity_accuracy(metrics)),
                                 _accuracy_epochs_caption(lab, metrics)))
        s.blocks.append(Table(means[lab], f"{lab}: mean over layers per epoch.", f"{lab}: per epoch"))
    if len(means) > 1:  # several runs: overlaid first, one figure per metric
        from ftlens.report.figures import overlay_epochs

        overlays = []
        for metric, (title, ylabel) in METRIC_TEXT.items():
            last = {k: float(v[metric].iloc[-1]) for k, v in means.items()}
            hi = max(last, key=last.get)
            overlays.append(_fig(overlay_epochs(means, metric, ylabel=ylabel, title=f"{title}, mean over layers"),
                                 f"{title} averaged over layers, one line per run; at the last epoch highest for {hi} "
                                 f"({fmt_value(last[hi])})."))
        s.blocks = overlays + s.blocks
    return s


def _dynamics_caption(label: str, dyn: pd.DataFrame) -> str:
    last = dyn[dyn["epoch"] == dyn["epoch"].max()]
    if last.empty or "forgetting" not in last.columns:
        return f"{label}: per-layer metrics over epochs (colour = depth)."
    order = list(dict.fromkeys(dyn["layer"]))
    f = last.set_index("layer")["forgetting"].reindex(order)
    top = f.idxmax()
    low = f.idxmin()
    return (f"{label}: learning, forgetting and cka divergence per layer over epochs (colour = depth). At the last "
            f"epoch ({int(dyn['epoch'].max())}) forgetting is largest at layer {layer_label(str(top))} "
            f"({fmt_value(f[top])}) and smallest at layer {layer_label(str(low))} ({fmt_value(f[low])}).")


def _accuracy_epochs_caption(label: str, metrics: pd.DataFrame) -> str:
    m = metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
    parts = [f"{label}: clean accuracy and accuracy per corruption severity over epochs"]
    if "test_acc" in m.columns and m["test_acc"].notna().any():
        parts.append(f"clean accuracy goes from {fmt_value(m['test_acc'].iloc[0])} (epoch {int(m['epoch'].iloc[0])}) to "
                     f"{fmt_value(m['test_acc'].iloc[-1])} (epoch {int(m['epoch'].iloc[-1])})")
    if "corrupted_acc_mean" in m.columns and m["corrupted_acc_mean"].notna().any():
        parts.append(f"mean corrupted accuracy from {fmt_value(m['corrupted_acc_mean'].iloc[0])} to "
                     f"{fmt_value(m['corrupted_acc_mean'].iloc[-1])}")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------- correlation


def _correlation(sources: Sequence[Source], label: _Labels) -> Section | None:
    from ftlens.analysis import correlation as corr
    from ftlens.analysis.dynamics import corrupted_accuracy, read_dynamics, run_metrics
    from ftlens.report import analysis_plots as ap

    items = [(label(src, name), src, name, path) for src in sources for name, path in src.correlation.items()]
    if not items:
        return None
    s = Section("Forgetting and robustness: the hypothesis grid",
                "Pearson correlation over epochs between each aggregate of the per-layer metrics and the mean corrupted "
                "accuracy; Bonferroni-corrected within each family. The paper's headline hypothesis (std of forgetting "
                "over layers 2..L) is always shown.")
    for lab, src, name, path in items:
        grid = pd.read_csv(path)
        cols = [c for c in ("hypothesis", "family", "r", "p", "p_bonferroni", "significant", "n_epochs") if c in grid.columns]
        head = grid[grid["is_headline"].astype(bool)] if "is_headline" in grid.columns else grid.iloc[:0]
        best = corr.best_hypotheses(grid, k=10)
        dyn_folder = src.dynamics.get(name)
        run = src.run_of(name)
        if dyn_folder is not None and run is not None:
            dyn = read_dynamics(dyn_folder / MARKERS["dynamics"])
            acc = corrupted_accuracy(run_metrics(run))
            s.blocks.append(_fig(ap.plot_correlation_scatter(dyn, acc), _headline_caption(lab, head)))
            try:
                prefix = corr.prefix_correlation(dyn, acc)
                s.blocks.append(_fig(ap.plot_prefix_correlation(prefix), f"{lab}: the headline r computed on epochs "
                                     "0..n (paper Fig. 14); where it settles early, forgetting could guide early stopping."))
            except Exception as exc:  # too few epochs
                s.blocks.append(Text(f"<p class='caption'>prefix correlation not available: {esc(exc)}</p>"))
        s.blocks.append(_fig(ap.plot_top_hypotheses(grid, k=10), f"{lab}: r of the strongest hypotheses per family "
                             "(STIR metrics vs the cka-divergence and subspace baselines); hatched = not significant."))
        s.blocks.append(Table(best[cols].set_index("hypothesis"), f"{lab}: the 10 hypotheses with the largest |r| "
                              f"({len(grid)} tested).", f"{lab}: best hypotheses"))
        if not head.empty:
            s.blocks.append(Table(head[cols].set_index("hypothesis"), "The paper's headline hypothesis on this run "
                                  "(the paper reports r = 0.78 on CIFAR-10-C).", f"{lab}: headline"))
    return s


def _headline_caption(label: str, head: pd.DataFrame) -> str:
    if head.empty:
        return f"{label}: one point per epoch."
    row = head.iloc[0]
    r, p = float(row["r"]), float(row["p"])
    if not np.isfinite(r):
        return f"{label}: one point per epoch; r is undefined on this run."
    sign = "rises" if r > 0 else "falls"
    sig = "significant" if p < 0.05 else "not significant"
    return (f"{label}: one point per epoch. Corrupted accuracy {sign} with the std of forgetting over layers 2..L: "
            f"r = {fmt_value(r)}, p = {p:.2g} ({sig} at 0.05) over {int(row.get('n_epochs', 0))} epochs.")


# --------------------------------------------------------------------------- distortion


def _distortion(sources: Sequence[Source], label: _Labels) -> Section | None:
    from ftlens.findings import energy_sweep
    from ftlens.report import analysis_plots as ap

    items = [(src, pd.read_csv(src.distortion)) for src in sources if src.distortion is not None]
    if not items:
        return None
    s = Section("Feature distortion (Kumar et al.)",
                "Pre-logit and per-layer features of each finetuned model against the pretrained ones, on clean (ID) "
                "and corrupted (OOD) test images.")
    for src, d in items:
        d = d.assign(run=[label(src, r) for r in d["run"]])
        pl = d[d["layer"] == "pre_logits"].pivot_table(index="run", columns=["split", "measure"], values="value")
        s.blocks.append(_fig(ap.plot_distortion(d, measure="mean_squared_difference", model_column="run"),
                             _distortion_caption(pl, "mean_squared_difference", "mean squared difference")))
        s.blocks.append(_fig(ap.plot_distortion(d, measure="cosine_distance", model_column="run"),
                             _distortion_caption(pl, "cosine_distance", "mean cosine distance")))
        pl.columns = [f"{split}: {measure}" for split, measure in pl.columns]
        s.blocks.append(Table(pl, "Pre-logit distortion per run (feature units; cosine distance unitless).",
                              "Distortion" + (f": {src.name}" if label.many else "")))
        energy = energy_sweep(src.root, pd.read_csv(src.distortion)) if src.experiment else None
        if energy is not None and not energy.empty:
            s.blocks.append(_fig(ap.plot_energy_vs_distortion(energy), "HP-FT sweep: each point is one run, placed by "
                                 "its training loss when full finetuning started (the energy left for finetuning); "
                                 "one line per image split (Ren et al. 2023)."))
    return s


def _distortion_caption(pl: pd.DataFrame, measure: str, words: str) -> str:
    try:
        id_col = pl[("ID", measure)]
    except KeyError:
        return f"Pre-logit {words} to the pretrained features, ID vs OOD."
    hi, lo = id_col.idxmax(), id_col.idxmin()
    return (f"Pre-logit {words} to the pretrained features on ID images: largest for {hi} ({fmt_value(id_col[hi])}), "
            f"smallest for {lo} ({fmt_value(id_col[lo])}).")


# --------------------------------------------------------------------------- cka


def _cka(sources: Sequence[Source], label: _Labels) -> Section | None:
    from ftlens.cka import load_cka
    from ftlens.report.figures import cka_heatmap

    items = [(label(src, name), folder) for src in sources for name, folder in src.cka.items()]
    if not items:
        return None
    s = Section("CKA between layers", "Linear CKA (or the measure named in the figure) between every layer of one "
                "model and every layer of another on the same images (CKA: 1 = identical up to rotation and scale).")
    for lab, folder in items:
        result = load_cka(folder)
        matrix, meta = result.matrix, result.config
        a, b = meta.get("first", "the first model"), meta.get("second", "the second model")
        what = "CKA" if "cka" in result.measure else result.measure  # ftlens cka --measure NAME
        fig = cka_heatmap(matrix, title=f"{result.title}: {lab}", xlabel=f"layer of {b}", ylabel=f"layer of {a}",
                          colorbar=result.colorbar)
        values = matrix.to_numpy(dtype=float)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        digits = decimals_for(hi - lo)
        caption = (f"{lab}: {what} from {fmt_num(lo, digits)} to {fmt_num(hi, digits)} (the colour scale spans this "
                   "range)")
        if values.shape[0] == values.shape[1]:
            caption += f"; mean on the diagonal (same layer) {fmt_num(np.nanmean(np.diag(values)), digits)}"
        if meta.get("images"):
            caption += f"; {meta['images']} images of {meta.get('data', '?')}"
        s.blocks.append(_fig(fig, caption + "."))
        s.blocks.append(Table(matrix.rename(index=layer_label, columns=layer_label).rename_axis(f"{a} \\ {b}"),
                              f"{lab}: {what} values (rows: layers of {a}; columns: layers of {b}; 1-based).",
                              f"{lab}: {what}", digits=digits, collapsed=True))
    return s


# --------------------------------------------------------------------------- what was run (last)


def _summary(src: Source) -> str:
    cfg = src.config
    if not cfg:
        kinds = [f"{len(v)} {k}" for k, v in (("comparison(s)", src.compare), ("CKA matrix(es)", src.cka),
                                              ("dynamics table(s)", src.dynamics), ("finetuning run(s)", src.runs)) if v]
        return f"<code>{esc(src.root)}</code>: {', '.join(kinds)}."
    a = cfg.get("analysis", {}) or {}
    from ftlens.findings import is_smoke

    smoke = is_smoke(cfg)
    banner = (f"<b class='nothold'>Smoke-sized run</b> ({esc('; '.join(smoke))}): it checks that the pipeline works; "
              "its numbers are too noisy to support the papers' findings, and the verdicts say so. ") if smoke else ""
    return banner + (
        f"<code>{esc(src.name)}</code>: model <code>{esc(cfg.get('model'))}</code>"
        + (f", pretrained on <code>{esc(cfg['pretrain'].get('data'))}</code>" if cfg.get("pretrain") else "")
        + f", finetuned on <code>{esc(cfg.get('data'))}</code> in {len(cfg.get('runs', []))} ways. "
        f"STIR uses {esc(a.get('images'))} images per seed, {esc(a.get('seeds'))} seeds, {esc(a.get('steps'))} "
        f"inversion steps of size {esc(a.get('step_size'))}; CKA estimator: "
        f"<b>{'debiased' if a.get('debiased') else 'biased'} linear CKA</b>."
    )


def _environment(sources: Sequence[Source], label: _Labels) -> Section:
    from ftlens.io import versions

    s = Section("What was run: models, configuration, environment",
                "Layers are numbered from 1 (layer 1 = <code>blocks.0</code>).")
    for src in sources:
        timings = _read_json(src.timings) or {}
        models = _models_table(src)
        suffix = f": {src.name}" if label.many else ""
        if models is not None:
            s.blocks.append(Table(models, "Every model that was compared: the spec it was loaded from and the sha256 of "
                                  "its weights (first 16 hex digits), so a result can be traced to exact weights.",
                                  "Models" + suffix))
        if timings:
            rows = {k: f"{v:.1f} s" for k, v in timings.items()}
            rows["total"] = f"{sum(timings.values()):.1f} s"
            s.blocks.append(Table(pd.DataFrame({"wall time": rows}).rename_axis("stage"), "Wall time of each stage.",
                                  "Timings" + suffix))
        if src.config:
            s.blocks.append(Text(f"<details><summary>Full configuration{esc(suffix)}</summary>"
                                 f"<pre>{esc(yaml.safe_dump(src.config, sort_keys=False))}</pre></details>"))
    env = versions()
    s.blocks.append(Table(pd.DataFrame({"version": env}).rename_axis("software"), "Versions of the software that built "
                          "this page (each result file records its own).", "Environment"))
    return s


def _models_table(src: Source) -> pd.DataFrame | None:
    rows = {}
    for folder in src.compare.values():
        cfg = _read_json(folder / MARKERS["compare"]) or {}
        for role in ("pretrained", "finetuned"):
            m = cfg.get(role) or {}
            if m.get("name") and m["name"] not in rows:
                rows[m["name"]] = {"role": role, "spec": m.get("spec", ""),
                                   "fingerprint": str(m.get("fingerprint", ""))[:16],
                                   "input size": "x".join(map(str, m.get("input_size", [])))}
    if not rows:
        return None
    return pd.DataFrame(rows).T.rename_axis("model")


# --------------------------------------------------------------------------- the page

BUILDERS = (_findings, _comparisons, _accuracies, _dynamics, _correlation, _distortion, _cka)


def build_report(
    directory: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None
) -> Path:
    """Write one self-contained HTML page from whatever results ``directory`` holds.

    Args:
        directory: an experiment folder, the ``--out`` folder of ``ftlens compare``/``cka``/
            ``dynamics``/``finetune``, a folder of several, or a list of experiment folders
            (shown side by side; runs with the same model and data share each figure).
        out: the page (default ``DIRECTORY/report.html``; for several folders, ``report.html``
            in their common parent).

    Raises:
        NothingToReportError: no known result under ``directory`` (the message says what was looked for).
    """
    paths = [directory] if isinstance(directory, (str, os.PathLike)) else list(directory)
    sources = discover(paths)
    label = _Labels(sources)
    if out is None:
        base = Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        out = base / "report.html"
    sections = []
    for build in (*BUILDERS, _environment):
        try:
            section = build(sources, label)
        except Exception as exc:  # one broken part must not lose the rest of the page
            section = Section(f"{build.__name__.strip('_')} (failed)", f"This section could not be built: {esc(exc)}")
        if section is not None:
            sections.append(section)
    titles = [s.config.get("title") for s in sources if s.config.get("title")]
    title = titles[0] if len(sources) == 1 and titles else f"ftlens report: {', '.join(s.name for s in sources)}"
    lead = ("What finetuning changed inside the model, layer by layer: invariances learned, forgotten and moved "
            "(STIR), representation divergence (CKA), dynamics, robustness and feature distortion. "
            + " ".join(_summary(s) for s in sources))
    return html.write(out, title, lead, sections)
