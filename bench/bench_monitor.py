"""Cost and fidelity of the live forgetting monitor (``ftlens finetune --monitor-forgetting``) on the demo.

    FTLENS_CACHE_DIR=$(mktemp -d) OMP_NUM_THREADS=1 python bench/bench_monitor.py runs/bench-monitor

1. pretrain the demo ViT (``ftlens:vit-tiny-16``, 12 blocks, 16 px) as ``ftlens demo`` does;
2. finetune the demo's ``ft`` run on digits twice, without and with the monitor (its defaults: 32
   images, 50 steps), with wall and CPU time of each call, and the monitor's own per-epoch wall and
   CPU time (``monitor.json``);
3. the full dynamics of the monitored run at the demo's analysis settings (100 images x 2 seeds, 50
   steps, 200 image resamples), as the demo's dynamics stage computes them;
4. how the monitor's per-layer values track the full ones: Pearson and Spearman r over the (epoch,
   layer) pairs of epochs 1..6 with Fisher-z intervals (:func:`ftlens.stats.correlation_interval`),
   for forgetting and learning, and over epochs for the signal (std of forgetting over layers 2..L).

Writes OUT/monitor_bench.json and prints it. The CPU time is what to compare on a shared machine.

    python bench/bench_monitor.py OUT --variants 16x50,32x20

then measures other monitor settings (IMAGESxSTEPS) on the same checkpoints (a copy of the run's
checkpoints, so the run's own monitor files stay) against the same full dynamics, into
OUT/monitor_variants.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ftlens import io
from ftlens.experiment import Experiment, ExperimentConfig, builtin_config
from ftlens.finetune import finetune
from ftlens.finetune.monitor import ForgettingMonitor, forgetting_spread
from ftlens.stats import correlation_interval


def _config() -> ExperimentConfig:
    cfg = builtin_config("demo").to_dict()
    ft = next(r for r in cfg["runs"] if r["name"] == "ft")
    cfg["runs"] = [ft]
    cfg["analysis"].update(compare=[], dynamics=["ft"], distortion=[])
    return ExperimentConfig.from_dict(cfg)


def _timed(**kwargs) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    finetune(**kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def _r(x, y, method: str) -> dict[str, float]:
    r, lo, hi, n = correlation_interval(x, y, method=method)
    return {"r": r, "lo": lo, "hi": hi, "n": n}


def main(out: str) -> None:
    exp = Experiment(_config(), out)
    exp.run(("pretrain",))
    run = dict(exp.config.runs[0])
    kwargs = exp.run_config(run)
    common = dict(model=exp.pretrained_spec, data=exp.config.data, device="cpu", progress=False, **kwargs)
    plain = _timed(out=str(Path(out) / "plain"), **common)
    monitored = _timed(out=str(exp.run_dir("ft")), monitor_forgetting=True, **common)
    exp.run(("dynamics",))  # the demo's dynamics of the monitored run (its training equals the plain one's)

    summary = io.read_json(exp.run_dir("ft") / "monitor.json")
    info = io.read_json(exp.run_dir("ft") / "run.json")
    cheap = pd.read_csv(exp.run_dir("ft") / "monitor.csv")
    full = pd.read_csv(exp.layout.dynamics("ft") / "dynamics.csv")
    both = cheap.merge(full, on=["epoch", "layer"], suffixes=("_monitor", "_full"))
    both = both[both["epoch"] >= 1]
    epochs = sorted(both["epoch"].unique())
    spread = {name: [forgetting_spread(both[both["epoch"] == e].sort_values("layer_number_full")[f"forgetting_{name}"]
                                       .reset_index(drop=True)) for e in epochs] for name in ("monitor", "full")}
    later = [str(e) for e in epochs]
    result = {
        "device": "cpu", "threads": int(__import__("torch").get_num_threads()),
        "finetune_plain_s": {"wall": plain[0], "cpu": plain[1]},
        "finetune_monitored_s": {"wall": monitored[0], "cpu": monitored[1]},
        "epochs": len(epochs),
        "training_epoch_wall_s": float(np.mean([info["seconds_per_epoch"][e] for e in later])),
        "monitor_epoch0_s": {"wall": summary["seconds"]["0"], "cpu": summary["cpu_seconds"]["0"]},
        "monitor_epoch_s": {"wall": float(np.mean([summary["seconds"][e] for e in later])),
                            "cpu": float(np.mean([summary["cpu_seconds"][e] for e in later]))},
        "overhead_cpu_per_epoch_s": (monitored[1] - plain[1]) / (len(epochs) + 1),
        "monitor": {"images": summary["images"], "steps": summary["steps"]},
        "full": {"images": exp.config.analysis.images, "seeds": exp.config.analysis.seeds,
                 "steps": exp.config.analysis.steps},
        "forgetting": {m: _r(both["forgetting_monitor"], both["forgetting_full"], m) for m in ("pearson", "spearman")},
        "learning": {m: _r(both["learning_monitor"], both["learning_full"], m) for m in ("pearson", "spearman")},
        "signal": {"monitor": spread["monitor"], "full": spread["full"],
                   "pearson": _r(spread["monitor"], spread["full"], "pearson"),
                   "preferred_epoch_monitor": summary["preferred_epoch"],
                   "preferred_epoch_full": int(epochs[int(np.nanargmax(spread["full"]))])},
    }
    Path(out, "monitor_bench.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def variants(out: str, settings: str) -> None:
    from ftlens.data import get_dataset

    exp = Experiment(_config(), out)
    full = pd.read_csv(exp.layout.dynamics("ft") / "dynamics.csv")
    epochs = sorted(e for e in full["epoch"].unique() if e >= 1)
    ds = get_dataset(exp.config.data, split="test", image_size=(16, 16))
    rows = {}
    for item in settings.split(","):
        n, steps = (int(v) for v in item.split("x"))
        copy = Path(out) / f"variant-{n}x{steps}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(exp.run_dir("ft") / "checkpoints", copy / "checkpoints")
        monitor = ForgettingMonitor.for_run(copy, ds, n, steps=steps)
        monitor.measure(0)
        cpu = time.process_time()
        for e in epochs:
            monitor.measure(e)
        both = monitor.table.merge(full, on=["epoch", "layer"], suffixes=("_monitor", "_full"))
        both = both[both["epoch"] >= 1]
        rows[item] = {"cpu_per_epoch_s": (time.process_time() - cpu) / len(epochs),
                      "forgetting_pearson": _r(both["forgetting_monitor"], both["forgetting_full"], "pearson"),
                      "learning_pearson": _r(both["learning_monitor"], both["learning_full"], "pearson"),
                      "preferred_epoch": monitor.preferred_epoch}
    Path(out, "monitor_variants.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--variants":
        variants(sys.argv[1], sys.argv[3])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
