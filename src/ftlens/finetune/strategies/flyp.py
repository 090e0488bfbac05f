"""FLYP, "finetune like you pretrain" (Goyal et al., CVPR 2023; ALGORITHMS.md §7).

Both towers of a CLIP-style model (``clip:`` specs, :mod:`ftlens.models.families.clip`) train with CLIP's
contrastive loss between the batch's image embeddings and the class-prompt text embeddings of
the batch's labels; the model is evaluated (and checkpointed) as a zero-shot classifier whose
head is recomputed from the finetuned text tower before every evaluation.

Classes that repeat within a batch (the choice made here): the batch's distinct classes are the
text side, each encoded once (the template average of the zero-shot head, with gradients).
Image -> text: cross-entropy over the batch's distinct classes. Text -> image: for a class, the
mean over its images of ``-log softmax`` over the batch's images (every image of the class is a
positive; none is a false negative). The loss is the mean of the two directions; with one image
per class it is exactly CLIP's symmetric loss. The logit scale ``exp(logit_scale)`` trains too
(capped at 100, as in CLIP).

Checkpoints: the image tower with its zero-shot head (what ``compare``/``load_model`` read), and
the text tower as ``task_head.text.*`` tensors. WiSE-FT of a FLYP run interpolates both towers
and recomputes the head from the interpolated text tower (with the run's prompts).

``train_acc`` of a FLYP epoch is the accuracy among each batch's classes; ``test_acc`` is the
zero-shot accuracy over all classes. With several processes the loss is computed per process
(its share of the batch), without gathering embeddings across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ftlens.errors import CheckpointError, ConfigError, FtlensError
from ftlens.finetune.strategies.base import Strategy
from ftlens.finetune.tasks import TaskModel, reset_classifier
from ftlens.models import TASK_HEAD_PREFIX, ModelWrapper
from ftlens.models.families.clip.towers import TEXT_KEY, load_tokenizer
from ftlens.models.families.clip.zero_shot import (
    check_image_text,
    class_embeddings,
    class_prompts,
    image_text_of,
    install_head,
)


class Flyp(Strategy):
    name = "flyp"
    summary = "finetune both towers of an image-text model with CLIP's contrastive loss"
    model_loss = True
    checkpoint_options = ("prompts",)  # the zero-shot head of its checkpoints uses the run's prompts

    def check(self, cfg):
        if cfg.task != "classification":
            raise ConfigError("strategy flyp is for classification (class prompts); use --task classification")

    def build_task_model(self, cfg, wrapper, classes):
        return build_task_model(cfg, wrapper, classes)

    def checkpoint_model(self, cfg, wrapper, task, classes):
        # both towers are interpolated; the head is the zero-shot head of the interpolated text tower
        return FlypTaskModel(wrapper, classes, cfg.prompts)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, targets: torch.Tensor,
                     scale: torch.Tensor | float) -> torch.Tensor:
    """FLYP's loss for one batch (a scalar).

    Args:
        image: ``(n, d)`` unit image embeddings.
        text: ``(u, d)`` unit embeddings of the batch's distinct classes.
        targets: ``(n,)`` long, the column of each image's class in ``text``.
        scale: the temperature ``exp(logit_scale)``.

    ``s = scale * image @ text.T``; ``(CE(s, targets) + mean_c mean_{i in c} -log softmax_i(s[:, c])) / 2``.
    """
    dtype = torch.promote_types(image.dtype, torch.float32)  # float32 at least (bf16 under autocast)
    logits = scale * image.to(dtype) @ text.to(dtype).t()  # (n, u)
    image_to_text = F.cross_entropy(logits, targets)
    positives = (targets[None, :] == torch.arange(text.shape[0], device=targets.device)[:, None]).to(logits.dtype)
    log_prob = F.log_softmax(logits.t(), dim=1)  # (u, n): each class over the batch's images
    text_to_image = (-(log_prob * positives).sum(1) / positives.sum(1).clamp_min(1)).mean()
    return 0.5 * (image_to_text + text_to_image)


class FlypTaskModel(TaskModel):
    """Image tower + zero-shot head (the backbone) and the text tower (``text``).

    ``forward(x)`` gives zero-shot logits ``(n, k)`` with the head of the last
    :meth:`before_evaluate`; ``forward(x, targets=y)`` gives ``(loss, logits)`` with logits
    ``(n, k)`` that are the batch's similarities for its classes and ``-inf`` elsewhere (so
    ``train_acc`` is the accuracy among the batch's classes).
    """

    derived_head = True  # the head is computed from the text tower, never trained

    def __init__(self, wrapper: ModelWrapper, classes: Sequence[str], templates: Sequence[str]) -> None:
        super().__init__(wrapper, "classification")
        pair = image_text_of(wrapper)
        self.text = pair.text
        self.templates = list(templates)
        tokenizer = load_tokenizer(pair.origin, pair.config)
        ids, mask = tokenizer(class_prompts(classes, self.templates))
        self.register_buffer("prompt_ids", ids.view(len(classes), len(self.templates), -1), persistent=False)
        self.register_buffer("prompt_mask", None if mask is None else mask.view(len(classes), len(self.templates), -1),
                             persistent=False)
        self.before_evaluate()

    def class_embeddings(self, classes: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings ``(len(classes), d)`` of these class indices (differentiable)."""
        t = len(self.templates)
        ids = self.prompt_ids[classes].flatten(0, 1)
        mask = None if self.prompt_mask is None else self.prompt_mask[classes].flatten(0, 1)
        return class_embeddings(self.text, ids, mask, t)

    def forward(self, x: torch.Tensor, frozen_backbone: bool = False, targets: torch.Tensor | None = None):
        if targets is None:
            return super().forward(x, frozen_backbone)
        if frozen_backbone:
            raise FtlensError("FLYP trains both towers; it has no frozen-backbone phase")
        image = self.backbone.forward_head(self.backbone.forward_features(self.normalize(x)), pre_logits=True)
        classes, columns = torch.unique(targets, return_inverse=True)
        text = self.class_embeddings(classes)
        scale = self.text.scale()
        loss = contrastive_loss(image, text, columns, scale)
        with torch.no_grad():
            k = self.backbone.get_classifier().weight.shape[0]
            logits = torch.full((x.shape[0], k), float("-inf"), device=x.device)
            logits[:, classes] = (scale * image.float() @ text.float().t()).detach()
        return loss, logits

    @torch.no_grad()
    def before_evaluate(self) -> None:
        """Set the head to the zero-shot weights of the current text tower."""
        was = self.text.training
        self.text.eval()
        k = self.prompt_ids.shape[0]
        weights = self.text.scale().float() * self.class_embeddings(torch.arange(k, device=self.prompt_ids.device))
        self.text.train(was)
        install_head(self.backbone, weights)

    # ------------------------------------------------------------------ checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {TASK_HEAD_PREFIX + TEXT_KEY + k: v for k, v in self.text.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        prefix = TASK_HEAD_PREFIX + TEXT_KEY
        text = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        backbone = {k: v for k, v in state.items() if not k.startswith(TASK_HEAD_PREFIX)}
        try:
            self.backbone.load_state_dict(backbone, strict=True)
            self.text.load_state_dict(text, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {source} does not fit this FLYP run's model ({exc}); use a new "
                                  "--out directory") from exc


def build_task_model(cfg, wrapper: ModelWrapper, classes: Sequence[str] | None) -> FlypTaskModel:
    """The FLYP task model of a run (a fresh head of ``len(classes)`` classes, then the zero-shot weights)."""
    if cfg.task != "classification":
        raise FtlensError("FLYP is a classification strategy (class prompts); use --task classification")
    if not classes:
        raise FtlensError(f"dataset {cfg.data!r} has no class names; FLYP needs them for its prompts")
    check_image_text(wrapper)  # a clear error for models without a text tower, before anything changes
    reset_classifier(wrapper, len(classes))
    return FlypTaskModel(wrapper, classes, cfg.prompts)


STRATEGY = Flyp()
