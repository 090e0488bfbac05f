"""Benchmark: ``ftlens.compare`` against the authors' pipeline shape, plus inversion efficiency.

Command (defaults: ``ftlens:vit-tiny-16``, 12 blocks, random weights, 32 images, 10 steps,
1 seed; under a minute on 2 CPU cores)::

    .venv/bin/python bench/bench_compare.py
    .venv/bin/python bench/bench_compare.py --model ftlens:vit-tiny-32 --images 64 --steps 20
    .venv/bin/python bench/bench_compare.py --device cuda --images 500 --steps 50   # a GPU

Measured in one run, on the same machine and inputs, and printed as one JSON object:

1. ``compare``: wall time of :func:`ftlens.compare` (no cache) for two differently seeded
   models: 2 L inversions, each forward stopped at the inverted layer, every target layer
   scored from the same inversion.
2. ``naive``: what the authors' pipeline does, written here from scratch: one inversion per
   (reference model, target layer i, reference layer j) pair -- 2 L^2 inversions -- each step
   running the *full* forward to the last layer (a hook reads layer j), with a host sync per
   step for the best-iterate bookkeeping; then each pair's STIR from its own inversion. It
   produces the same four L x L STIR matrices as ``compare``; the largest difference between
   the two results is reported (they share start noise, so it is small but not 0: the
   naive loop differs in float rounding only).
3. ``inversion``: throughput of one inversion at the deepest layer in image-steps per second
   and its useful FLOP/s (matmul FLOPs of a forward to the layer plus the input-gradient
   backward, counted by ``torch.utils.flop_counter``), against a dense float32 matmul of the
   model's dominant shape ``(images * tokens, dim) x (dim, mlp hidden)`` and a 2048^3 matmul,
   timed in the same run.

The naive pipeline's cost per pair does not depend on the pair (every step runs the full
network), so by default it times 12 random pairs per reference model (24 inversions) and
extrapolates to all ``2 L^2`` (the JSON says ``"extrapolated": true``); ``--naive-pairs 0``
runs every pair (about 10x longer). On a shared machine, ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import numpy as np
import torch


def _models(spec: str):
    from ftlens.models import load_model

    torch.manual_seed(0)
    pt = load_model(spec)
    torch.manual_seed(1)
    ft = load_model(spec)
    return pt, ft


def _full_forward_rep(model, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The authors' way: run the whole network, read ``layer`` with a hook (no early stop)."""
    module = dict(model.module.named_modules())[layer]
    got = {}
    handle = module.register_forward_hook(lambda _m, _i, out: got.__setitem__("rep", out))
    try:
        mean = torch.tensor(model.mean).view(1, -1, 1, 1)
        std = torch.tensor(model.std).view(1, -1, 1, 1)
        model.module((x.clamp(0, 1) - mean) / std)
    finally:
        handle.remove()
    return got["rep"].reshape(x.shape[0], -1)


def naive_invert(model, layer: str, x: torch.Tensor, steps: int, step_size: float, seed: int) -> torch.Tensor:
    from ftlens.inversion import start_images

    with torch.no_grad():
        target = _full_forward_rep(model, x, layer)
    tnorm = target.norm(dim=1)
    xp = start_images(x, "noise", seed)
    best = xp.clamp(1e-6, 1 - 1e-6).clone()
    best_loss = [float("inf")] * x.shape[0]
    for t in range(steps + 1):
        xp = xp.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            loss = (_full_forward_rep(model, xp, layer) - target).norm(dim=1) / tnorm
        values = loss.detach().tolist()  # a host sync per step, per image bookkeeping in Python
        for k, v in enumerate(values):
            if v < best_loss[k]:
                best_loss[k] = v
                best[k] = xp[k].detach().clamp(0, 1)
        if t < steps:
            loss.sum().backward()
            g = xp.grad
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            xp = (xp.detach() - step_size * g / gn).clamp(1e-6, 1 - 1e-6)
    return best


def naive_compare(pt, ft, x, layers, steps, step_size, seed, pairs_per_ref: int | None):
    """One inversion per (reference, target layer, reference layer); full forwards; per-pair STIR."""
    from ftlens.similarity import linear_cka

    models = {"pretrained": pt, "finetuned": ft}
    L = len(layers)
    pairs = [(i, j) for i in range(L) for j in range(L)]
    if pairs_per_ref is not None and pairs_per_ref < len(pairs):
        pairs = random.Random(0).sample(pairs, pairs_per_ref)
    mats = {(t, r): np.full((L, L), np.nan) for t in models for r in models}
    t0 = time.perf_counter()
    for r_label, ref in models.items():
        for i, j in pairs:
            xp = naive_invert(ref, layers[j], x, steps, step_size, seed)
            with torch.no_grad():
                for t_label, tgt in models.items():
                    a = _full_forward_rep(tgt, x, layers[i])
                    b = _full_forward_rep(tgt, xp, layers[i])
                    mats[(t_label, r_label)][i, j] = linear_cka(a, b)
    seconds = time.perf_counter() - t0
    scale = (L * L) / len(pairs)
    return mats, seconds, seconds * scale, len(pairs) * len(models)


