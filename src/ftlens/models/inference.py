"""A module for inference only: each BatchNorm folded into the convolution that feeds it.

In eval mode ``bn(conv(x))`` is one convolution with rescaled weights and a bias
(:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`), which saves a pass over every feature map:
on a CPU a ResNet's forward is about a quarter faster. Which convolution feeds which BatchNorm is
read from one forward (the BatchNorm's input *is* the convolution's output); only plain
``nn.Conv2d`` / ``nn.BatchNorm2d`` pairs with running statistics are folded (timm's
``BatchNormAct2d`` carries its activation and is left alone). Layer outputs change only by float
rounding; callers compare them on real inputs before relying on the copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ftlens.models.families.adapter import shared_copy

__all__ = ["ChannelsLastMaxPool2d", "channels_last_pools", "fold_batchnorm"]


def _pairs(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` where the BatchNorm's input is the convolution's output."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept alive: ids stay unique
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def conv_hook(name):
        def hook(_m, _inputs, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                outputs[id(out)] = (name, out)
        return hook

    def bn_hook(name):
        def hook(_m, inputs):
            calls[name] = calls.get(name, 0) + 1
            source = outputs.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
            if source is not None:
                pairs.append((source[0], name))
        return hook

    for name, m in module.named_modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None:
            hooks.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    convs = [c for c, _ in pairs]
    return [(c, b) for c, b in pairs if calls.get(c) == 1 and calls.get(b) == 1 and convs.count(c) == 1]


def fold_batchnorm(module: nn.Module, example: torch.Tensor, share: bool = False) -> tuple[nn.Module, int]:
    """``(copy, folds)``: a copy of ``module`` in eval mode with every BatchNorm fed by a
    convolution (in a forward of ``example``, a normalised input batch) folded into it and
    replaced by ``nn.Identity``; ``folds`` is how many. ``module`` itself is not changed.

    The folded convolutions get new weights and biases; the folded pairs' old tensors are never
    copied. ``share``: every other tensor is the original's too (a module tree of its own around
    them: for a copy that is only run, never moved or converted); else every other tensor is copied."""
    pairs = _pairs(module, example)
    if share:
        folded = shared_copy(module)
    else:
        replaced = {id(t): t for c, b in pairs for m in (module.get_submodule(c), module.get_submodule(b))
                    for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}
        folded = copy.deepcopy(module, memo=dict(replaced))  # the pairs' tensors shared, and replaced below
    folded.eval()
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        fused = copy.copy(conv)  # a module of its own whose parameters are new tensors
        fused._parameters = {"weight": weight.requires_grad_(False), "bias": bias.requires_grad_(False)}
        folded.set_submodule(conv_name, fused)
        folded.set_submodule(bn_name, nn.Identity())
    return folded, len(pairs)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a channels-last copy of its input and returns the usual layout:
    the same values (a maximum is exact), and on a CPU, where the NCHW kernel is slow, about 5x
    faster including both conversions (a ResNet's forward about 5% faster)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def channels_last_pools(module: nn.Module) -> int:
    """Replace every plain ``nn.MaxPool2d`` of ``module`` (a copy of one's own: changed in place)
    by a :class:`ChannelsLastMaxPool2d` with the same settings; returns how many."""
    names = [n for n, m in module.named_modules() if type(m) is nn.MaxPool2d and not m.return_indices]
    for name in names:
        pool = module.get_submodule(name)
        fast = ChannelsLastMaxPool2d.__new__(ChannelsLastMaxPool2d)
        fast.__dict__ = {**pool.__dict__, "_forward_hooks": pool._forward_hooks.copy()}
        module.set_submodule(name, fast)
    return len(names)
