"""Benchmark: inversion efficiency -- useful FLOP/s against a dense matmul measured in the same run.

Commands (defaults: ``ftlens:vit-tiny-32``, random weights, 32 images, 10 steps, the first,
middle and last block; about a minute on 2 CPU cores)::

    .venv/bin/python bench/bench_inversion.py
    .venv/bin/python bench/bench_inversion.py --threads 1 --layers all
    .venv/bin/python bench/bench_inversion.py --device cuda --images 500 --steps 50 --autocast bf16 --tf32
    .venv/bin/python bench/bench_inversion.py --paper              # the paper's configuration (see below)

What is measured, in one run, printed as one JSON object:

- per inverted layer ``j``: the *useful* FLOPs of the inversion -- matmul/convolution/attention
  FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image: the target
  forward, ``steps`` x (forward to layer ``j`` + backward w.r.t. the input only) and the final
  forward, times the number of images -- against the wall time of :func:`ftlens.invert`
  (after a warm-up call), as GFLOP/s and image-steps/s;
- dense matmul references timed in the same process: the model's own MLP shape
  ``(images * tokens, dim) x (dim, hidden)`` and a square matmul (2048 on the CPU, 8192 on a
  GPU) in the compute dtype (float32, or bfloat16 with ``--autocast bf16`` on CUDA); the
  ``fraction_*`` fields are useful FLOP/s divided by those rates;
- peak memory: the process's peak RSS (``ru_maxrss``) and, on CUDA, the peak of
  ``torch.cuda.max_memory_allocated`` over the inversions.

``--paper``: ViT-B/32 at 224 px with random weights, 500 images, 50 steps, 12 layers,
2 models, 3 seeds. The FLOP count of the whole analysis is counted layer by layer (the issue's
arithmetic says about 18 PFLOP for one (pt, ft) pair and 3 seeds). On CUDA the whole
:func:`ftlens.compare` runs (bf16 autocast, TF32, ``--compile`` optional, no cache) and the JSON
gives the time, the fraction of the FLOP bound (the time the useful FLOPs would take at the
measured dense bf16 matmul rate, divided by the measured time) and the peak GPU memory. On a
CPU the full run would take days, so it is refused: the JSON gives the FLOP count, the bound
at the CPU's measured matmul rate, and an estimate from a tiny measured fraction
(``--fraction-images`` images, ``--fraction-steps`` steps, layers 1 and 12 of one model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import torch


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeat: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, repeat: int = 5) -> float:
    """FLOP/s of a dense ``(m, k) x (k, n)`` matmul in ``dtype`` on ``device``."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = _best_time(lambda: a @ b, device, repeat)
    return 2.0 * m * k * n / seconds


