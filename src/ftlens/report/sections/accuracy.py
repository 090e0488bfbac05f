"""Accuracy of every finetuning run, clean and under corruptions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ftlens.errors import ConfigError
from ftlens.layout import MARKERS
from ftlens.report.figures import fmt_value, styled
from ftlens.report.html import Section, Table
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, figure_block, read_config


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    rows = {}
    downstream = set()
    for src in sources:
        if src.config.get("data"):
            downstream.add(src.config["data"])
        for name, run in src.runs.items():
            m = pd.read_csv(run / MARKERS["run"])
            if "epoch" not in m.columns:
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
        chosen = df[df["data"].isin(downstream)] if downstream else df
        acc = chosen[[c for c in ("test_acc", "corrupted_acc_mean") if c in df.columns]].dropna(how="all").astype(float)
        if not acc.empty:
            fig = styled(_accuracy_bars)(acc)
            s.blocks.append(figure_block(fig, _accuracy_caption(acc)))
            plt.close("all")
    except Exception:  # a figure must never lose the table
        pass
    s.blocks.append(Table(df, "Last-epoch metrics per run (accuracy as a fraction; L1 in pixel units of [0, 1]; "
                          "PSNR in dB).", "Runs"))
    return s


def _accuracy_bars(acc: pd.DataFrame):
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


