"""Benchmark: ``ftlens.compare`` against the authors' own package (PyPI ``stir-invariance``).

Command (defaults: two 12-block width-96 ViTs at 32 px, random weights, 64 images, 10 steps,
1 seed, 3 sampled peer calls; a few minutes on 2 CPU cores)::

    .venv/bin/python bench/bench_peer.py
    .venv/bin/python bench/bench_peer.py --steps 50 --pairs 2
    .venv/bin/python bench/bench_peer.py --schedule fixed     # the paper's fixed schedule on our side

Measured in one process, on the same models, images and steps, printed as one JSON object:

1. ``ftlens``: :func:`ftlens.compare` without a cache: all four L x L STIR matrices (both
   directions and both self-comparisons) from 2 L truncated inversions, with the library's
   default schedule (``--schedule`` picks another) and, as a second row, the fixed schedule.
2. ``peer``: the authors' 2023 calling pattern: one ``stir.stir.STIR(pt, ft, ...,
   layer1_num=j, layer2_num=i)`` call per layer pair, each running two full-depth inversions
   (their ``AttackerModel``, ``UnconstrainedStep``, ``use_best``, step size 0.5, ``iterations =
   steps``) and giving ``STIR(ft^[i] | pt^[j])`` and ``STIR(pt^[j] | ft^[i])``. All ``L^2``
   calls take about 10 minutes at the defaults, so ``--pairs K`` times ``K`` random pairs and
   extrapolates to ``L^2`` by FLOPs (a call runs full-depth forwards, but its backward goes down
   from its two layers, so deep pairs cost more: the measured time is scaled by the FLOPs of all
   pairs over those of the sampled ones; the JSON says ``"extrapolated": true`` and also gives
   the uniform extrapolation); ``--pairs 0`` runs them all.
   With the default schedule (Adam) a third row, ``equal_quality``: the default method with
   every image stopped once its residual is at most the *lowest* mean residual of any layer in
   the fixed-schedule run (the fixed schedule is the peer's algorithm, step for step, so that
   run's residuals are the peer's quality at its settings), capped at ``max(steps, 150)``
   steps; ``inversions_at_least_peer_quality`` counts the inversions whose mean residual is at
   most that of the same inversion under the fixed schedule. Its ``speedup_vs_peer_all_pairs``
   is the speed-up at equal (or better) quality.
3. ``speedup``: extrapolated peer time / ftlens time, and the largest difference between the
   two packages' STIR values on the sampled pairs (different start noise draws: the peer draws
   from torch's global generator, so agreement is statistical, not bitwise).
4. ``flops``: the useful FLOPs of both pipelines (``FlopCounterMode``; ftlens' from the
   image-steps its inversions took). ``flop_ratio`` is the speed-up at equal FLOP rates (the
   algorithm's share); ``per_flop_advantage = speedup / flop_ratio`` is the rest.

The peer hard-codes ``cuda:N`` device strings; :func:`_cpu_shim` maps tensor and module moves
to ``cuda`` onto the CPU while the peer runs (bench only; nothing in ``ftlens`` imports ``stir``).
The peer's models must answer ``model(x, with_latent=..., layer_num=k) -> (logits, layer k)``:
:class:`PeerModel` wraps the same timm module, running the whole network (as the authors'
wrappers do) and reading block ``k`` with a hook.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import tempfile
import time

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def _cpu_shim():
    """While active, ``Tensor.to`` / ``Module.to`` send anything bound for CUDA to the CPU."""
    tensor_to, module_to = torch.Tensor.to, nn.Module.to

    def fix(args, kwargs):
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        return args, kwargs

    def t_to(self, *args, **kwargs):
        args, kwargs = fix(args, kwargs)
        return tensor_to(self, *args, **kwargs)

    def m_to(self, *args, **kwargs):
        args, kwargs = fix(args, kwargs)
        return module_to(self, *args, **kwargs)

    torch.Tensor.to, nn.Module.to = t_to, m_to
    try:
        yield
    finally:
        torch.Tensor.to, nn.Module.to = tensor_to, module_to


def _is_cuda(a) -> bool:
    return (isinstance(a, str) and a.startswith("cuda")) or (isinstance(a, torch.device) and a.type == "cuda")


class PeerModel(nn.Module):
    """A timm ViT in the peer's model interface: full forward, block ``layer_num`` read by a hook."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x, with_latent=False, fake_relu=False, no_relu=False, layer_num=None,
                return_possible_layers=False):
        got = {}
        handle = self.module.blocks[layer_num].register_forward_hook(lambda _m, _i, out: got.__setitem__("r", out))
        try:
            out = self.module(x)
        finally:
            handle.remove()
        return out, got["r"].reshape(x.shape[0], -1)


