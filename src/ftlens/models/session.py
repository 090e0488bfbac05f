"""ftlens's working state on a model, for the duration of its work only.

:func:`working_state` puts a module in ``eval()`` mode, turns ``requires_grad`` off on its
parameters and, when asked, moves its tensors to a device and stores 4-d weights channels-last;
on exit every module's mode, every parameter's flag and every tensor (the very storage it had)
are put back. The parameter objects are never replaced (their ``.data`` is), so an optimizer
that holds them keeps working, and a model in the middle of training goes on training.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["has_depthwise", "is_cnn", "one_thread", "paused_gc", "working_state"]


def is_cnn(module: nn.Module) -> bool:
    """A convolutional network (any ``Conv2d``) without a patch embedding (ViT, Swin: one convolution).

    On CPU, channels-last weights make the depthwise and 1x1 convolutions of such networks 2-3x
    faster, forward and backward (EfficientNet-Lite0 at 32 px: training steps 2.2x, inversion
    steps 2.4-3x).
    """
    return not hasattr(module, "patch_embed") and any(isinstance(m, nn.Conv2d) for m in module.modules())


def has_depthwise(module: nn.Module) -> bool:
    """Whether a CNN has depthwise convolutions (EfficientNet, MobileNet, ConvNeXt), the ones that
    channels-last speeds up on a CPU; a ResNet's dense 3x3 convolutions run about 15% slower
    channels-last in a forward there (resnet18/34 at 32 px, one thread)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in module.modules())


def _placed(t: torch.Tensor, device: torch.device | None, channels_last: bool) -> torch.Tensor:
    out = t
    if device is not None and t.device != device:
        out = out.to(device)
    if channels_last and out.dim() == 4 and not out.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@contextlib.contextmanager
def working_state(module: nn.Module, *, device: torch.device | None = None,
                  channels_last: bool = False) -> Iterator[None]:
    """``module`` in eval mode, without parameter gradients, on ``device`` (None: where it is)
    and with channels-last 4-d weights if ``channels_last``, for the duration; all restored after."""
    modes = [(m, m.training) for m in module.modules()]
    grads = [p for p in module.parameters() if p.requires_grad]
    params: list[tuple[nn.Parameter, torch.Tensor]] = []
    buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        if device is not None or channels_last:
            seen: set[int] = set()
            for m in module.modules():
                for p in m._parameters.values():
                    if p is None or id(p) in seen:
                        continue
                    seen.add(id(p))
                    new = _placed(p.data, device, channels_last)
                    if new is not p.data:
                        params.append((p, p.data))
                        p.data = new
                for name, b in m._buffers.items():
                    if b is None:
                        continue
                    new = _placed(b, device, False)
                    if new is not b:
                        buffers.append((m, name, b))
                        m._buffers[name] = new
        if any(training for _, training in modes):
            module.eval()
        for p in grads:
            p.requires_grad_(False)
        yield
    finally:
        for p in grads:
            p.requires_grad_(True)
        for m, training in modes:
            m.training = training
        for m, name, b in reversed(buffers):
            m._buffers[name] = b
        for p, data in reversed(params):
            p.data = data


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op CPU thread for the duration (restored after): for forwards of one or a few
    images (a trace, a check), which parallel threads only slow down, and on a busy machine by
    a thread wake-up per operation."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the duration (restored after): for a burst
    of object creation (copying a module tree), during which a full collection over a heap of
    torch, pandas and two models costs a tenth of a second for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
