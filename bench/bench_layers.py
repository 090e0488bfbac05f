"""Benchmark: cross-layer batched inversion against one inversion per layer (CPU or GPU).

Command (a few minutes on 2 CPU cores)::

    .venv/bin/python bench/bench_layers.py --threads 1
    .venv/bin/python bench/bench_layers.py --device cuda --images 256 --steps 10

For each model, the inversions of all its default layers and ``--seeds`` seeds (the work of one
side of a ``compare``) are timed two ways in this process, interleaved (A B A B ...), best of
``--repeat``:

- ``per_layer``: one :func:`ftlens.inversion.invert` per (layer, seed), as ``compare`` does by
  default (each forward truncated at its layer);
- ``batched``: :func:`ftlens.inversion.batched.invert_jobs`: every layer and seed in one staged
  forward and backward per step (the batch shrinks with depth).

Reported per model and schedule: seconds, image-steps (equal by construction) and image-steps per
second, the batched/per-layer time ratio, the largest residual difference between the two (they
must agree to rounding), and the peak memory of each (CUDA: ``max_memory_allocated``; CPU: peak
resident memory of a spawned process during one run, above its resident memory before the run). Models:
``ftlens:vit-tiny-32`` with width 96 (12 blocks, the peer benchmark's model) and the real CNN
``ftlens:efficientnet-lite0-in1k`` at 32 px (timm ``tf_efficientnet_lite0`` with random weights
if its package is missing; weights change values, not cost). Only ratios mean something on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import threading
import time

import torch

MODELS = {
    "vit": ("ftlens:vit-tiny-32", {"embed_dim": 96}),
    "cnn": ("ftlens:efficientnet-lite0-in1k", {"image_size": 32}),
}


def _load(key: str, device: str):
    from ftlens.models import load_model

    spec, kwargs = MODELS[key]
    torch.manual_seed(0)
    try:
        model = load_model(spec, **kwargs)
    except Exception:  # the weights package is missing: the same architecture, random weights
        spec = "timm:tf_efficientnet_lite0"
        model = load_model(spec, **kwargs)
    return spec, model.to(device)


def _jobs(model, images: int, seeds: int):
    from ftlens.inversion.batched import Job

    return [Job(layer, seed, torch.rand(images, *model.input_size, generator=torch.Generator().manual_seed(seed)))
            for seed in range(seeds) for layer in model.layers]


def _runner(model, jobs, settings, device: str, how: str, batch_size: int | None, batched_size: int | None = None):
    from ftlens.inversion import invert
    from ftlens.inversion.batched import invert_jobs

    def per_layer():
        return [invert(model, j.layer, j.images, settings.steps, seed=j.seed, schedule=settings, device=device,
                       batch_size=batch_size) for j in jobs]

    def batched():
        out = invert_jobs(model, jobs, settings, device=device,
                          batch_size=batch_size if batched_size is None else batched_size)
        if out is None:
            raise RuntimeError(f"{model.name}: layers cannot be staged")
        return out

    return per_layer if how == "per_layer" else batched


def _settings(schedule: str, steps: int):
    from ftlens.inversion import InversionSettings

    return InversionSettings.paper(steps=steps) if schedule == "fixed" else InversionSettings(steps=steps)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _cpu_peak(args, key: str, schedule: str, how: str, queue) -> None:
    """In a spawned process: peak resident memory during one run above the resident memory
    before it (bytes), sampled every millisecond from ``/proc/self/statm`` (Linux)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    _, model = _load(key, "cpu")
    jobs = _jobs(model, args.images, args.seeds)
    fn = _runner(model, jobs, _settings(schedule, args.steps), "cpu", how, args.batch_size, args.batched_batch_size)
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    queue.put(max(peak[0], _rss()) - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="images per (layer, seed) per batch")
    p.add_argument("--batched-batch-size", type=int, default=None,
                   help="images per (layer, seed) per staged batch of the batched path only (default: --batch-size)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--schedules", nargs="+", default=["fixed", "adaptive"], choices=["fixed", "adaptive"])
    p.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory processes")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    out: dict = {"benchmark": "bench_layers", "device": dev, "torch_threads": torch.get_num_threads(),
                 "torch": torch.__version__, "platform": platform.platform(), "images": args.images,
                 "steps": args.steps, "seeds": args.seeds, "batch_size": args.batch_size,
                 "batched_batch_size": args.batched_batch_size, "results": []}
    if dev.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    for key in args.models:
        spec, model = _load(key, dev)
        jobs = _jobs(model, args.images, args.seeds)
        for schedule in args.schedules:
            settings = _settings(schedule, args.steps)
            fns = {how: _runner(model, jobs, settings, dev, how, args.batch_size, args.batched_batch_size)
                   for how in ("per_layer", "batched")}
            results = {how: fn() for how, fn in fns.items()}  # warm-up, and the agreement
            best = {how: float("inf") for how in fns}
            for _ in range(args.repeat):
                for how, fn in fns.items():
                    _sync(dev)
                    t0 = time.perf_counter()
                    fn()
                    _sync(dev)
                    best[how] = min(best[how], time.perf_counter() - t0)
            steps_done = {how: sum(inv.extra["image_steps"] for inv in invs) for how, invs in results.items()}
            diff = max(float((a.residual - b.residual).abs().max())
                       for a, b in zip(results["per_layer"], results["batched"], strict=True))
            row = {"model": spec, "layers": model.layers, "schedule": schedule, "seconds": best,
                   "image_steps": steps_done,
                   "image_steps_per_s": {h: steps_done[h] / best[h] for h in best},
                   "batched_over_per_layer_time": best["batched"] / best["per_layer"],
                   "max_abs_residual_difference": diff}
            peak: dict = {}
            if dev.startswith("cuda"):
                for how, fn in fns.items():
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    peak[how] = torch.cuda.max_memory_allocated() - base
            elif not args.no_memory:
                ctx = mp.get_context("spawn")
                for how in fns:
                    queue = ctx.Queue()
                    proc = ctx.Process(target=_cpu_peak, args=(args, key, schedule, how, queue))
                    proc.start()
                    peak[how] = queue.get()
                    proc.join()
            if peak:
                row["peak_memory_bytes"] = peak
                row["batched_over_per_layer_memory"] = peak["batched"] / max(peak["per_layer"], 1)
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
