"""What residual still gives a stable STIR: learning and forgetting against the residual reached.

    python bench/bench_gate.py [lite0|vit RUN@EPOCH]

Lite0: ImageNet EfficientNet-Lite0 at 32 px (real weights) against a copy whose ``blocks.4``
weights are perturbed (20% of each tensor's std), 32 real MNIST digits x 3 seeds, layers
blocks.1, blocks.3, blocks.5. ViT: a demo run's pretrained and finetuned checkpoints
(``runs/demo/runs/pretrain@last`` vs ``runs/demo/runs/ft@last``). The inversions run with the
default schedule (Adam) and budgets of 5 to 300 steps, without early stopping, so the residual
is the only thing that changes. Prints, per budget and layer: the worst residual of the layer
(what the gate reads), learning and forgetting with their 95% intervals, and their distance
to the values of the largest budget.
"""

from __future__ import annotations

import sys

import torch

import ftlens
from ftlens.data import get_dataset, sample_images
from ftlens.invariance import compare

BUDGETS = (5, 10, 20, 40, 80, 150, 300)


def _models():
    if len(sys.argv) > 2 and sys.argv[1] == "vit":
        pt = ftlens.load_model(sys.argv[2].replace("ft@", "pretrain@"))
        ft = ftlens.load_model(sys.argv[2])
        x, _ = sample_images(get_dataset("digits", "test", image_size=pt.input_size[1:]), 32)
        return pt, ft, x, ["blocks.2", "blocks.6", "blocks.11"]
    pt = ftlens.load_model("ftlens:efficientnet-lite0-in1k", image_size=32)
    ft = pt.copy()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ft.module.named_parameters():
            if name.startswith("blocks.4") and p.dim() > 1:
                p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g))
    ft.refresh_fingerprint()
    x, _ = sample_images(get_dataset("mnist-5k", "test", image_size=32), 32)
    return pt, ft, x, ["blocks.1", "blocks.3", "blocks.5"]


def main() -> None:
    pt, ft, x, layers = _models()
    rows = {}
    for steps in BUDGETS:
        cmp = compare(pt, ft, x, layers=layers, seeds=3, n_images=len(x), steps=steps, cache=None,
                      progress=False, schedule={"patience": None, "stop_residual": None})
        rows[steps] = cmp.per_layer
    final = rows[BUDGETS[-1]]
    print("steps layer     residual_max  learning [95%]           forgetting [95%]         |d learning| |d forgetting|")
    for steps, pl in rows.items():
        for layer in layers:
            r = pl.loc[layer]
            print(f"{steps:5d} {layer:9s} {r.residual_max:12.3f}  "
                  f"{r.learning:.3f} [{r.learning_lo:.3f}, {r.learning_hi:.3f}]   "
                  f"{r.forgetting:.3f} [{r.forgetting_lo:.3f}, {r.forgetting_hi:.3f}]   "
                  f"{abs(r.learning - final.loc[layer, 'learning']):.3f}        "
                  f"{abs(r.forgetting - final.loc[layer, 'forgetting']):.3f}", flush=True)


if __name__ == "__main__":
    main()
