"""The adapter interface every model family implements.

A family turns ``PREFIX:NAME`` (plus keyword arguments) into an ``nn.Module`` and says what the
rest of ftlens needs to know about such a module: preprocessing, input size, default layers,
pseudo-layers (``pre_logits``) and how its layer outputs are laid out. Adding a family is one
module in this package and one line in :data:`ftlens.models.families.FAMILIES`.

Modules that are finetuned must offer timm's classifier API (``forward_features``,
``forward_head(x, pre_logits=True)``, ``get_classifier``, ``reset_classifier``,
``num_features``); families whose models do not (torchvision, Hugging Face, open_clip) wrap them
in :class:`ftlens.models.families.adapter.FeatureClassifier`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ftlens.errors import ImageSizeError, MissingDependencyError, ModelError

#: Pseudo-layer: the features the classification head sees (ViT: CLS after the final norm).
PRE_LOGITS = "pre_logits"
#: An alias target ``"input:NAME"`` reads the (first) input of module NAME, not its output.
INPUT_OF = "input:"


@dataclass(frozen=True)
class Source:
    """How a model can be rebuilt without its weights (recorded in checkpoints):
    ``spec`` is ``"PREFIX:NAME"`` (``"module"`` for a user's object), ``kwargs`` the build arguments."""

    spec: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Built:
    """What :meth:`Family.build` returns.

    Attributes:
        module: the model (weights loaded when pretrained).
        source: how to rebuild it (its family's spec and build kwargs).
        random_init: whether the weights are a random initialisation.
        family: the family that describes the module (a LoRA merge is described by its base's).
        info: notes for reports (e.g. ``{"lora": {...}}``).
        preprocessing: ``mean``/``std``/``input_size`` that override the family's defaults.
        name: a display name (default: from the spec).
    """

    module: nn.Module
    source: Source
    random_init: bool
    family: str
    info: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


@dataclass(frozen=True)
class Defaults:
    """What a family knows about one of its modules.

    Attributes:
        mean, std: per-channel normalisation of [0, 1] pixels (None: not known, e.g. a plain module).
        input_size: ``(C, H, W)`` (None: taken from the first images).
        layers: default analysis layers (None: the top-level children that run, in order).
        aliases: pseudo-layers -> module names (``pre_logits``: what a classification head sees).
        layout: where a 4-D output keeps its channels: ``"nchw"`` or ``"nhwc"`` (timm Swin).
        prefix_tokens: tokens before the patch tokens of token outputs (CLS, registers).
    """

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_size: tuple[int, ...] | None
    layers: tuple[str, ...] | None
    aliases: Mapping[str, str] = field(default_factory=dict)
    layout: str = "nchw"
    prefix_tokens: int = 0


class Family:
    """Base class: one model family (see the module docstring)."""

    #: the spec prefix (``"timm"`` for ``"timm:NAME"``).
    prefix: ClassVar[str] = ""
    #: the optional dependency (import name) and the pip extra that installs it.
    package: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None
    #: whether ``pretrained=True`` downloads hub weights (presets and checkpoints carry their own).
    hub: ClassVar[bool] = False
    #: whether :meth:`build` loads another model: it is then given ``load=`` (a function like
    #: :func:`ftlens.models.load_model`, passed in by the loader so families never import it).
    loads_models: ClassVar[bool] = False

    def require(self) -> Any:
        """Import :attr:`package`, or a :class:`MissingDependencyError` naming the extra."""
        if self.package is None:
            return None
        try:
            return importlib.import_module(self.package)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{self.prefix}: models need the package {self.package!r}, which is not installed; "
                f"install it with `pip install 'ftlens[{self.extra}]'` (or `pip install {self.package}`)"
            ) from exc

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        """The module of ``PREFIX:NAME`` and how to rebuild it (``kwargs``: the family's build options)."""
        raise NotImplementedError

    def owns(self, module: nn.Module) -> bool:
        """Whether a user's module object belongs to this family."""
        return False

    def adopt(self, module: nn.Module) -> nn.Module:
        """A user's module in the form this family analyses (default: as it is)."""
        return module

    def defaults(self, module: nn.Module) -> Defaults:
        raise NotImplementedError

    def keep_on_rebuild(self, old: nn.Module, new: nn.Module) -> None:
        """What a fresh random model of the architecture (``scratch``) keeps from ``old`` (in
        place on ``new``; default: nothing)."""

    def wrapper_class(self) -> str | None:
        """Which wrapper reads this family's models, by name (a family sits below the wrappers,
        so it names one and :func:`ftlens.models.load.load` picks it): None for
        :class:`~ftlens.models.ModelWrapper`, ``"text"`` for :class:`~ftlens.models.text_wrapper.TextWrapper`."""
        return None

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        """Make ``module`` take ``hw`` images; default: accepted as is (convolutional models)."""

    def resizes_in_place(self, module: nn.Module, hw: tuple[int, int]) -> bool:
        """Whether :meth:`set_image_size` would change ``module``'s own weights (a user's module
        is then copied first); default: no."""
        return False

    def takes_any_size(self, module: nn.Module) -> bool:
        """Whether ``module`` runs on images of any size as it is (convolutional networks), so
        that the images decide the input size; default: unless it has a patch or position
        embedding (ViTs, Swin, CLIP towers: their size is chosen with ``image_size``)."""
        return not any(hasattr(m, attr) for m in module.modules() for attr in _FIXED_SIZE_ATTRS)


#: attributes of modules that tie a model to one input size (timm, torchvision, Hugging Face, open_clip).
_FIXED_SIZE_ATTRS = ("patch_embed", "pos_embed", "pos_embedding", "position_embedding", "position_embeddings",
                     "positional_embedding", "class_token", "cls_token")


#: weight files that are Python pickles (reading one can run code): ftlens reads safetensors only
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickled_weights_error(directory: Path, what: str) -> ModelError | None:
    """The refusal for a folder whose weights are pickles and not safetensors (None if it has
    safetensors, or no weights at all). The pickle is never opened."""
    if any(directory.glob("*.safetensors")):
        return None
    pickles = sorted(f.name for f in directory.iterdir() if f.is_file() and f.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return None
    return ModelError(
        f"{what} {directory} holds its weights as a pickle ({', '.join(pickles[:3])}), which ftlens never opens "
        "(unpickling can run code); convert it to safetensors where you trust it (save_pretrained(DIR, "
        "safe_serialization=True) writes model.safetensors / adapter_model.safetensors) and load that folder")


def fixed_size_error(module: nn.Module, current: Sequence[int], hw: tuple[int, int]) -> ImageSizeError:
    return ImageSizeError(
        f"{type(module).__name__} is built for {tuple(current)} images and cannot be resized to {hw}; "
        f"pass image_size={current[0]} (--image-size {current[0]}) and images of that size"
    )
