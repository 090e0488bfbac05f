"""Warnings read as warnings (``Category: message``, attributed to the caller's code, never a line of
ftlens's source), and two processes asked to train one run folder train it once."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings

import pytest
import torch

from ftlens.errors import DegenerateRepresentationWarning
from ftlens.warn import one_line


def test_warnings_point_at_the_callers_code():
    from ftlens.similarity import linear_cka

    with pytest.warns(DegenerateRepresentationWarning) as record:
        linear_cka(torch.ones(6, 3), torch.rand(6, 3))
    assert record[0].filename == __file__


def test_command_line_prints_one_line_per_warning(tmp_path):
    code = ("import torch; from ftlens.warn import use_one_line_format; use_one_line_format(); "
            "from ftlens.similarity import linear_cka; linear_cka(torch.ones(6, 3), torch.rand(6, 3))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("DegenerateRepresentationWarning: CKA is undefined")
    assert one_line("m", UserWarning, "x.py", 3, "source") == "UserWarning: m\n"

    from typer.testing import CliRunner

    from ftlens.cli import app

    before = warnings.formatwarning
    try:
        assert CliRunner().invoke(app, ["layers", "ftlens:vit-micro"]).exit_code == 0
        assert warnings.formatwarning is one_line  # every command prints warnings this way
    finally:
        warnings.formatwarning = before


def test_second_process_on_one_run_folder_waits_and_reuses_the_run(tmp_path, monkeypatch, capsys):
    from ftlens.finetune import run as run_mod
    from ftlens.finetune import training
    from ftlens.finetune.rundir import LOCK_NAME

    out = tmp_path / "run"
    options = dict(model="ftlens:vit-micro", data="digits", data_dir=str(tmp_path / "data"), strategy="ft", epochs=1,
                   lr=0.01, batch_size=64, warmup_steps=1, train_size=128, test_size=64, progress=False, out=str(out))
    trained: list[str] = []
    original_epoch = training.TrainingRun._epoch

    def counting_epoch(self, *args, **kwargs):
        trained.append(threading.current_thread().name)
        return original_epoch(self, *args, **kwargs)

    monkeypatch.setattr(training.TrainingRun, "_epoch", counting_epoch)
    holding = threading.Event()
    original_lock = run_mod.run_lock

    def lock(path):  # the run folder's own lock, signalling once it is held
        inner = original_lock(path)

        class Signalling:
            def __enter__(self):
                held = inner.__enter__()
                holding.set()
                return held

            def __exit__(self, *exc):
                return inner.__exit__(*exc)

        return Signalling()

    monkeypatch.setattr(run_mod, "run_lock", lock)
    results = {}

    def job(name):
        results[name] = run_mod.finetune(**options)

    first = threading.Thread(target=job, args=("first",), name="first")
    first.start()
    assert holding.wait(60)
    second = threading.Thread(target=job, args=("second",), name="second")
    second.start()
    first.join(300)
    second.join(300)
    assert "another process is training" in capsys.readouterr().err  # the second one waited for the first
    assert trained == ["first"]  # and trained nothing: it resumed the finished run
    assert results["second"].metrics.equals(results["first"].metrics)
    assert (out / LOCK_NAME).exists()
