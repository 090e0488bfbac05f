"""The training loop: data batches, augmentation, optimiser and schedule, one epoch, evaluation.

Determinism: everything random in epoch ``e`` (shuffling, crops, flips, dropout) is drawn from
generators seeded by ``(seed, e)`` (:func:`epoch_seed`), so an epoch's result depends only on
the weights and optimiser state it starts from, which is what makes resumption exact. On the
CPU two runs with the same seed give bit-identical weights.

The loop keeps running sums on the device and synchronises with the host once per epoch.
Single process: plain PyTorch (bf16 autocast on CUDA). Several processes (``WORLD_SIZE > 1``,
e.g. ``accelerate launch -m ftlens finetune ...``): Hugging Face Accelerate wraps the model in
DDP, each rank takes every ``world``-th example of the shared permutation and the batch size
is split between ranks, so the global batch stays ``batch_size``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ftlens.errors import ConfigError
from ftlens.finetune.tasks import batch_stats, task_loss

# --------------------------------------------------------------------------- seeds


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for ``stream`` of ``epoch`` of a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream), 0xF7]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# --------------------------------------------------------------------------- runtime


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a clear error when it asks for a GPU that is not there."""
    from ftlens.errors import FtlensError

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FtlensError(
            f"device {str(device)!r} was asked for but this machine has no CUDA GPU; run on a GPU machine "
            "(the paper's configs expect one) or set device: cpu / --device cpu"
        )
    return dev


class Runtime:
    """Where and how the loop runs: one process (plain torch) or several (Accelerate + DDP)."""

    def __init__(self, device: str = "auto", *, distributed: bool | None = None) -> None:
        if distributed is None:
            distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = None
        if distributed:
            from accelerate import Accelerator

            cpu = device == "cpu" or not torch.cuda.is_available()
            self.accelerator = Accelerator(mixed_precision="no" if cpu else "bf16", cpu=cpu)
            self.device = self.accelerator.device
            self.world_size = self.accelerator.num_processes
            self.rank = self.accelerator.process_index
        else:
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = check_device(device)
            self.world_size = 1
            self.rank = 0
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        """Wrap for DDP (several processes); a no-op in one process."""
        if self.accelerator is None or optimizer is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        if self.accelerator is None:
            return model
        return self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(params, max_norm)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.accelerator is None:
            return t
        return self.accelerator.reduce(t, reduction="sum")

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def shard(self, order: torch.Tensor, *, equal: bool = False) -> torch.Tensor:
        """This rank's part of a permutation shared by every rank.

        ``equal``: drop the last ``len(order) % world`` entries so that every rank gets as many
        examples (hence as many optimiser steps: DDP needs that); the permutation changes every
        epoch, so no example is always left out.
        """
        if self.world_size == 1:
            return order
        if equal:
            order = order[: len(order) - len(order) % self.world_size]
        return order[self.rank :: self.world_size]


# --------------------------------------------------------------------------- data


