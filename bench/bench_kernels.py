"""Benchmark: what kernel-level choices buy in the inversion inner loop (CPU or GPU).

Command (a few minutes on 2 CPU cores)::

    .venv/bin/python bench/bench_kernels.py
    .venv/bin/python bench/bench_kernels.py --device cuda      # the same questions on a GPU

Each question is an A/B pair timed in this process, interleaved (A B A B ...), best of
``--repeat``; one JSON object is printed. Only the ratios mean something on a shared machine.

- ``attention``: timm's fused attention (``F.scaled_dot_product_attention``, the default) vs its
  explicit softmax path (``fused_attn = False``), one inversion of a 12-block ViT.
- ``gelu``: exact (erf) GELU, which the models use, vs the tanh approximation: the time, and
  how far the approximation moves the inversion's residual (a different model, so it is only
  measured, never switched on).
- ``batch``: cost per image-step against the batch size (the question behind batching the
  inversions of several layers into one forward: it pays only where bigger batches are cheaper
  per image).
- ``cnn``: the real CNN (timm ``tf_efficientnet_lite0``, random weights; the ImageNet weights
  change values, not cost) at 32 and 64 px: image-steps per second, NCHW vs channels_last
  (model and input), and the share of the depthwise-convolution backward in a profile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch
from torch import nn


def _best_interleaved(fns: dict, repeat: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def _fused(model, on: bool):
    mods = [m for m in model.module.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = on
    try:
        yield
    finally:
        for m, b in zip(mods, before, strict=True):
            m.fused_attn = b


@contextlib.contextmanager
def _gelu_tanh(model):
    swapped = []
    for mod in model.module.modules():
        for name, child in mod.named_children():
            if isinstance(child, nn.GELU):
                swapped.append((mod, name, child))
                setattr(mod, name, nn.GELU(approximate="tanh"))
    try:
        yield
    finally:
        for mod, name, child in swapped:
            setattr(mod, name, child)


@contextlib.contextmanager
def _channels_last(model):
    model.module.to(memory_format=torch.channels_last)
    handle = model.module.register_forward_pre_hook(
        lambda _m, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
        model.module.to(memory_format=torch.contiguous_format)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256, 1024], help="batch sizes of 'batch'")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    from ftlens.inversion import invert
    from ftlens.models import load_model

    dev = args.device
    out: dict = {"benchmark": "bench_kernels", "device": dev, "torch_threads": torch.get_num_threads(),
                 "torch": torch.__version__, "platform": platform.platform(), "images": args.images,
                 "steps": args.steps}
    torch.manual_seed(0)
    vit = load_model("ftlens:vit-tiny-32", embed_dim=96).to(dev)
    layer = vit.layers[-1]
    x = torch.rand(args.images, *vit.input_size, generator=torch.Generator().manual_seed(0))

    def inv(model=vit, lay=layer, xs=x):
        return invert(model, lay, xs, steps=args.steps, schedule="fixed", device=dev)

    if "attention" not in skip:
        def fused():
            with _fused(vit, True):
                inv()

        def explicit():
            with _fused(vit, False):
                inv()

        t = _best_interleaved({"fused": fused, "explicit": explicit}, args.repeat)
        out["attention"] = {"model": "ftlens:vit-tiny-32 width 96", "layer": layer, "seconds": t,
                            "explicit_over_fused": t["explicit"] / t["fused"]}

    if "gelu" not in skip:
        exact = inv()

        def tanh():
            with _gelu_tanh(vit):
                return inv()

        approx = tanh()
        t = _best_interleaved({"exact": inv, "tanh": tanh}, args.repeat)
        out["gelu"] = {"seconds": t, "tanh_over_exact": t["tanh"] / t["exact"],
                       "mean_residual_exact": exact.mean_residual, "mean_residual_tanh": approx.mean_residual}

    if "batch" not in skip:
        rows = []
        for spec in ("ftlens:vit-tiny-16", "ftlens:vit-tiny-32"):
            torch.manual_seed(0)
            m = load_model(spec).to(dev)
            lay = m.layers[len(m.layers) // 2]
            for n in args.batches:
                xs = torch.rand(n, *m.input_size)
                t = _best_interleaved({"t": lambda m=m, lay=lay, xs=xs: inv(m, lay, xs)}, max(1, args.repeat - 1))
                rows.append({"model": spec, "layer": lay, "batch": n,
                             "ms_per_image_step": t["t"] / (n * (args.steps + 1)) * 1e3})
        out["batch"] = rows

    if "cnn" not in skip:
        cnn_rows = []
        for px in (32, 64):
            torch.manual_seed(0)
            m = load_model("timm:tf_efficientnet_lite0", input_size=(3, px, px)).to(dev)
            xs = torch.rand(args.images, 3, px, px, generator=torch.Generator().manual_seed(0))
            for lay in (m.layers[1], m.layers[-1]):
                def nchw(m=m, lay=lay, xs=xs):
                    inv(m, lay, xs)

                def cl(m=m, lay=lay, xs=xs):
                    with _channels_last(m):
                        inv(m, lay, xs)

                t = _best_interleaved({"nchw": nchw, "channels_last": cl}, args.repeat)
                evals = args.images * (args.steps + 1)
                cnn_rows.append({"px": px, "layer": lay, "seconds": t,
                                 "image_steps_per_s_nchw": evals / t["nchw"],
                                 "image_steps_per_s_channels_last": evals / t["channels_last"],
                                 "channels_last_over_nchw": t["channels_last"] / t["nchw"]})
            if dev == "cpu":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    inv(m, m.layers[-1], xs)
                total = sum(e.self_cpu_time_total for e in prof.key_averages())
                conv_bwd = sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution_backward" in e.key
                               or "depthwise" in e.key.lower())
                conv_fwd = sum(e.self_cpu_time_total for e in prof.key_averages()
                               if "convolution" in e.key and "backward" not in e.key)
                cnn_rows.append({"px": px, "layer": m.layers[-1], "profile_share_conv_backward": conv_bwd / total,
                                 "profile_share_conv_forward": conv_fwd / total})
        out["cnn"] = cnn_rows
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