class Normalizer(nn.Module):
    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _peer_call(pt, ft, x, i, j, steps, step_size, seed):
    """One peer call for the pair (i, j) -> ``(STIR(ft^[i] | pt^[j]), STIR(pt^[j] | ft^[i]))``.

    Exactly the two ``_stir`` calls of ``stir.stir.STIR`` (which would also wrap the models
    in ``AttackerModel``), with a fresh ``ve_kwargs`` for each (the peer sets ``layer_num`` in it).
    """
    import stir.helper as hp
    import stir.stir as peer
    from stir.attack.attacker import AttackerModel
    from stir.attack.losses import LPNormLossSingleModel

    def ve_kwargs():
        return {
            "custom_loss": LPNormLossSingleModel(hp.DummyArgs(("lpnorm_type", 2.0, float))),
            "constraint": "unconstrained", "eps": 1000, "step_size": step_size, "iterations": steps,
            "targeted": True, "do_tqdm": False, "should_normalize": True, "use_best": True,
        }

    a1 = AttackerModel(PeerModel(pt.module), Normalizer(pt.mean, pt.std))
    a2 = AttackerModel(PeerModel(ft.module), Normalizer(ft.mean, ft.std))
    loader = [(x, torch.arange(len(x)))]
    torch.manual_seed(seed)
    with _cpu_shim():
        # exactly what peer.STIR does (two _stir calls), with a fresh ve_kwargs for each
        ft_given_pt, _ = peer._stir(a1, a2, loader, len(x), [0], ve_kwargs(), 2.0, "super-noise", False,
                                    "linear_CKA", False, j, i)
        pt_given_ft, _ = peer._stir(a2, a1, loader, len(x), [0], ve_kwargs(), 2.0, "super-noise", False,
                                    "linear_CKA", False, i, j)
    return float(ft_given_pt), float(pt_given_ft)


