"""Tasks: what the model predicts, its loss and its metrics.

- ``classification``: timm's own head (``model.reset_classifier(num_classes)``: a Linear on the
  pre-logit features, CLS after the final norm for a ViT), cross-entropy.
- ``reconstruction``: a decoder from the ViT patch tokens (ALGORITHMS.md §5): drop the prefix
  tokens (CLS, registers), reshape the ``(n, gh*gw, d)`` tokens to ``(n, d, gh, gw)``,
  ``Conv2d(d, ph*pw*3, 1)``, pixel shuffle back to ``(n, 3, gh*ph, gw*pw)``; L1 loss against the
  input image in [0, 1]. Its weights are stored in checkpoints as ``task_head.*`` extras.

:class:`TaskModel` bundles normalisation, backbone and head in one ``nn.Module`` (what the
optimiser, DDP and the training loop see). Images go in as [0, 1] pixels; they are clamped and
normalised inside, as in :class:`ftlens.models.ModelWrapper`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftlens.errors import CheckpointError, ConfigError, FtlensError
from ftlens.models import TASK_HEAD_PREFIX, ModelWrapper


class PatchDecoder(nn.Module):
    """Patch tokens -> image: ``Conv2d(d, ph*pw*C, 1)`` then pixel shuffle.

    Args:
        embed_dim: token width ``d``.
        grid_size: ``(gh, gw)`` patches per column and row.
        patch_size: ``(ph, pw)`` pixels per patch.
        num_prefix_tokens: tokens before the patch tokens (CLS, registers) to drop.
        channels: output image channels.

    Input ``(n, prefix + gh*gw, d)`` tokens; output ``(n, C, gh*ph, gw*pw)`` (unbounded; the
    target lives in [0, 1]).
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: Sequence[int],
        patch_size: Sequence[int],
        num_prefix_tokens: int = 1,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.channels = int(channels)
        ph, pw = self.patch_size
        self.proj = nn.Conv2d(int(embed_dim), ph * pw * self.channels, kernel_size=1)
        self.shuffle = nn.PixelShuffle(ph) if ph == pw else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid_size
        x = tokens[:, self.num_prefix_tokens :]
        n, t, d = x.shape
        if t != gh * gw:
            raise ConfigError(
                f"the decoder expects {gh}x{gw}={gh * gw} patch tokens after {self.num_prefix_tokens} "
                f"prefix token(s), got {t}; the input size must match the model's"
            )
        x = self.proj(x.transpose(1, 2).reshape(n, d, gh, gw))
        if self.shuffle is not None:
            return self.shuffle(x)
        # rectangular patches: the same channel order as PixelShuffle (c, i, j) -> (c, h*ph+i, w*pw+j)
        ph, pw = self.patch_size
        x = x.reshape(n, self.channels, ph, pw, gh, gw).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, self.channels, gh * ph, gw * pw)


def make_decoder(wrapper: ModelWrapper) -> PatchDecoder:
    """A :class:`PatchDecoder` that fits a timm ViT's patch grid (needs ``patch_embed``)."""
    module = wrapper.module
    pe = getattr(module, "patch_embed", None)
    if not wrapper.is_vit or pe is None or getattr(pe, "grid_size", None) is None:
        raise FtlensError(
            f"task reconstruction decodes ViT patch tokens, but {wrapper.name} is not a timm "
            "VisionTransformer; use task classification for this model"
        )
    embed_dim = int(getattr(module, "embed_dim", getattr(module, "num_features", 0)))
    return PatchDecoder(
        embed_dim,
        grid_size=pe.grid_size,
        patch_size=pe.patch_size,
        num_prefix_tokens=int(getattr(module, "num_prefix_tokens", 1)),
        channels=wrapper.input_size[0],
    )


def reset_classifier(wrapper: ModelWrapper, num_classes: int) -> None:
    """Replace the model's head by a fresh ``Linear(num_features, num_classes)`` (0: none).

    Uses timm's own ``reset_classifier`` (the global torch RNG draws the init: seed it first).
    The wrapper's recorded architecture is updated so that checkpoints rebuild with this head.
    """
    module = wrapper.module
    if not hasattr(module, "reset_classifier") or not hasattr(module, "get_classifier"):
        raise FtlensError(
            f"{wrapper.name} has no timm classifier (reset_classifier/get_classifier); finetuning "
            "needs a timm model (timm:NAME, ftlens:PRESET or a checkpoint of one)"
        )
    module.reset_classifier(int(num_classes))
    wrapper.source = dataclasses.replace(
        wrapper.source, kwargs={**wrapper.source.kwargs, "num_classes": int(num_classes)}
    )
    wrapper.refresh_modules()


