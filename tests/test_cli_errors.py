"""Every invalid option or config: exit 2, one line, no traceback, and nothing loaded or computed
first (loading a model or a dataset fails the test)."""

from __future__ import annotations

import contextlib
import errno

import pytest
import yaml
from typer.testing import CliRunner

from ftlens.cli import app

runner = CliRunner()
MODEL = "ftlens:vit-micro"


@pytest.fixture
def nothing_computed(monkeypatch):
    """Loading a model or a dataset is an error: the checks must come first."""
    import ftlens.data
    import ftlens.experiment
    import ftlens.finetune.build
    import ftlens.finetune.training
    import ftlens.models

    def boom(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(ftlens.models, "load_model", boom)
    monkeypatch.setattr(ftlens.data, "get_dataset", boom)
    monkeypatch.setattr(ftlens.finetune.build, "load_model", boom)
    monkeypatch.setattr(ftlens.finetune.training, "start_model", boom)


def _one_line_error(args, *words):
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _compare(tmp_path, *extra):
    return ["compare", "--pretrained", MODEL, "--finetuned", MODEL, "--data", "digits", "--out", str(tmp_path / "c"),
            *extra]


@pytest.mark.parametrize("extra, words", [
    (["--steps", "-1"], ["--steps", "-1"]),
    (["--step-size", "0"], ["--step-size"]),
    (["--step-size", "1e6"], ["--step-size", "at most"]),
    (["--step-size", "1e39"], ["--step-size"]),
    (["--step-size", "nan"], ["--step-size", "finite"]),
    (["--start", "bogus"], ["--start", "bogus", "noise"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--images", "0"], ["--images"]),
    (["--seeds", "0"], ["--seeds"]),
])
def test_compare_options(tmp_path, nothing_computed, extra, words):
    _one_line_error(_compare(tmp_path, *extra), *words)


def test_out_under_a_file_or_read_only(tmp_path, nothing_computed, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["compare", "--pretrained", MODEL, "--finetuned", MODEL, "--data", "digits", "--out", str(afile / "sub")]
    _one_line_error(args, "--out", "is a file")
    _one_line_error(_compare(tmp_path)[:-1] + [str(afile)], "--out", "is a file, not a folder")
    _one_line_error(["finetune", "--model", MODEL, "--data", "digits", "--out", str(afile / "run")], "--out")
    _one_line_error(["cka", MODEL, MODEL, "--out", str(afile / "x")], "--out")
    _one_line_error(["demo", "--quick", "--out", str(afile / "x")], "--out")
    import ftlens.checks

    monkeypatch.setattr(ftlens.checks.os, "access", lambda path, mode: False)  # a read-only mount
    _one_line_error(_compare(tmp_path), "--out", "read-only")


def test_errors_raised_deep_in_the_library_are_one_line(tmp_path):
    """Inputs that pass the command's own checks and fail in the library (a damaged checkpoint,
    a layer glob that matches nothing, a run folder without checkpoints): still one line, exit 2."""
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header that ends too early
    _one_line_error(["compare", "--pretrained", str(bad), "--finetuned", MODEL, "--data", "digits",
                     "--out", str(tmp_path / "c")], str(bad))
    _one_line_error(["cka", MODEL, MODEL, "--layers", "nothing.*", "--data", "digits", "--images", "8"],
                    "nothing.*", "ftlens layers")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _one_line_error(["dynamics", str(run), "--pretrained", MODEL, "--data", "digits", "--out", str(tmp_path / "d")],
                    "checkpoints")


def test_finetune_options(tmp_path, nothing_computed):
    base = ["finetune", "--model", MODEL, "--data", "digits", "--out", str(tmp_path / "r")]
    _one_line_error(base + ["--batch-size", "0"], "batch_size")
    _one_line_error(base + ["--epochs", "-1"], "epochs")
    _one_line_error(base + ["--strategy", "bogus"], "strategy")
    _one_line_error(base + ["--lr", "0"], "lr")


def test_full_disk_is_one_line(tmp_path, monkeypatch):
    from ftlens import io

    @contextlib.contextmanager
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield

    monkeypatch.setattr(io, "atomic_path", full)
    line = _one_line_error(["finetune", "--model", MODEL, "--data", "digits", "--train-size", "64",
                            "--test-size", "32", "--epochs", "1", "--out", str(tmp_path / "r")],
                           "No space left on device", "free some space")
    assert str(tmp_path / "r") in line


def _experiment(tmp_path, **changes):
    cfg = {"name": "exp", "model": MODEL, "data": "digits", "runs": [{"name": "ft", "strategy": "ft"}],
           "analysis": {"images": 8, "seeds": 1, "steps": 2}}
    for key, value in changes.items():
        if key.startswith("analysis."):
            cfg["analysis"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["run", str(path), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("changes, words", [
    ({"runs": "ft"}, ["runs must be a list"]),
    ({"runs": [{"name": "../../escaped_run", "strategy": "ft"}]}, ["not a plain name", "escaped_run"]),
    ({"runs": [{"name": "ft", "strategy": "ft", "lr": "fast"}]}, ["run 'ft'", "lr"]),
    ({"runs": [{"name": "ft", "strategy": "ft", "epochz": 3}]}, ["run 'ft'", "epochz"]),
    ({"name": "../up"}, ["experiment name"]),
    ({"epochz": 3}, ["epochz"]),
    ({"analysis.images": "many"}, ["analysis.images", "many"]),
    ({"analysis.steps": -1}, ["analysis.steps"]),
    ({"analysis.step_size": 1e39}, ["analysis.step_size"]),
    ({"analysis.debiased": "yes"}, ["analysis.debiased"]),
    ({"analysis.compare": ["nope"]}, ["analysis.compare", "nope"]),
    ({"analysis.imagez": 3}, ["imagez"]),
    ({"defaults": {"batch_size": 0}}, ["batch_size"]),
    ({"title": ["a"]}, ["title"]),
])
def test_experiment_config_errors(tmp_path, nothing_computed, changes, words):
    _one_line_error(_experiment(tmp_path, **changes), *words)
    assert not (tmp_path / "out").exists()  # nothing written either


def test_experiment_config_not_yaml_or_not_a_mapping(tmp_path, nothing_computed):
    path = tmp_path / "exp.yaml"
    path.write_text("name: [unclosed")
    _one_line_error(["run", str(path)], "not valid YAML")
    path.write_text("- just\n- a list\n")
    _one_line_error(["run", str(path)], "mapping")


def test_experiment_out_that_is_someone_elses_folder(tmp_path, nothing_computed):
    args = _experiment(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _one_line_error(args, "notes.txt", "not an ftlens experiment")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_compare_never_replaces_a_comparison_of_other_models(tmp_path, monkeypatch):
    """A folder holding the comparison of another pair is refused before any data is loaded or
    any inversion runs; --overwrite gets past the check."""
    import json

    import ftlens.data

    out = tmp_path / "c"
    out.mkdir()
    saved = {"pretrained": {"spec": "timm:resnet18"}, "finetuned": {"spec": "runs/other@last"}}  # as Comparison.save
    (out / "comparison.json").write_text(json.dumps(saved))
    before = (out / "comparison.json").read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("data loaded before the output folder was checked")

    monkeypatch.setattr(ftlens.data, "get_dataset", boom)
    line = _one_line_error(_compare(tmp_path), "runs/other@last", "--overwrite")
    assert "already holds" in line
    assert (out / "comparison.json").read_bytes() == before
    (out / "comparison.json").write_text("{not json")
    _one_line_error(_compare(tmp_path), "cannot be read", "--overwrite")
    # --overwrite passes the check (and then reaches the data, which this test forbids)
    result = runner.invoke(app, _compare(tmp_path, "--overwrite"))
    assert isinstance(result.exception, AssertionError) and "output folder" in str(result.exception)


def test_compare_reruns_the_same_pair_into_its_folder(tmp_path):
    """The guard reads what Comparison.save writes: rerunning the same pair is allowed."""
    args = ["compare", "--pretrained", MODEL, "--finetuned", MODEL, "--data", "digits", "--images", "8", "--seeds", "1",
            "--steps", "1", "--layers", "blocks.0", "--no-cache", "--no-plots", "--out", str(tmp_path / "c")]
    assert runner.invoke(app, args).exit_code == 0
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    args[args.index("--finetuned") + 1] = "ftlens:vit-tiny-16"
    _one_line_error(args, "already holds", MODEL)