def _time(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def inversion_efficiency(model, x: torch.Tensor, steps: int, device: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ftlens.inversion import invert

    layer = model.layers[-1]
    # FLOPs of one step for the whole batch: forward to the layer + backward to the input.
    xp = x.clone().to(device).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        rep = model.forward_layers(xp, [layer], clone=False)[layer]
        torch.autograd.grad(rep.square().sum(), xp)
    step_flops = counter.get_total_flops()
    seconds = _time(lambda: invert(model, layer, x, steps=steps, seed=0, device=device, schedule="fixed"), repeat=2)
    n = x.shape[0]
    image_steps = n * (steps + 1)
    flops = step_flops * (steps + 1)  # steps gradient steps + 1 final evaluation (counted as a step)
    blocks = model.module.blocks
    dim = blocks[0].mlp.fc1.in_features
    hidden = blocks[0].mlp.fc1.out_features
    tokens = model.layer_shapes([layer])[layer][0]
    a = torch.randn(n * tokens, dim, device=device)
    b = torch.randn(dim, hidden, device=device)
    t_small = _time(lambda: a @ b, repeat=20)
    big = torch.randn(2048, 2048, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def big_mm():
        big @ big
        sync()

    t_big = _time(big_mm, repeat=3)
    small_rate = 2 * n * tokens * dim * hidden / t_small
    big_rate = 2 * 2048**3 / t_big
    rate = flops / seconds
    return {
        "layer": layer,
        "images": n,
        "steps": steps,
        "seconds": seconds,
        "image_steps_per_s": image_steps / seconds,
        "useful_flop_per_image_step": step_flops / n,
        "useful_gflop_per_s": rate / 1e9,
        "matmul_model_shape": [n * tokens, dim, hidden],
        "matmul_model_shape_gflop_per_s": small_rate / 1e9,
        "matmul_2048_gflop_per_s": big_rate / 1e9,
        "fraction_of_model_shape_matmul": rate / small_rate,
        "fraction_of_2048_matmul": rate / big_rate,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ftlens:vit-tiny-16")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--naive-pairs", type=int, default=12,
                   help="time K random pairs per reference and extrapolate (0: every pair)")
    p.add_argument("--skip-naive", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ftlens.invariance import compare

    pt, ft = _models(args.model)
    pt.to(args.device)
    ft.to(args.device)
    layers = pt.layers
    x = torch.rand(args.images, *pt.input_size, generator=torch.Generator().manual_seed(0))

    t0 = time.perf_counter()
    # the fixed schedule: the naive pipeline below runs it (bench_peer.py compares the default)
    result = compare(pt, ft, x, seeds=[0], n_images=args.images, steps=args.steps, step_size=args.step_size,
                     cache=None, progress=False, device=args.device, schedule="fixed")
    compare_s = time.perf_counter() - t0
    out = {
        "benchmark": "bench_compare",
        "model": args.model,
        "layers": len(layers),
        "images": args.images,
        "steps": args.steps,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "compare": {
            "seconds": compare_s,
            "inversions": result.config["n_inversions"],
            "inversion_seconds": result.config["timings"]["inversions_s"],
            "scoring_seconds": result.config["timings"]["scoring_s"],
        },
    }
    if not args.skip_naive:
        mats, measured, extrapolated, n_inv = naive_compare(
            pt.to("cpu") if args.device == "cpu" else pt, ft, x.to(args.device), layers, args.steps,
            args.step_size, 0, args.naive_pairs or None)
        diffs = []
        for (t, r), m in mats.items():
            ours = result.stir_matrix(t, r).to_numpy()
            ok = np.isfinite(m)
            diffs.append(float(np.abs(ours[ok] - m[ok]).max()))
        out["naive"] = {
            "seconds_measured": measured,
            "seconds_full": extrapolated,
            "extrapolated": n_inv < 2 * len(layers) ** 2,
            "inversions_run": n_inv,
            "inversions_full": 2 * len(layers) ** 2,
            "max_abs_diff_stir": max(diffs),
        }
        out["speedup_vs_naive"] = extrapolated / compare_s
    out["inversion"] = inversion_efficiency(pt, x, args.steps, args.device)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
