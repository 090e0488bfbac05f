"""kill -9 in the middle of finetuning and of a comparison: running the same command again
finishes bit-identical to a run that was never interrupted; two processes racing on one cache
key compute it once and read the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import ftlens

pytestmark = pytest.mark.slow
SRC = str(Path(ftlens.__file__).resolve().parents[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", FTLENS_PROGRESS="0",
               FTLENS_DATA_DIR=str(tmp_path / "data"))
    env.pop("FTLENS_CACHE_DIR", None)
    return env


def _kill_when(args: list[str], env: dict[str, str], ready, timeout: float = 240.0) -> bool:
    """Start ``ftlens ARGS``, SIGKILL it as soon as ``ready()``; True if it was killed before finishing."""
    proc = subprocess.Popen([sys.executable, "-m", "ftlens", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "ftlens", *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_kill_9_mid_finetune_resumes_bit_identical(tmp_path):
    env = _env(tmp_path)
    common = ["finetune", "--model", "ftlens:vit-micro", "--data", "digits", "--train-size", "384", "--test-size",
              "64", "--epochs", "4", "--batch-size", "32", "--lr", "0.01", "--seed", "3"]
    killed = tmp_path / "killed"
    was_killed = _kill_when([*common, "--out", str(killed)], env,
                            lambda: (killed / "checkpoints" / "epoch_001.safetensors").exists())
    if not was_killed:
        pytest.skip("the run finished before it could be killed")
    assert not (killed / "checkpoints" / "epoch_004.safetensors").exists()
    _run([*common, "--out", str(killed)], env)
    _run([*common, "--out", str(tmp_path / "whole")], env)
    for epoch in range(5):
        name = f"checkpoints/epoch_{epoch:03d}.safetensors"
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "metrics.csv"), pd.read_csv(killed / "metrics.csv"))


def test_kill_9_mid_compare_resumes_bit_identical(tmp_path):
    env = _env(tmp_path)
    torch.manual_seed(0)
    from ftlens.models import load_model, save_checkpoint

    pt = save_checkpoint(load_model("ftlens:vit-micro"), tmp_path / "pt.safetensors")
    torch.manual_seed(1)
    ft = save_checkpoint(load_model("ftlens:vit-micro"), tmp_path / "ft.safetensors")
    common = ["compare", "--pretrained", str(pt), "--finetuned", str(ft), "--data", "digits", "--images", "16",
              "--seeds", "1", "--steps", "40", "--layers", "blocks.0,blocks.1,blocks.2,blocks.3", "--no-plots"]
    cache = tmp_path / "cache"
    entries = lambda: [p for p in cache.rglob("*.safetensors") if not p.name.startswith(".")]  # noqa: E731
    was_killed = _kill_when([*common, "--cache-dir", str(cache), "--out", str(tmp_path / "killed")], env,
                            lambda: len(entries()) >= 2)
    if not was_killed:
        pytest.skip("the comparison finished before it could be killed")
    assert not (tmp_path / "killed" / "comparison.json").exists()
    done = len(entries())
    _run([*common, "--cache-dir", str(cache), "--out", str(tmp_path / "killed")], env)
    assert len(entries()) == 8 and done < 8
    _run([*common, "--cache-dir", str(tmp_path / "fresh"), "--out", str(tmp_path / "whole")], env)
    for table in ("stir.csv", "cka.csv"):
        a = pd.read_csv(tmp_path / "whole" / table)
        b = pd.read_csv(tmp_path / "killed" / table)
        pd.testing.assert_frame_equal(a, b, check_exact=True)


_RACE = """
import sys, time, torch
from ftlens.store import Cache
cache = Cache(sys.argv[1])
def make():
    with open(sys.argv[2], "a") as f:
        f.write("computed\\n")
    time.sleep(1.0)
    return {"x": torch.arange(5.0) * 2}, {"by": sys.argv[3]}
tensors, meta, cached = cache.compute("ab" * 32, make)
print(meta["by"], cached, tensors["x"].tolist())
"""


def test_two_processes_racing_on_one_key_compute_it_once(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(_RACE)
    log = tmp_path / "computed.log"
    env = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log), str(i)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0].strip().split(maxsplit=2) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("computed") == 1
    assert outs[0][0] == outs[1][0]  # both return the entry the one writer made
    assert sorted(o[1] for o in outs) == ["False", "True"]
    assert outs[0][2] == outs[1][2] == "[0.0, 2.0, 4.0, 6.0, 8.0]"
