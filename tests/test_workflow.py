"""The researcher's workflow: the README's commands end to end, the output layout and `ftlens report`
over any of it, the shared CLI options, progress in logs, and the Python one-liners."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import ftlens
from ftlens.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# Small settings added to the README's commands (the commands themselves are taken as written).
SMALL = {
    "finetune": ["--epochs", "2", "--train-size", "96", "--test-size", "48", "--batch-size", "16",
                 "--corruption-size", "32", "--severities", "1"],
    "cka": ["--images", "32"],
    "compare": ["--images", "12", "--seeds", "2", "--steps", "2"],
    "dynamics": ["--images", "12", "--seeds", "1", "--steps", "2"],
}


def readme_workflow() -> list[list[str]]:
    """The commands of the README's workflow block, as argument lists (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- workflow", 1)[1].split("<!-- /workflow -->", 1)[0]
    code = block.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("ftlens "):
            commands.append(shlex.split(line)[1:])
    return commands


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.captions: list[str] = []
        self.images = 0
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images += 1
        if tag in ("h2", "figcaption"):
            self._in = tag
            (self.h2 if tag == "h2" else self.captions).append("")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.h2[-1] += data
        elif self._in == "figcaption":
            self.captions[-1] += data


def read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """Run the README's workflow in a temporary folder; returns the folder holding out/."""
    base = tmp_path_factory.mktemp("workflow")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        for args in readme_workflow():
            extra = SMALL.get(args[0], [])
            result = runner.invoke(app, args + extra)
            assert result.exit_code == 0, f"ftlens {' '.join(args)} failed:\n{result.output}"
    finally:
        os.chdir(cwd)
    return base


def test_readme_workflow_ends_in_a_report_with_the_expected_figures(workflow):
    out = workflow / "out"
    for folder, marker in (("pretrain", "metrics.csv"), ("lpft", "metrics.csv"), ("cka", "cka.json"),
                           ("compare", "comparison.json"), ("dynamics", "dynamics.csv"),
                           ("dynamics", "correlation.csv")):
        assert (out / folder / marker).exists(), f"{folder}/{marker} missing"
    page = read_page(out / "report.html")
    titles = " | ".join(page.h2).lower()
    for part in ("invariances per layer", "accuracy", "dynamics", "hypothesis grid", "cka between layers",
                 "what was run"):
        assert part in titles, f"section {part!r} missing from {titles}"
    assert titles.index("what was run") > titles.index("invariances")  # environment last
    assert "(failed)" not in titles
    # one overlaid figure per metric, then the flow; dynamics and accuracy over epochs; the CKA heat map
    assert sum(c.startswith("compare: learning of invariances averages") for c in page.captions) == 1
    assert sum("forgetting of invariances averages" in c for c in page.captions) == 1
    assert any(c.startswith("compare: InvarianceFlow") for c in page.captions)
    assert any("per layer over epochs" in c for c in page.captions)
    assert any(c.startswith("cka: CKA from") for c in page.captions)
    assert page.images >= 9
    assert not re.search(r"-0\.0+(?![0-9])", (out / "report.html").read_text())  # no negative zero


def test_captions_state_this_runs_numbers(workflow):
    cmp = ftlens.load_comparison(workflow / "out" / "compare")
    page = read_page(workflow / "out" / "report.html")
    caption = next(c for c in page.captions if "forgetting of invariances averages" in c)
    from ftlens.report.figures import fmt_value

    assert fmt_value(cmp.per_layer["forgetting"].mean()) in caption


def test_each_output_alone_is_a_valid_report_input(workflow, tmp_path):
    out = workflow / "out"
    for folder, section in (("compare", "invariances per layer"), ("cka", "cka between layers"),
                            ("dynamics", "dynamics over finetuning epochs")):
        target = tmp_path / folder
        shutil.copytree(out / folder, target)
        result = runner.invoke(app, ["report", str(target)])
        assert result.exit_code == 0, result.output
        titles = " | ".join(read_page(target / "report.html").h2).lower()
        assert section in titles and "(failed)" not in titles, titles


