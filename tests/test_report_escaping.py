"""Every string that reaches the report's HTML is escaped: markup in any user-controlled field
(run names, experiment name, title, dataset and model specs, every analysis value, comparison
names, findings) appears as text, never as a tag."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from ftlens.invariance import compare
from ftlens.models import load_model
from ftlens.report.build import build_report

MARK = "<img src=x onerror=alert(1)>"
EVIL = f"x{MARK}\"'<script>alert(2)</script>"


def _inject(obj, keys):
    """``obj`` with EVIL appended to the string values of ``keys`` (recursively)."""
    if isinstance(obj, dict):
        return {k: (f"{v}{EVIL}" if k in keys and isinstance(v, str) else _inject(v, keys)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_inject(v, keys) for v in obj]
    return obj


@pytest.fixture(scope="module")
def hostile_experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    cfg = {
        "name": f"exp{EVIL}", "title": f"T{EVIL}", "model": f"ftlens:vit-micro{EVIL}", "data": f"digits{EVIL}",
        "pretrain": {"data": f"patches{EVIL}"}, "runs": [{"name": f"ft{EVIL}", "strategy": f"ft{EVIL}"}],
        "defaults": {"lr": EVIL},
        "analysis": {k: EVIL for k in ("images", "seeds", "steps", "step_size", "layers", "debiased", "compare",
                                        "dynamics", "distortion", "batch_size")},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = out / "runs" / f"ft{EVIL}".replace("/", "_")
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1], "phase": ["init", f"ft{EVIL}"], "test_acc": [0.1, 0.5]}).to_csv(
        run / "metrics.csv", index=False)
    (run / "config.yaml").write_text(yaml.safe_dump({"strategy": f"ft{EVIL}", "task": f"t{EVIL}",
                                                     "data": f"d{EVIL}"}))
    # a real comparison, with markup in every name it records
    torch.manual_seed(0)
    pt = load_model("ftlens:vit-micro")
    torch.manual_seed(1)
    ft = load_model("ftlens:vit-micro")
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cmp = compare(pt, ft, images, layers=["blocks.0", "blocks.1"], seeds=1, n_images=4, steps=1, cache=None)
    cdir = out / "compare" / f"ft{EVIL}".replace("/", "_")
    cmp.save(cdir)
    meta = json.loads((cdir / "comparison.json").read_text())
    (cdir / "comparison.json").write_text(json.dumps(_inject(meta, {"name", "spec", "data", "split"})))
    findings = [{"claim": f"c{EVIL}", "source": f"s{EVIL}", "rule": f"r{EVIL}", "held": None,
                 "numbers": {f"n{EVIL}": EVIL}}]
    (out / "findings.json").write_text(json.dumps(findings))
    return out


def test_no_markup_survives_in_the_report(hostile_experiment):
    page = build_report(hostile_experiment).read_text()
    assert "<img src=x" not in page and "<script>alert" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 8  # the values are shown, as text
    from html.parser import HTMLParser

    tags: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            if tag == "img":
                assert dict(attrs)["src"].startswith("data:image/png;base64,")
            for name, _ in attrs:
                assert not name.startswith("on"), f"event handler attribute {name} in <{tag}>"

    Tags().feed(page)
    assert "script" not in tags
    assert "img" in tags  # the comparison's figures


def test_corrupt_config_yaml_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app

    (tmp_path / "config.yaml").write_text("runs: [unclosed\n  - {")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.yaml" in lines[0] and "Traceback" not in result.output
