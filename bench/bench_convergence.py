"""Residual versus passes for inversion methods: which optimizer converges in the budget.

    python bench/bench_convergence.py lite0 150 blocks.1,blocks.3,blocks.5
    python bench/bench_convergence.py runs/demo/runs/pretrain@last 150 blocks.5,blocks.11
    python bench/bench_convergence.py vitb32 100 blocks.1,blocks.5      # timm ViT-B/32, random init, 8 images
    python bench/bench_convergence.py gn blocks.3                         # Gauss-Newton/LM with CG on Lite0
    METHODS=fixed,adaptive,adam.05,adam.05cos,fft.05 python bench/bench_convergence.py ...

Each line: layer, method, median over 32 images (8 for ViT-B/32) of the best relative residual
``||m(x') - m(x)|| / ||m(x)||`` after 25, 50, 100, 150, 300, 500 passes (one forward + backward per
image each), from the same N(0, 1) starts. ``fixed``/``adaptive``: the normalised-gradient
schedules (step 0.5); ``adam.LR``: Adam on the pixels, constant step LR (``adam.05`` is the
library's default ``schedule="adam"``); ``adam.LRcos``: cosine-annealed to 0 over the budget;
``fft.LR``: Adam on 1/f-scaled Fourier coefficients (a decorrelated parametrisation);
``mom.9``: normalised gradient with heavy-ball momentum. The GN lines count a Gauss-Newton step's
cost in pass-equivalents measured in the same run (one CG iteration is a Jacobian-vector product
by double backward plus a vector-Jacobian product).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

import ftlens
from ftlens.data import get_dataset, sample_images
from ftlens.inversion.starts import start_images


def curve_adam(forward, target, tn, x0, steps, lr=0.05, sched="const", betas=(0.9, 0.999), param="pixel"):
    x = x0.clone()
    if param == "pixel":
        p = x.clone().requires_grad_(True)
        to_img = lambda p: p  # noqa: E731
        from_img = to_img
    else:  # decorrelated: 1/f-scaled Fourier coefficients
        h, w = x.shape[-2:]
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        scale = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))
        scale = scale / scale.mean()
        def to_img(p):
            return torch.fft.irfft2(torch.view_as_complex(p) * scale, s=(h, w), norm="ortho")
        def from_img(z):
            return torch.view_as_real(torch.fft.rfft2(z, norm="ortho") / scale).contiguous()
        p = from_img(x.clamp(0, 1)).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, betas=betas)
    best = torch.full((x.shape[0],), math.inf)
    out = []
    for t in range(steps + 1):
        last = t == steps
        with torch.set_grad_enabled(not last):
            img = to_img(p)
            r = (forward(img) - target).norm(dim=1) / tn
        best = torch.minimum(best, r.detach())
        out.append(float(best.median()))
        if last:
            break
        opt.zero_grad()
        r.sum().backward()
        if sched == "cos":
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / steps))
        opt.step()
        with torch.no_grad():
            p.copy_(from_img(to_img(p).clamp(0, 1)))
    return out


def curve_ngd(forward, target, tn, x0, steps, step=0.5, adaptive=False, momentum=0.0):
    x = x0.clone()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    best = torch.full((b,), math.inf)
    size = torch.full((b,), step)
    v = torch.zeros_like(x)
    out = []
    for t in range(steps + 1):
        last = t == steps
        x.requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            r = (forward(x) - target).norm(dim=1) / tn
        rd = r.detach()
        improved = rd < best
        best = torch.minimum(best, rd)
        out.append(float(best.median()))
        if last:
            break
        (g,) = torch.autograd.grad(r.sum(), x)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
        if adaptive and t:
            size = torch.where(improved, (size * 1.5).clamp_max(8 * step), size * 0.5)
        v = momentum * v + g
        x = (x.detach() - size.view(view) * v).clamp(0, 1)
    return out


_METHODS = {
    "fixed": lambda f, y, tn, x0, k: curve_ngd(f, y, tn, x0, k),
    "adaptive": lambda f, y, tn, x0, k: curve_ngd(f, y, tn, x0, k, adaptive=True),
    "adam.05": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.05),
    "adam.1": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.1),
    "adam.05cos": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.05, "cos"),
    "adam.1cos": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.1, "cos"),
    "adam.02cos": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.02, "cos"),
    "fft.05": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.05, param="fft"),
    "fft.02": lambda f, y, tn, x0, k: curve_adam(f, y, tn, x0, k, 0.02, param="fft"),
    "mom.9": lambda f, y, tn, x0, k: curve_ngd(f, y, tn, x0, k, step=0.5, momentum=0.9),
}
METHODS = (os.environ.get("METHODS") or "fixed,adaptive,adam.05,adam.05cos").split(",")


def main():
    which = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    n = 32
    torch.manual_seed(0)
    if which == "lite0":
        m = ftlens.load_model("ftlens:efficientnet-lite0-in1k", image_size=32)
        x, _ = sample_images(get_dataset("mnist-5k", "test", image_size=32), n)
        layers = sys.argv[3].split(",") if len(sys.argv) > 3 else ["blocks.1", "blocks.3", "blocks.5"]
    elif which == "vitb32":
        n = 8
        m = ftlens.load_model("timm:vit_base_patch32_224")
        x, _ = sample_images(get_dataset("natural-patches", "test", image_size=224), n)
        layers = sys.argv[3].split(",")
    elif which.startswith("runs/") or "@" in which:
        m = ftlens.load_model(which)
        x, _ = sample_images(get_dataset("digits", "test", image_size=m.input_size[1:]), n)
        layers = sys.argv[3].split(",")
    m.module.eval()
    for p in m.module.parameters():
        p.requires_grad_(False)
    x0 = start_images(x, "noise", 0)
    for layer in layers:
        def forward(z, layer=layer):
            return m.forward_layers(z, [layer], clone=False)[layer].flatten(1).float()
        with torch.no_grad():
            target = forward(x)
        tn = target.norm(dim=1)
        for name in METHODS:
            fn = _METHODS[name]
            t0 = time.perf_counter()
            c = fn(forward, target, tn, x0, steps)
            pts = [c[k] for k in (25, 50, 100, 150, 300, 500) if k < len(c)]
            print(f"{layer:10s} {name:12s} " + " ".join(f"{v:.3f}" for v in pts) + f"  ({time.perf_counter()-t0:.1f}s)",
                  flush=True)




def curve_gn(forward, target, tn, x0, outer, cg_iters=4, lam=1e-3):
    """Gauss-Newton / Levenberg-Marquardt with matrix-free per-row CG; returns (best medians per outer step)."""
    x = x0.clamp(0, 1).clone()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    best = torch.full((b,), math.inf)
    out = []

    def dot(a, c):
        return (a * c).flatten(1).sum(1)

    for k in range(outer + 1):
        x.requires_grad_(True)
        f = forward(x)
        res = (f - target) / tn[:, None]  # relative residual vector per row
        rn = res.detach().norm(dim=1)
        best = torch.minimum(best, rn)
        out.append(float(best.median()))
        if k == outer:
            break
        u = torch.zeros_like(res, requires_grad=True)
        (jtu,) = torch.autograd.grad(res, x, grad_outputs=u, create_graph=True)
        (grad,) = torch.autograd.grad(res, x, grad_outputs=res.detach(), retain_graph=True)  # J^T r

        def jtj(v, jtu=jtu, u=u, res=res, x=x):
            (jv,) = torch.autograd.grad(jtu, u, grad_outputs=v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(res, x, grad_outputs=jv, retain_graph=True)
            return jtjv + lam * v

        # CG on (J^T J + lam) d = -J^T r, per row
        d = torch.zeros_like(x)
        r_ = -grad
        p = r_.clone()
        rr = dot(r_, r_)
        for _ in range(cg_iters):
            ap = jtj(p)
            alpha = rr / dot(p, ap).clamp_min(1e-30)
            d = d + alpha.view(view) * p
            r_ = r_ - alpha.view(view) * ap
            rr_new = dot(r_, r_)
            p = r_ + (rr_new / rr.clamp_min(1e-30)).view(view) * p
            rr = rr_new
        x = (x.detach() + d).clamp(0, 1)
    return out


def gn_main():
    n = 32
    m = ftlens.load_model("ftlens:efficientnet-lite0-in1k", image_size=32)
    x, _ = sample_images(get_dataset("mnist-5k", "test", image_size=32), n)
    m.module.eval()
    for p in m.module.parameters():
        p.requires_grad_(False)
    x0 = start_images(x, "noise", 0)
    layer = sys.argv[2]

    def forward(z):
        return m.forward_layers(z, [layer], clone=False)[layer].flatten(1).float()
    with torch.no_grad():
        target = forward(x)
    tn = target.norm(dim=1)
    t0 = time.perf_counter()
    curve_adam(forward, target, tn, x0, 20, 0.05)
    per_pass = (time.perf_counter() - t0) / 21
    for cg, lam, outer in [(4, 1e-3, 10), (8, 1e-3, 6), (4, 1e-1, 10), (4, 1e-2, 10)]:
        t0 = time.perf_counter()
        c = curve_gn(forward, target, tn, x0, outer, cg, lam)
        dt = time.perf_counter() - t0
        print(f"{layer} GN cg={cg} lam={lam}: " + " ".join(f"{v:.3f}" for v in c)
              + f"  time = {dt / per_pass:.0f} pass-equivalents", flush=True)


if __name__ == "__main__":
    gn_main() if sys.argv[1] == "gn" else main()
