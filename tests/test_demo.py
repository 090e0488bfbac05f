"""The quick demo end to end: every stage runs on the embedded data and the report is complete."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pandas as pd
import pytest

from ftlens.analysis.distortion import read_examples
from ftlens.experiment import Experiment, builtin_config, quick

pytestmark = pytest.mark.slow

VOID = {"meta", "img", "br", "hr", "input", "link"}


class _Checker(HTMLParser):
    """Checks that tags nest properly and collects images, tables and section titles."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.tables = 0
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag == "table":
            self.tables += 1
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = quick(builtin_config("demo"))
    report = Experiment(config, out, cache=None).run()
    assert report.exists()
    return out


def test_report_is_valid_html_with_every_part(demo_dir):
    text = (demo_dir / "report.html").read_text()
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert checker.stack == []
    titles = " | ".join(checker.h2)
    for part in ("What was run", "Findings", "Accuracy", "Invariances per layer", "Dynamics", "hypothesis grid",
                 "distortion"):
        assert part.lower() in titles.lower(), f"section {part!r} missing from {titles}"
    assert "(failed)" not in titles, titles
    assert "http://" not in text and "https://" not in text  # self-contained
    # every figure is an embedded, non-empty PNG
    assert len(checker.images) >= 10
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert checker.tables >= 8


def test_every_stage_wrote_its_results(demo_dir):
    config = quick(builtin_config("demo"))
    for run in config.runs:
        metrics = pd.read_csv(demo_dir / "runs" / run["name"] / "metrics.csv")
        assert len(metrics) >= 2
    for name in config.analysis.compare:
        assert (demo_dir / "compare" / name / "comparison.json").exists()
    dyn = pd.read_csv(demo_dir / "dynamics" / "ft" / "dynamics.csv")
    assert set(dyn["epoch"]) == set(range(0, 3))
    grid = pd.read_csv(demo_dir / "correlation" / "ft.csv")
    assert grid["is_headline"].sum() == 1
    dist = pd.read_csv(demo_dir / "distortion.csv")
    assert {"ID", "OOD"} <= set(dist["split"])
    # LP leaves the backbone untouched: zero distortion at every block
    lp = dist[(dist["run"] == "lp") & (dist["measure"] == "mean_squared_difference") & (dist["layer"] != "pre_logits")]
    assert len(lp) and (lp["value"].abs() < 1e-10).all()
    findings = json.loads((demo_dir / "findings.json").read_text())
    assert {f["id"] for f in findings} >= {"early-layers-reused", "cka-misses-forgetting", "lpft-distorts-less"}
    assert all(f["held"] in (True, False, None) for f in findings)
    # every distortion value has a bootstrap interval over the images, saved per image for the findings
    assert (dist["ci_low"] <= dist["value"] + 1e-12).all() and (dist["value"] <= dist["ci_high"] + 1e-12).all()
    assert (lp["ci_high"].abs() < 1e-10).all()
    values, sources = read_examples(demo_dir / "distortion_examples.npz")
    for r in dist.itertuples():
        assert values[(r.run, r.split, r.layer, r.measure)].mean() == pytest.approx(r.value, rel=1e-9, abs=1e-12)
    assert len(sources["ID"]) == dist[dist["split"] == "ID"]["n_images"].iloc[0]
    by_id = {f["id"]: f for f in findings}
    if "ft-distorts-id-more" in by_id:
        assert "bootstrap" in by_id["ft-distorts-id-more"]["test"] and by_id["ft-distorts-id-more"]["interval"]
    assert "interval from a bootstrap over the images" in (demo_dir / "report.html").read_text()