def _autocast(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    if dtype is None or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def step_flops(model, layer: str, device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float]:
    """Useful FLOPs for ONE image: forward to ``layer``, and forward + backward w.r.t. the input."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, *model.input_size, device=device)
    with FlopCounterMode(display=False) as fwd, torch.no_grad(), _autocast(device, amp_dtype):
        model.forward_layers(x, [layer], clone=False)
    xg = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as both:
        with _autocast(device, amp_dtype):
            rep = model.forward_layers(xg, [layer], clone=False)[layer]
        torch.autograd.grad(rep.float().square().sum(), xg)
    return {"forward": float(fwd.get_total_flops()), "forward_backward": float(both.get_total_flops())}


def inversion_flops(per_image: dict[str, float], images: int, steps: int) -> float:
    """Target forward + ``steps`` x (forward + backward) + the final forward, for ``images`` images."""
    return images * (steps * per_image["forward_backward"] + 2 * per_image["forward"])


def _model_shape(model) -> tuple[int, int, int]:
    blocks = model.module.blocks
    tokens = model.layer_shapes([model.layers[0]])[model.layers[0]][0]
    return tokens, blocks[0].mlp.fc1.in_features, blocks[0].mlp.fc1.out_features


def _pick_layers(model, which: str) -> list[str]:
    layers = model.layers
    if which == "all":
        return list(layers)
    if which == "deepest":
        return [layers[-1]]
    if which == "ends":
        return list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))
    return model.resolve_layers([s for s in which.split(",") if s])


def _gpu_peak(device: torch.device, invs) -> int | None:
    if device.type != "cuda":
        return None
    peaks = [inv.extra.get("peak_gpu_bytes", 0) for inv in invs] + [torch.cuda.max_memory_allocated(device)]
    return int(max(peaks))


def _setup(args) -> tuple[torch.device, torch.dtype | None, torch.dtype]:
    from ftlens.inversion import set_tf32

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.tf32:
        set_tf32(True)
    amp = torch.bfloat16 if (args.autocast == "bf16" and device.type == "cuda") else None
    mm_dtype = amp or torch.float32
    return device, amp, mm_dtype


def _header(args, device: torch.device, amp) -> dict:
    return {
        "benchmark": "bench_inversion",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "autocast": str(amp).removeprefix("torch.") if amp else None,
        "tf32": bool(args.tf32),
        "compile": args.compile,
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------------- default mode


def run_default(args) -> dict:
    from ftlens.inversion import invert, runtime
    from ftlens.models import load_model

    device, amp, mm_dtype = _setup(args)
    torch.manual_seed(0)
    model = load_model(args.model, device=device)
    x = torch.rand(args.images, *model.input_size, generator=torch.Generator().manual_seed(0))
    tokens, dim, hidden = _model_shape(model)
    layers = _pick_layers(model, args.layers)
    big = 8192 if device.type == "cuda" else 2048
    out = _header(args, device, amp) | {
        "model": args.model, "images": args.images, "steps": args.steps, "batch_size": args.batch_size,
    }
    rate_model = matmul_rate(args.images * tokens, dim, hidden, device, mm_dtype)
    rate_big = matmul_rate(big, big, big, device, mm_dtype, repeat=3)
    results, invs = [], []
    total_flops = total_seconds = 0.0
    with runtime(compile=args.compile or False):
        invert(model, layers[-1], x[: min(4, args.images)], steps=1, device=device, batch_size=args.batch_size,
               autocast=args.autocast, schedule="fixed")  # warm-up (and compilation, if any)
        for layer in layers:
            per_image = step_flops(model, layer, device, amp)
            flops = inversion_flops(per_image, args.images, args.steps)
            _sync(device)
            t0 = time.perf_counter()
            # the fixed schedule: every image takes every step, so the FLOP count is exact
            inv = invert(model, layer, x, steps=args.steps, seed=0, device=device, batch_size=args.batch_size,
                         autocast=args.autocast, schedule="fixed")
            _sync(device)
            seconds = time.perf_counter() - t0
            invs.append(inv)
            total_flops += flops
            total_seconds += seconds
            results.append({
                "layer": layer,
                "seconds": seconds,
                "image_steps_per_s": args.images * args.steps / seconds,
                "useful_gflop_per_image_step": per_image["forward_backward"] / 1e9,
                "useful_gflop": flops / 1e9,
                "useful_gflop_per_s": flops / seconds / 1e9,
                "fraction_of_model_shape_matmul": flops / seconds / rate_model,
                "fraction_of_square_matmul": flops / seconds / rate_big,
                "batch_size": inv.extra.get("batch_size"),
                "mean_residual": inv.mean_residual,
            })
    out["matmul"] = {
        "dtype": str(mm_dtype).removeprefix("torch."),
        "model_shape": [args.images * tokens, dim, hidden],
        "model_shape_gflop_per_s": rate_model / 1e9,
        "square": big,
        "square_gflop_per_s": rate_big / 1e9,
    }
    out["layers"] = results
    out["total"] = {
        "seconds": total_seconds,
        "useful_gflop_per_s": total_flops / total_seconds / 1e9,
        "fraction_of_model_shape_matmul": total_flops / total_seconds / rate_model,
        "fraction_of_square_matmul": total_flops / total_seconds / rate_big,
    }
    out["peak_rss_mib"] = _peak_rss_mib()
    gpu = _gpu_peak(device, invs)
    if gpu is not None:
        out["peak_gpu_mib"] = gpu / 2**20
    return out


# ----------------------------------------------------------------------------------- paper mode

PAPER = dict(model="timm:vit_base_patch32_224", images=500, steps=50, layers=12, models=2, seeds=3)


def paper_flops(model, device: torch.device, amp) -> dict:
    """The useful FLOPs of the paper's analysis, counted per layer (one image, then scaled)."""
    per_layer = {layer: step_flops(model, layer, device, amp) for layer in model.layers}
    n, steps, k = PAPER["images"], PAPER["steps"], PAPER["models"] * PAPER["seeds"]
    inversions = sum(inversion_flops(f, n, steps) for f in per_layer.values()) * k
    deepest = per_layer[model.layers[-1]]["forward"]
    # scoring: per seed, both models' forward through every layer on X and on each of the 2L inversions
    scoring = PAPER["seeds"] * (1 + PAPER["models"] * PAPER["layers"]) * PAPER["models"] * n * deepest
    d = model.layer_shapes([model.layers[0]])[model.layers[0]]
    features = int(torch.tensor(d).prod())
    grams = PAPER["seeds"] * (1 + PAPER["models"] * PAPER["layers"]) * PAPER["models"] * PAPER["layers"] \
        * 2.0 * n * n * features
    fb = [f["forward_backward"] for f in per_layer.values()]
    return {
        "per_image_forward_backward_gflop_by_layer": [round(v / 1e9, 4) for v in fb],
        "forward_gflop_per_image_full_depth": deepest / 1e9,
        "inversions_pflop": inversions / 1e15,
        "scoring_forward_pflop": scoring / 1e15,
        "scoring_gram_float64_pflop": grams / 1e15,
        "total_pflop": (inversions + scoring + grams) / 1e15,
        "note": "useful = matmul/conv/attention FLOPs (FlopCounterMode); backward w.r.t. the input only "
                "(parameters need no gradient); the issue's 18 PFLOP is the inversions",
    }


def run_paper(args) -> dict:
    from ftlens.invariance import compare
    from ftlens.inversion import invert, runtime, tf32
    from ftlens.models import load_model

    device, amp_req, _ = _setup(args)
    on_gpu = device.type == "cuda"
    if on_gpu and args.autocast is None:
        args.autocast = "bf16"
    amp = torch.bfloat16 if (on_gpu and args.autocast == "bf16") else None
    if on_gpu and not args.tf32:
        from ftlens.inversion import set_tf32

        set_tf32(True)
        args.tf32 = True
    torch.manual_seed(0)
    pt = load_model(PAPER["model"], device=device)
    torch.manual_seed(1)
    ft = load_model(PAPER["model"], device=device)
    out = _header(args, device, amp) | {"mode": "paper", "config": PAPER}
    flops = paper_flops(pt, device, amp)
    out["flops"] = flops
    mm_dtype = amp or torch.float32
    big = 8192 if on_gpu else 2048
    rate = matmul_rate(big, big, big, device, mm_dtype, repeat=3)
    out["matmul"] = {"dtype": str(mm_dtype).removeprefix("torch."), "square": big, "gflop_per_s": rate / 1e9}
    bound_s = flops["inversions_pflop"] * 1e15 / rate
    out["bound_seconds_inversions"] = bound_s
    if on_gpu:
        x = torch.rand(PAPER["images"] * PAPER["seeds"], *pt.input_size, generator=torch.Generator().manual_seed(0))
        with runtime(compile=args.compile or False):
            invert(pt, pt.layers[-1], x[:8], steps=1, autocast=args.autocast, schedule="fixed")  # warm-up
            torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            result = compare(pt, ft, x, seeds=PAPER["seeds"], n_images=PAPER["images"], steps=PAPER["steps"],
                             cache=None, autocast=args.autocast, device=device, progress=False,
                             batch_size=args.batch_size, schedule=args.schedule)
            _sync(device)
            seconds = time.perf_counter() - t0
        timings = result.config["timings"]
        # the share of the fixed schedule's image-steps that ran (1 for --schedule fixed)
        done = float(result.inversions["image_steps"].sum()) / (len(result.inversions) * PAPER["images"]
                                                                 * (PAPER["steps"] + 1))
        out["measured"] = {
            "schedule": result.config["inversion"]["schedule"],
            "image_steps_share_of_fixed": done,
            "fraction_of_bound_executed_steps": bound_s * done / timings["inversions_s"],
            "seconds": seconds,
            "inversion_seconds": timings["inversions_s"],
            "scoring_seconds": timings["scoring_s"],
            "fraction_of_bound_inversions": bound_s / timings["inversions_s"],
            "fraction_of_bound_total": flops["total_pflop"] * 1e15 / rate / seconds,
            "useful_tflop_per_s_inversions": flops["inversions_pflop"] * 1e3 / timings["inversions_s"],
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "mean_residual_pt": float(result.per_layer["residual_pretrained"].mean()),
        }
        if args.agreement and args.autocast:
            # the same compare in float32 (TF32 off): how far bf16 moves STIR
            with runtime(compile=args.compile or False), tf32(False):
                t0 = time.perf_counter()
                fp32 = compare(pt, ft, x, seeds=PAPER["seeds"], n_images=PAPER["images"], steps=PAPER["steps"],
                               cache=None, autocast=None, device=device, progress=False,
                               batch_size=args.batch_size, schedule=args.schedule)
                _sync(device)
                fp32_s = time.perf_counter() - t0
            diff = max(float((result.stir_matrix(t, r) - fp32.stir_matrix(t, r)).abs().max().max())
                       for t in ("pretrained", "finetuned") for r in ("pretrained", "finetuned"))
            out["measured"]["float32_seconds"] = fp32_s
            out["measured"]["max_abs_diff_stir_bf16_vs_float32"] = diff
    else:
        # a tiny measured fraction on the real shapes: layers 1 and 12 of one model, one seed
        n, steps = args.fraction_images, args.fraction_steps
        x = torch.rand(n, *pt.input_size, generator=torch.Generator().manual_seed(0))
        invert(pt, pt.layers[0], x[:1], steps=1, schedule="fixed")  # warm-up
        sample = []
        for layer in (pt.layers[0], pt.layers[-1]):
            f = inversion_flops(step_flops(pt, layer, device, None), n, steps)
            t0 = time.perf_counter()
            invert(pt, layer, x, steps=steps, seed=0, schedule="fixed")
            s = time.perf_counter() - t0
            sample.append({"layer": layer, "images": n, "steps": steps, "seconds": s, "useful_gflop_per_s": f / s / 1e9,
                           "fraction_of_square_matmul": f / s / rate})
        eff = sum(r["useful_gflop_per_s"] for r in sample) / len(sample) * 1e9
        out["measured_fraction"] = sample
        out["estimate"] = {
            "cpu_seconds_at_matmul_rate": bound_s,
            "cpu_hours_at_measured_efficiency": flops["inversions_pflop"] * 1e15 / eff / 3600,
            "h100_seconds_at_400_tflops_bf16": flops["inversions_pflop"] * 1e15 / 400e12,
        }
        out["refused"] = ("the full paper configuration is not run on a CPU (estimated "
                          f"{out['estimate']['cpu_hours_at_measured_efficiency']:.0f} h here); run it on a GPU: "
                          "bench/bench_inversion.py --paper --device cuda")
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ftlens:vit-tiny-32")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--layers", default="ends", help="ends (first, middle, last), deepest, all, or names")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CPU, from free memory on CUDA")
    p.add_argument("--autocast", choices=["bf16"], default=None, help="bf16 autocast (CUDA only)")
    p.add_argument("--tf32", action="store_true", help="TF32 float32 matmuls (CUDA)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None,
                   help="torch.compile the ViT block stack (optionally a backend name)")
    p.add_argument("--paper", action="store_true", help="the paper's configuration (see the docstring)")
    p.add_argument("--agreement", action="store_true",
                   help="--paper on a GPU with --autocast: also run the compare in float32 and report the largest "
                        "STIR difference")
    p.add_argument("--schedule", default=None, choices=["adaptive", "fixed"],
                   help="--paper: the inversion schedule of the compare (default: the library's, adaptive); "
                        "the efficiency measurements always use the fixed schedule")
    p.add_argument("--fraction-images", type=int, default=4, help="--paper on a CPU: images of the measured fraction")
    p.add_argument("--fraction-steps", type=int, default=1, help="--paper on a CPU: steps of the measured fraction")
    args = p.parse_args()
    out = run_paper(args) if args.paper else run_default(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