class DataSource:
    """One split: held in memory (``images``/``labels`` tensors) or read from a Dataset.

    Images are float32 ``(n, C, H, W)`` in [0, 1]. ``indices`` restricts to a subset.
    """

    def __init__(self, dataset, indices: torch.Tensor | None = None, *, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.name = getattr(dataset, "name", type(dataset).__name__)
        self.num_classes = int(getattr(dataset, "num_classes", 0))
        self.num_workers = int(num_workers)
        total = len(dataset)
        self.indices = torch.arange(total) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        if hasattr(dataset, "tensors") and getattr(dataset, "in_memory", True):
            images, labels = dataset.tensors()
            self.images = images[self.indices] if indices is not None else images
            self.labels = labels[self.indices] if indices is not None else labels

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor, name: str = "tensors",
                     num_classes: int = 0) -> DataSource:
        self = cls.__new__(cls)
        self.dataset, self.name, self.num_classes, self.num_workers = None, name, int(num_classes), 0
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        self.indices = torch.arange(len(images))
        return self

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def to(self, device: torch.device) -> DataSource:
        """Move in-memory tensors to ``device`` once (small sets on a GPU: no copies per batch)."""
        if self.images is not None and device.type != "cpu":
            nbytes = self.images.element_size() * self.images.numel()
            if nbytes < 2 * 1024**3:
                self.images = self.images.to(device)
                self.labels = self.labels.to(device)
        return self

    def batches(self, batch_size: int, order: torch.Tensor | None = None, *,
                device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` batches in ``order`` (positions into this source; default: in turn)."""
        order = torch.arange(len(self)) if order is None else order
        if self.images is not None:
            idx_all = order.to(self.images.device)
            for start in range(0, len(order), batch_size):
                idx = idx_all[start : start + batch_size]
                x, y = self.images[idx], self.labels[idx]
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                yield x, y
            return
        from torch.utils.data import DataLoader, Subset

        subset = Subset(self.dataset, self.indices[order].tolist())
        pin = device is not None and device.type == "cuda"
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=pin, persistent_workers=False)
        for x, y in loader:
            y = torch.as_tensor(y, dtype=torch.long)
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield x, y

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, and a random horizontal flip (``flip``).

    ``x`` is ``(n, C, H, W)``; the random numbers come from ``generator`` (on the CPU, so the
    result is the same on every device). Returns a new tensor of the same shape.
    """
    n, c, h, w = x.shape
    flips = torch.rand(n, generator=generator) < 0.5
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy, ox = offsets[:, 0].to(x.device), offsets[:, 1].to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if not flip:
        return x
    flips = flips.to(x.device)[:, None, None, None]
    return torch.where(flips, x.flip(-1), x)


# --------------------------------------------------------------------------- optimiser


def make_optimizer(params: Sequence[nn.Parameter], name: str, *, lr: float, momentum: float,
                   weight_decay: float, betas: Sequence[float]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay: the paper's default), Adam or AdamW over ``params``."""
    params = list(params)
    if not params:
        raise ConfigError("no trainable parameters in this phase")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}")


@dataclass
class WarmupCosine:
    """LR factor at optimiser step ``s``: linear warm-up over ``warmup`` steps to 1, then a
    cosine from 1 to 0 over the remaining ``total - warmup`` steps."""

    total: int
    warmup: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        rest = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / rest)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(total_steps), int(warmup_steps)))


# --------------------------------------------------------------------------- epochs


@dataclass
class EpochSettings:
    task: str
    batch_size: int
    augment: bool
    padding: int
    frozen_backbone: bool
    label_smoothing: float
    grad_clip: float | None
    flip: bool = True
    penalty: Callable[[], torch.Tensor] | None = None  # weighted regulariser (L2-SP)
    model_loss: bool = False  # the model computes its loss: model(x, targets=y) -> (loss, logits) (FLYP)


def train_epoch(
    model: nn.Module,
    source: DataSource,
    optimizer: torch.optim.Optimizer,
    scheduler,
    params: Sequence[nn.Parameter],
    settings: EpochSettings,
    runtime: Runtime,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass over ``source``; returns mean ``train_loss`` (the task loss), ``train_acc``
    (classification), ``penalty`` (mean weighted regulariser, when one is set) and ``lr`` (of
    the last step)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(epoch_seed(seed, 0, 1))  # dropout / drop-path of this epoch
    order = runtime.shard(torch.randperm(len(source), generator=gen), equal=True)
    per_rank = max(1, settings.batch_size // runtime.world_size)
    device = runtime.device
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, correct (classification)
    count = steps = 0
    penalty_sum = torch.zeros((), device=device, dtype=torch.float64)
    lr = optimizer.param_groups[0]["lr"]
    for x, y in source.batches(per_rank, order, device=device):
        if settings.augment:
            x = augment_batch(x, gen, settings.padding, settings.flip)
        with runtime.autocast():
            if settings.model_loss:
                loss, out = model(x, frozen_backbone=settings.frozen_backbone, targets=y)
            else:
                out = model(x, frozen_backbone=settings.frozen_backbone)
                loss = task_loss(settings.task, out, x, y, settings.label_smoothing)
        total = loss
        if settings.penalty is not None:
            pen = settings.penalty()
            total = loss + pen
            penalty_sum += pen.detach()
        optimizer.zero_grad(set_to_none=True)
        runtime.backward(total)
        if settings.grad_clip is not None:
            runtime.clip_grad_norm(params, settings.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            n = x.shape[0]
            count += n
            steps += 1
            sums[0] += loss.detach().double() * n
            if settings.task == "classification":
                sums[1] += (out.detach().argmax(1) == y).sum()
        if on_step is not None:
            on_step()
    sums = runtime.reduce_sum(torch.cat([sums, torch.tensor([float(count)], device=device, dtype=torch.float64)]))
    penalty_sum = runtime.reduce_sum(penalty_sum) / runtime.world_size
    loss_sum, metric_sum, count = (float(v) for v in sums.cpu())
    count = max(count, 1.0)
    out_metrics = {"lr": float(lr), "train_loss": loss_sum / count}
    if settings.task == "classification":
        out_metrics["train_acc"] = metric_sum / count
    if settings.penalty is not None:
        out_metrics["penalty"] = float(penalty_sum) / max(steps, 1)
    return out_metrics


def evaluate(model: nn.Module, source: DataSource, task: str, runtime: Runtime, batch_size: int) -> dict[str, float]:
    """Metrics of ``source`` in eval mode without augmentation (batched, ``inference_mode``).

    classification: ``{"loss": mean cross-entropy, "acc"}``; reconstruction: ``{"l1": mean
    absolute error per pixel, "psnr": mean per-image PSNR in dB}``.
    """
    model = runtime.unwrap(model)
    model.eval()
    device = runtime.device
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    order = runtime.shard(torch.arange(len(source)))
    with torch.inference_mode(), runtime.autocast():
        for x, y in source.batches(batch_size, order, device=device):
            out = model(x)
            stats = batch_stats(task, out, x, y).double()
            sums[:2] += stats
            sums[2] += x.shape[0]
    sums = runtime.reduce_sum(sums)
    a, b, count = (float(v) for v in sums.cpu())
    count = max(count, 1.0)
    if task == "classification":
        return {"loss": a / count, "acc": b / count}
    return {"l1": a / count, "psnr": b / count}
