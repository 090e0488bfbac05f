"""What was run (last): the models with their fingerprints, the configuration, timings, versions."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import yaml

from ftlens.findings import is_smoke
from ftlens.io import versions
from ftlens.layout import MARKERS
from ftlens.report.html import Section, Table, Text, esc
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, read_json


def summary(src: Source) -> str:
    cfg = src.config
    if not cfg:
        kinds = [f"{len(v)} {k}" for k, v in (("comparison(s)", src.compare), ("CKA matrix(es)", src.cka),
                                              ("dynamics table(s)", src.dynamics), ("finetuning run(s)", src.runs)) if v]
        return f"<code>{esc(src.root)}</code>: {', '.join(kinds)}."
    a = cfg.get("analysis", {}) or {}

    from ftlens.data import is_text_dataset

    unit = "texts" if is_text_dataset(str(cfg.get("data", ""))) else "images"
    smoke = is_smoke(cfg)
    banner = (f"<b class='nothold'>Smoke-sized run</b> ({esc('; '.join(smoke))}): it checks that the pipeline works; "
              "its numbers are too noisy to support the papers' findings, and the verdicts say so. ") if smoke else ""
    return banner + (
        f"<code>{esc(src.name)}</code>: model <code>{esc(cfg.get('model'))}</code>"
        + (f", pretrained on <code>{esc(cfg['pretrain'].get('data'))}</code>" if cfg.get("pretrain") else "")
        + f", finetuned on <code>{esc(cfg.get('data'))}</code> in {len(cfg.get('runs', []))} ways. "
        f"STIR uses {esc(a.get('images'))} {unit} per seed, {esc(a.get('seeds'))} seeds, {esc(a.get('steps'))} "
        f"inversion steps of size {esc(a.get('step_size'))}; CKA estimator: "
        f"<b>{'debiased' if a.get('debiased') else 'biased'} linear CKA</b>."
    )


def section(sources: Sequence[Source], label: Labels) -> Section:
    s = Section("What was run: models, configuration, environment",
                "Layers are numbered from 1 (layer 1 = <code>blocks.0</code>); a text model's input embeddings "
                "(<code>embeddings</code>) are layer 0.")
    for src in sources:
        timings = read_json(src.timings) or {}
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
        cfg = read_json(folder / MARKERS["compare"]) or {}
        for role in ("pretrained", "finetuned"):
            m = cfg.get(role) or {}
            if m.get("name") and m["name"] not in rows:
                rows[m["name"]] = {"role": role, "spec": m.get("spec", ""),
                                   "fingerprint": str(m.get("fingerprint", ""))[:16],
                                   "input size": "x".join(map(str, m.get("input_size", [])))}
    if not rows:
        return None
    return pd.DataFrame(rows).T.rename_axis("model")


