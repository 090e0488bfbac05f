"""Wall and CPU time (user + sys of every thread) of each stage of an experiment.

    OMP_NUM_THREADS=1 python bench/demo_stages.py demo-real runs/demo-real-bench
    python bench/demo_stages.py configs/paper/in1k_cifar10.yaml OUT

CPU time is what to compare on a shared machine, where wall time depends on the other jobs.
Writes OUT/stage_times.json ``{stage: [wall_s, cpu_s]}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ftlens.experiment import STAGES, Experiment, ExperimentConfig, builtin_config


def main(config: str, out: str) -> None:
    cfg = ExperimentConfig.from_yaml(config) if config.endswith(".yaml") else builtin_config(config)
    exp = Experiment(cfg, out)
    rows: dict[str, tuple[float, float]] = {}
    for stage in STAGES:
        wall, cpu = time.perf_counter(), time.process_time()
        exp.run((stage,))
        rows[stage] = (time.perf_counter() - wall, time.process_time() - cpu)
        print(f"{stage:12s} wall {rows[stage][0]:7.1f} s  cpu {rows[stage][1]:7.1f} s", flush=True)
    print(f"{'total':12s} wall {sum(r[0] for r in rows.values()):7.1f} s  cpu {sum(r[1] for r in rows.values()):7.1f} s")
    (Path(out) / "stage_times.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