def test_report_on_a_folder_without_results_fails_clearly(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "nothing to report" in result.output
    for marker in ("comparison.json", "cka.json", "dynamics.csv", "metrics.csv", "config.yaml"):
        assert marker in result.output
    assert not (tmp_path / "report.html").exists()


def test_report_over_several_experiments_overlays_same_model_and_data(workflow, tmp_path):
    cfg = {"name": "x", "model": "ftlens:vit-tiny-16", "data": "digits", "runs": [{"name": "ft"}]}
    for exp in ("exp-a", "exp-b"):
        (tmp_path / exp).mkdir()
        (tmp_path / exp / "config.yaml").write_text(yaml.safe_dump({**cfg, "name": exp}))
        shutil.copytree(workflow / "out" / "compare", tmp_path / exp / "compare" / "ft")
    result = runner.invoke(app, ["report", str(tmp_path / "exp-a"), str(tmp_path / "exp-b"),
                                 "--out", str(tmp_path / "both.html")])
    assert result.exit_code == 0, result.output
    page = read_page(tmp_path / "both.html")
    overlays = [c for c in page.captions if c.startswith("Mean forgetting")]
    assert len(overlays) == 1  # one figure with both runs, not one per experiment
    assert "exp-a/ft" in overlays[0] or "exp-b/ft" in overlays[0]


def test_dynamics_rejects_epochs_the_run_does_not_have(workflow):
    result = runner.invoke(app, ["dynamics", str(workflow / "out" / "lpft"), "--epochs", "1,99", "--steps", "1"])
    assert result.exit_code == 2
    assert "99" in result.output and "Traceback" not in result.output


def test_layers_are_numbered_from_one_and_all_does_not_crash():
    result = runner.invoke(app, ["layers", "ftlens:vit-micro"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "blocks.0" in line)
    assert re.search(r"\b1\b", row.split("blocks.0")[0])
    result = runner.invoke(app, ["layers", "ftlens:vit-micro", "--all"])
    assert result.exit_code == 0, result.output
    assert "blocks.0.attn" in result.output and "attn_drop" not in result.output


def test_unknown_preset_exits_2_without_traceback():
    for args in (["layers", "ftlens:nope"], ["cka", "ftlens:nope", "ftlens:vit-micro"],
                 ["compare", "--pretrained", "ftlens:nope", "--finetuned", "ftlens:vit-micro", "--out", "x"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "unknown ftlens preset 'nope'" in result.output


SHARED = {
    "compare": ["--device", "--image-size", "--tokens", "--layers", "--images", "--seeds", "--steps", "--step-size", "--batch-size",
                "--cache-dir", "--no-cache", "--data", "--data-dir", "--debiased", "--out"],
    "dynamics": ["--device", "--image-size", "--tokens", "--layers", "--images", "--seeds", "--steps", "--step-size", "--batch-size",
                 "--cache-dir", "--no-cache", "--data", "--data-dir", "--debiased", "--out", "--epochs"],
    "cka": ["--device", "--image-size", "--tokens", "--layers", "--images", "--batch-size", "--data", "--data-dir", "--debiased", "--out"],
    "layers": ["--device", "--image-size", "--all"],
    "validate": ["--device", "--image-size", "--tokens", "--layers", "--images", "--seeds", "--steps", "--step-size",
                 "--cache-dir", "--no-cache", "--data", "--data-dir", "--out"],
    "finetune": ["--device", "--image-size", "--batch-size", "--data", "--data-dir", "--out", "--tensorboard", "--wandb"],
    "report": ["--out"],
    "demo": ["--device", "--out", "--no-cache"],
    "run": ["--device", "--out", "--no-cache"],
}


@pytest.mark.parametrize("command", sorted(SHARED))
def test_every_command_lists_the_shared_options(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in SHARED[command]:
        assert option in result.output, f"`ftlens {command} --help` lacks {option}"


def test_shared_options_have_one_help_text_and_default():
    """The same concept has the same help in every command that has it."""
    import typer.main

    cmd = typer.main.get_command(app)
    helps: dict[str, set] = {}
    for name in ("compare", "dynamics", "cka", "validate"):
        for param in cmd.commands[name].params:
            shared = ("--device", "--image-size", "--tokens", "--layers", "--steps", "--batch-size", "--cache-dir")
            if name != "validate":  # validate is a quick check: its own --images / --seeds defaults (100, 2)
                shared += ("--images", "--seeds")
            if getattr(param, "opts", None) and param.opts[0] in shared:
                helps.setdefault(param.opts[0], set()).add((param.help, str(param.default)))
    assert helps and all(len(v) == 1 for v in helps.values()), helps


def test_help_lists_commands_in_workflow_order():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    order = [c for c in ("datasets", "layers", "finetune", "cka", "compare", "dynamics", "report", "demo", "run")
             if re.search(rf"│ {c}\s", result.output)]
    positions = [re.search(rf"│ {c}\s", result.output).start() for c in order]
    assert len(order) == 9 and positions == sorted(positions)


def test_default_images_fit_a_small_dataset(tmp_path):
    """digits has 359 test images: the default (500 per seed) must not be an error."""
    result = runner.invoke(app, ["compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-micro",
                                 "--data", "digits", "--seeds", "1", "--steps", "0", "--layers", "blocks.0",
                                 "--no-plots", "--no-cache", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert ftlens.load_comparison(tmp_path / "c").config["n_images"] == 359
    result = runner.invoke(app, ["compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-micro",
                                 "--data", "digits", "--images", "400", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--images 359" in result.output


# --------------------------------------------------------------------------- progress in logs


def test_a_run_outside_a_terminal_prints_progress_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FTLENS_PROGRESS"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "ftlens", "compare", "--pretrained", "ftlens:vit-micro", "--finetuned",
           "ftlens:vit-tiny-16", "--data", "digits", "--images", "8", "--seeds", "1", "--steps", "1",
           "--layers", "blocks.0,blocks.1", "--no-cache", "--no-plots", "--out", str(tmp_path / "c")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode != 0 or True  # the two models differ in input size: an error is fine here
    cmd[cmd.index("ftlens:vit-tiny-16")] = "ftlens:vit-micro"
    cmd[-1] = str(tmp_path / "c2")  # --out: a folder of its own (compare never replaces another pair's results)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("[ftlens ")]
    assert any("loading" in ln for ln in lines), done.stderr  # a line per stage
    finished = [ln for ln in lines if re.search(r"inversions: \d+/\d+ \(\d+%\) elapsed \d+:\d\d:\d\d", ln)]
    assert finished, done.stderr  # a line per finished inversion, with elapsed time
    assert any(" eta " in ln for ln in finished) or len(finished) == 1
    assert "\x1b[" not in done.stderr  # no terminal control codes in a log


def test_log_progress_prints_one_line_per_epoch_not_per_step(monkeypatch, capsys):
    from ftlens import progress

    monkeypatch.setenv("FTLENS_PROGRESS", "log")
    bar = progress.make_progress()
    with bar:
        epochs = bar.add_task("ft run", total=3, completed=0, info="")
        steps = bar.add_task("epoch", total=50, info="")
        for epoch in range(1, 4):
            bar.reset(steps, total=50, description=f"epoch {epoch}")
            for _ in range(50):
                bar.advance(steps)
            bar.advance(epochs)
            bar.update(epochs, info=f"test_acc 0.{epoch}")
    err = capsys.readouterr().err.splitlines()
    done = [ln for ln in err if re.search(r"ft run: [123]/3", ln)]
    assert len(done) == 3, err
    assert "test_acc 0.1" in done[0] and "eta" in done[0] and "eta" not in done[-1]


def test_tables_are_not_cut_at_80_columns_in_logs():
    from ftlens.cli.common import make_console

    assert make_console().width >= 200  # pytest's stdout is not a terminal


# --------------------------------------------------------------------------- Python ergonomics


def test_dir_and_lazy_exports_see_the_api():
    names = dir(ftlens)
    for name in ("compare", "CKA", "load_model", "plot", "as_images", "ExperimentLayout", "build_report"):
        assert name in names and getattr(ftlens, name) is not None
    assert callable(ftlens.plot.overlay) and callable(ftlens.plot.cka)


def test_compare_takes_a_dataloader_or_dataset_like_a_tensor(pt, make_pool):
    from torch.utils.data import DataLoader, TensorDataset

    micro_vit = pt
    x = make_pool(12, 0)
    ds = TensorDataset(x, torch.zeros(len(x)))
    kw = dict(layers=["blocks.0", "blocks.1"], seeds=1, n_images=None, steps=2, cache=None)
    ref = ftlens.compare(micro_vit, micro_vit, x, **kw)
    for images in (DataLoader(ds, batch_size=5), ds):
        got = ftlens.compare(micro_vit, micro_vit, images, **kw)
        pd.testing.assert_frame_equal(got.per_layer, ref.per_layer)
    # an exact copy: nothing learned or forgotten
    assert np.allclose(ref.per_layer["learning"], 0.0) and np.allclose(ref.per_layer["forgetting"], 0.0)
    html = ref._repr_html_()
    assert "<table" in html and "1 (blocks.0)" in html and not re.search(r"-0\.0+(?![0-9])", html)
    fig = ref.plot()
    assert len(fig.axes) >= 3
    assert ref.plot("flow") is not None


def test_cka_one_liner(pt, make_pool, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    micro_vit = pt
    x = make_pool(24, 1)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=10)
    result = ftlens.CKA(micro_vit, micro_vit).compare(loader)
    assert result.matrix.shape == (len(micro_vit.layers), len(micro_vit.layers))
    assert np.allclose(np.diag(result.matrix.to_numpy()), 1.0)  # a model with itself, layer by layer
    direct = ftlens.cka_matrix(micro_vit.representations(x), micro_vit.representations(x))
    np.testing.assert_allclose(result.matrix.to_numpy(), direct.to_numpy(), atol=1e-12)
    assert result.config["images"] == 24 and "<table" in result._repr_html_()
    assert result.plot() is not None
    result.save(tmp_path / "cka")
    assert ftlens.load_cka(tmp_path / "cka").matrix.shape == result.matrix.shape


# --------------------------------------------------------------------------- layout and roles


def test_roles_come_from_the_config_not_from_run_names(monkeypatch, tmp_path):
    from ftlens import findings as findings_mod
    from ftlens.layout import resolve_roles

    runs = [{"name": "full", "strategy": "ft", "task": "classification"}, {"name": "rand", "strategy": "scratch"},
            {"name": "pixels", "task": "reconstruction"}, {"name": "probe-then-ft", "strategy": "lp-ft"}]
    roles = resolve_roles({"runs": runs})
    assert roles == {"pretrained_start": "full", "scratch_control": "rand", "reconstruction_task": "pixels",
                     "lp_ft": "probe-then-ft", "lp_ft_control": "full"}
    assert resolve_roles({"runs": runs, "roles": {"pretrained_start": "probe-then-ft"}})["pretrained_start"] == \
        "probe-then-ft"
    asked = []
    monkeypatch.setattr(findings_mod, "_load", lambda out, name: asked.append(name))
    findings_mod.compute_findings(tmp_path, {"runs": runs})
    assert {"full", "rand", "pixels"} <= set(asked) and "ft" not in asked


def test_experiment_layout_paths(tmp_path):
    from ftlens.layout import ExperimentLayout, result_kind

    lay = ExperimentLayout(tmp_path)
    assert lay.compare("ft") == tmp_path / "compare" / "ft"
    assert lay.correlation("ft") == tmp_path / "correlation" / "ft.csv"
    lay.compare("ft").mkdir(parents=True)
    (lay.compare("ft") / "comparison.json").write_text("{}")
    assert lay.compare_names() == ["ft"] and result_kind(lay.compare("ft")) == "compare"
    lay.config.write_text(yaml.safe_dump({"name": "e", "model": "m", "data": "d", "runs": []}))
    assert result_kind(tmp_path) == "experiment"


# --------------------------------------------------------------------------- tracking


def test_tensorboard_logs_the_finetuning_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftlens.finetune import finetune

    result = finetune(model="ftlens:vit-micro", data="digits", epochs=2, train_size=64, test_size=32, batch_size=16,
                      out=str(tmp_path / "run"), device="cpu", tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("test/acc")}
    expected = dict(zip(result.metrics["epoch"], result.metrics["test_acc"], strict=True))
    assert sorted(logged) == [0, 1, 2]
    for epoch, value in expected.items():
        assert logged[epoch] == pytest.approx(value, abs=1e-6)
    assert "train/loss" in acc.Tags()["scalars"]