def classifier_prefix(module: nn.Module) -> str:
    """Name prefix (``"head."``) of the parameters of a timm model's classifier."""
    head = module.get_classifier()
    for name, sub in module.named_modules():
        if sub is head:
            return f"{name}." if name else ""
    raise FtlensError("could not locate the classifier module of the model")


class TaskModel(nn.Module):
    """Normalisation + backbone + task head, as one module for training.

    ``forward(x)`` takes [0, 1] images ``(n, C, H, W)`` and returns logits ``(n, classes)``
    (classification) or the reconstructed image ``(n, C, H, W)`` (reconstruction).
    With ``frozen_backbone=True`` the backbone runs without autograd (head probing).
    """

    def __init__(self, wrapper: ModelWrapper, task: str, decoder: PatchDecoder | None = None) -> None:
        super().__init__()
        self.task = task
        self.backbone = wrapper.module
        self.decoder = decoder
        if task == "reconstruction" and decoder is None:
            raise ConfigError("reconstruction needs a decoder")
        self.register_buffer("mean", torch.tensor(wrapper.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(wrapper.std).view(1, -1, 1, 1), persistent=False)
        self.head_prefix = "decoder." if task == "reconstruction" else "backbone." + classifier_prefix(self.backbone)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.mean.numel():  # a text model: tokens are not normalised
            return x
        return (x.clamp(0.0, 1.0) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, frozen_backbone: bool = False) -> torch.Tensor:
        x = self.normalize(x)
        if self.task == "classification":
            if not frozen_backbone:
                return self.backbone(x)
            with torch.no_grad():
                feats = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
            return self.backbone.get_classifier()(feats)
        if frozen_backbone:
            with torch.no_grad():
                tokens = self.backbone.forward_features(x)
        else:
            tokens = self.backbone.forward_features(x)
        return self.decoder(tokens)

    #: True when the head is computed (FLYP: from the text tower) rather than trained.
    derived_head = False

    def before_evaluate(self) -> None:
        """Called before every evaluation (a no-op; FLYP recomputes its zero-shot head)."""

    def is_head(self, name: str) -> bool:
        """Whether parameter ``name`` (of this module) belongs to the task head."""
        return name.startswith(self.head_prefix)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if self.is_head(n)]

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not self.is_head(n)]

    # ------------------------------------------------------------------ checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """The decoder's weights as ``task_head.*`` extras for :func:`save_checkpoint`."""
        if self.decoder is None:
            return {}
        return {TASK_HEAD_PREFIX + k: v for k, v in self.decoder.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a checkpoint's tensors (backbone keys + ``task_head.*``) strictly."""
        extra = {k[len(TASK_HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(TASK_HEAD_PREFIX)}
        backbone = {k: v for k, v in state.items() if not k.startswith(TASK_HEAD_PREFIX)}
        try:
            self.backbone.load_state_dict(backbone, strict=True)
            if self.decoder is not None:
                self.decoder.load_state_dict(extra, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {source} does not fit this run's model ({exc}); was it written by a run "
                "with another model or task? Use a new --out directory"
            ) from exc


# --------------------------------------------------------------------------- losses and metrics


def task_loss(task: str, output: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean loss of a batch: cross-entropy (classification) or L1 to the input (reconstruction)."""
    if task == "classification":
        return F.cross_entropy(output.float(), labels, label_smoothing=label_smoothing)
    return F.l1_loss(output.float(), images.float())


def batch_stats(task: str, output: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-batch sums kept on the device (no host sync).

    classification: ``[sum cross-entropy, correct]``; reconstruction: ``[sum per-image L1,
    sum per-image PSNR in dB (output clamped to [0, 1], peak 1)]``.
    """
    output = output.float()
    if task == "classification":
        ce = F.cross_entropy(output, labels, reduction="sum")
        correct = (output.argmax(1) == labels).sum().to(ce.dtype)
        return torch.stack([ce, correct])
    target = images.float()
    l1 = (output - target).abs().flatten(1).mean(1).sum()
    mse = (output.clamp(0.0, 1.0) - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = (-10.0 * torch.log10(mse)).sum()
    return torch.stack([l1, psnr])