def _flops(pt, x1) -> tuple[list[float], list[float]]:
    """Useful FLOPs (matmul/attention/conv, ``FlopCounterMode``) of one image-step per layer ``k``.

    ftlens runs blocks ``0..k`` forward and back to the input (one truncated inversion per layer
    and model); the peer runs the whole network forward and back from block ``k`` (two
    full-depth inversions per pair ``(i, j)``: at ``j`` on one model, at ``i`` on the other).
    Returns ``(ftlens per layer, peer per layer)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    ours, peer = [], []
    # gradients w.r.t. the input only (as both packages take them); ``backward`` because
    # FlopCounterMode's module hooks do not support ``autograd.grad``
    flags = [q.requires_grad for q in pt.module.parameters()]
    for q in pt.module.parameters():
        q.requires_grad_(False)
    for k, layer in enumerate(pt.layers):
        x = x1.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as c:
            rep = pt.forward_layers(x, [layer], clone=False)[layer]
            rep.square().sum().backward()
        ours.append(float(c.get_total_flops()))
        x = x1.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as c:
            _, rep = PeerModel(pt.module)(Normalizer(pt.mean, pt.std)(x), layer_num=k)
            rep.square().sum().backward()
        peer.append(float(c.get_total_flops()))
    for q, f in zip(pt.module.parameters(), flags, strict=True):
        q.requires_grad_(f)
    return ours, peer


def _models(spec: str, embed_dim: int | None):
    from ftlens.models import load_model

    kw = {"embed_dim": embed_dim} if embed_dim else {}
    torch.manual_seed(0)
    pt = load_model(spec, **kw)
    torch.manual_seed(1)
    ft = load_model(spec, **kw)
    return pt, ft


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ftlens:vit-tiny-32")
    p.add_argument("--embed-dim", type=int, default=96, help="ViT width (0: the preset's)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--schedule", default=None, help="ftlens schedule (default: the library's default)")
    p.add_argument("--pairs", type=int, default=3, help="peer calls to time, extrapolated to L^2 (0: all)")
    p.add_argument("--no-peer", action="store_true", help="only ftlens: the default against the fixed schedule")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--processes", type=int, default=None,
                   help="ftlens: split its inversions over N local processes (a fresh temporary cache)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ftlens.invariance import compare

    pt, ft = _models(args.model, args.embed_dim or None)
    L = len(pt.layers)
    x = torch.rand(args.images, *pt.input_size, generator=torch.Generator().manual_seed(args.seed))

    def ours(schedule, steps):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # processes share a cache; fresh: nothing cached
            r = compare(pt, ft, x, seeds=[args.seed], n_images=args.images, steps=steps,
                        step_size=args.step_size, cache=tmp if args.processes else None, progress=False,
                        schedule=schedule, processes=args.processes)
        return r, time.perf_counter() - t0

    # warm-up of both packages (first-call costs: imports, allocator, thread pools)
    compare(pt, ft, x[:4], layers=pt.layers[:2], seeds=[args.seed], n_images=4, steps=1, cache=None, progress=False)
    if not args.no_peer:
        _peer_call(pt, ft, x[:4], 0, 1, 1, args.step_size, args.seed)

    runs = {}
    for label, schedule in (("default", args.schedule), ("fixed", "fixed")):
        if label == "fixed" and args.schedule == "fixed":
            continue
        r, seconds = ours(schedule, args.steps)
        runs[label] = {"result": r, "seconds": seconds, "settings": r.config["inversion"],
                       "image_steps": int(r.inversions["image_steps"].sum()),
                       "residual_mean": float(r.inversions["residual_mean"].mean()),
                       "inversion_table": r.inversions}
    if "fixed" in runs and args.schedule in (None, "adam"):
        # equal quality: the default method, each image stopped once it is at least as well
        # inverted as the best-inverted layer of the peer's run (the fixed schedule is the peer's
        # algorithm step for step), so every layer ends at least as good as the peer's
        fixed_inv = runs["fixed"]["inversion_table"]
        target = float(fixed_inv["residual_mean"].min())
        r, seconds = ours({"schedule": "adam", "stop_residual": target}, max(args.steps, 150))
        key = ["reference", "reference_layer", "seed"]
        ours_by = r.inversions.set_index(key)["residual_mean"]
        peer_by = fixed_inv.set_index(key)["residual_mean"]
        runs["equal_quality"] = {"result": r, "seconds": seconds, "settings": r.config["inversion"],
                                 "image_steps": int(r.inversions["image_steps"].sum()),
                                 "residual_mean": float(r.inversions["residual_mean"].mean()),
                                 "inversion_table": r.inversions, "stop_residual": target,
                                 "inversions_at_least_peer_quality": int((ours_by <= peer_by.loc[ours_by.index]).sum()),
                                 "inversions_compared": len(ours_by)}

    pairs = [(i, j) for i in range(L) for j in range(L)]
    if args.no_peer:
        pairs = []
    elif args.pairs and args.pairs < len(pairs):
        pairs = random.Random(args.seed).sample(pairs, args.pairs)
    peer_values = []
    t0 = time.perf_counter()
    for i, j in pairs:
        peer_values.append(_peer_call(pt, ft, x, i, j, args.steps, args.step_size, args.seed))
    peer_s = time.perf_counter() - t0
    ours_k, peer_k = _flops(pt, x[:1])
    # a call's cost grows with the depths of its two layers: extrapolate by the FLOPs of the sampled
    # pairs against those of all pairs (the uniform extrapolation is kept for reference)
    all_pairs = [peer_k[i] + peer_k[j] for i in range(L) for j in range(L)]
    sampled = sum(peer_k[i] + peer_k[j] for i, j in pairs)
    peer_full = peer_s * sum(all_pairs) / sampled if pairs else float("nan")
    peer_uniform = peer_s * L * L / len(pairs) if pairs else float("nan")

    out = {
        "benchmark": "bench_peer",
        "model": args.model, "embed_dim": args.embed_dim, "layers": L, "images": args.images,
        "steps": args.steps, "torch_threads": torch.get_num_threads(), "ftlens_processes": args.processes or 1, "torch": torch.__version__,
        "platform": platform.platform(),
        "peer": {
            "package": "stir-invariance", "calls_timed": len(pairs), "pairs": pairs,
            "seconds_measured": peer_s, "seconds_per_call": peer_s / max(1, len(pairs)),
            "seconds_all_pairs": peer_full, "seconds_all_pairs_uniform": peer_uniform,
            "extrapolated": len(pairs) < L * L,
            "full_depth_inversions_all_pairs": 2 * L * L,
        },
        "ftlens": {},
    }
    index = {name: k for k, name in enumerate(pt.layers)}
    # the peer evaluates steps + 1 iterates per image of every inversion (it has no early stop)
    peer_flops = sum(all_pairs) * (args.steps + 1) * len(x)
    out["flops"] = {"peer_all_pairs": peer_flops, "ftlens_per_image_step": ours_k, "peer_per_image_step": peer_k,
                    "note": "useful FLOPs (FlopCounterMode): the peer's for all pairs; ftlens' from the image-steps "
                            "each of its inversions took. flop_ratio = peer / ftlens, the speed-up at equal FLOP "
                            "rates; per_flop_advantage = speed-up / flop_ratio"}
    for label, run in runs.items():
        r = run["result"]
        inv = run.pop("inversion_table")
        run["flops"] = float(sum(ours_k[index[name]] * steps for name, steps in
                                 zip(inv["reference_layer"], inv["image_steps"], strict=True)))
        diffs = []
        for (i, j), (ft_pt, pt_ft) in zip(pairs, peer_values, strict=True):
            ours_ft_pt = float(r.stir_matrix("finetuned", "pretrained").iloc[i, j])
            ours_pt_ft = float(r.stir_matrix("pretrained", "finetuned").iloc[j, i])
            diffs += [abs(ours_ft_pt - ft_pt), abs(ours_pt_ft - pt_ft)]
        out["ftlens"][label] = {
            "seconds": run["seconds"], "inversions": r.config["n_inversions"],
            "inversion_seconds": r.config["timings"]["inversions_s"],
            "image_steps": run["image_steps"], "residual_mean": run["residual_mean"],
            "settings": run["settings"],
            "speedup_vs_peer_all_pairs": peer_full / run["seconds"],
            "flop_ratio": peer_flops / run["flops"],
            "per_flop_advantage": peer_full / run["seconds"] / (peer_flops / run["flops"]),
            "max_abs_diff_stir_vs_peer": max(diffs, default=float("nan")),
            "mean_abs_diff_stir_vs_peer": float(np.mean(diffs)) if diffs else float("nan"),
            **{k: run[k] for k in ("stop_residual", "inversions_at_least_peer_quality", "inversions_compared")
               if k in run},
        }
    if "fixed" in runs and "default" in runs:
        a, b = runs["default"]["result"], runs["fixed"]["result"]
        out["default_vs_fixed"] = {
            "max_abs_diff_stir": max(float(np.nanmax(np.abs(a.stir_matrix(t, s).to_numpy() - b.stir_matrix(t, s).to_numpy())))
                                     for t in ("pretrained", "finetuned") for s in ("pretrained", "finetuned")),
            "image_steps_ratio": runs["default"]["image_steps"] / runs["fixed"]["image_steps"],
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
