"""The two towers of an image-text (CLIP-style) model and how to load them: the image tower as an
analysable classifier (:class:`ClipImageClassifier`), the text tower beside it
(:class:`TextTower`), their tokenizer, and :func:`build_for_models` for the ``clip:`` family.

Specs: ``clip:hf:DIR_OR_NAME`` (a Hugging Face ``CLIPModel``; tokenizer: ``AutoTokenizer`` of the
same directory; the ``hf`` extra) and ``clip:open_clip:ARCH[/TAG]`` (``open_clip.create_model``;
no TAG: random weights; the ``clip`` extra). The image tower is image encoder -> projection ->
L2 normalisation (``global_pool``, the ``pre_logits`` pseudo-layer) -> a linear head; its
state-dict keys are the original model's (``vision_model.*``/``visual_projection.*`` for HF,
``visual.*`` for open_clip) plus ``head.*``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftlens.errors import FtlensError, MissingDependencyError, NotImageTextError, OfflineError

PREFIX = "clip:"
#: Default prompt template (``{}`` or ``{c}`` is the class name).
DEFAULT_TEMPLATES = ("a photo of a {}.",)
#: CLIP caps the temperature: logits are at most 100 x cosine similarity.
MAX_SCALE = 100.0
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def require(module: str, extra: str, package: str):
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{package} is not installed, and image-text (CLIP) models need it: pip install 'ftlens[{extra}]' "
            f"(or pip install {package})"
        ) from exc


# --------------------------------------------------------------------------- image tower


class L2Normalize(nn.Module):
    """``x / ||x||`` over the last dimension (the image embedding the zero-shot head reads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class ClipImageClassifier(nn.Module):
    """An image tower as a timm-style classifier.

    ``forward_features(x) -> (n, d)`` projected image embeddings (not normalised);
    ``forward_head(f, pre_logits) -> normalize(f)`` or ``head(normalize(f))``; ``forward(x)`` is
    both. ``x`` is ``(n, 3, H, W)`` already normalised with the model's mean and std.
    """

    family = ""
    #: ``{"mean", "std", "input_size"}``, set by :func:`build_for_models`
    pretrained_cfg: dict[str, Any]

    def __init__(self, embed_dim: int, blocks: Sequence[str], num_classes: int = 0) -> None:
        super().__init__()
        self.num_features = int(embed_dim)
        self.global_pool = L2Normalize()
        self.head: nn.Module = nn.Identity()
        self.num_classes = 0
        # timm's contract for "the model's stages": ModelWrapper takes its default layers from it
        self.feature_info = [{"module": b, "num_chs": 0, "reduction": 0} for b in blocks]
        self.reset_classifier(num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.global_pool(features)
        return z if pre_logits else self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *args: Any) -> None:
        """A fresh ``Linear(d, num_classes)`` (timm's default init), or no head for 0."""
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()


class HFImageTower(ClipImageClassifier):
    """``CLIPModel.vision_model`` + ``visual_projection``: pooled CLS after ``post_layernorm``, projected.
    Runs at any image size that is a multiple of the patch size (``--image-size``)."""

    family = "hf"

    def __init__(self, model: Any, num_classes: int = 0) -> None:
        n = len(model.vision_model.encoder.layers)
        super().__init__(model.config.projection_dim, [f"vision_model.encoder.layers.{i}" for i in range(n)],
                         num_classes)
        self.vision_model: Any = model.vision_model
        self.visual_projection: Any = model.visual_projection

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # position embeddings resampled to other image sizes (a no-op at the config's own size)
        out = self.vision_model(pixel_values=x, interpolate_pos_encoding=True)
        return self.visual_projection(out.pooler_output)


class OpenClipImageTower(ClipImageClassifier):
    """open_clip's ``model.visual`` (it applies its own projection)."""

    family = "open_clip"

    def __init__(self, model: Any, embed_dim: int, num_classes: int = 0) -> None:
        trunk = getattr(model.visual, "transformer", None)
        blocks = getattr(trunk, "resblocks", None)
        names = [f"visual.transformer.resblocks.{i}" for i in range(len(blocks))] if blocks is not None else []
        if blocks is None:  # ResNet towers (ModifiedResNet): its stages
            names = [f"visual.layer{i}" for i in range(1, 5) if hasattr(model.visual, f"layer{i}")]
        super().__init__(embed_dim, names, num_classes)
        self.visual: Any = model.visual

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


# --------------------------------------------------------------------------- text tower


class TextTower(nn.Module):
    """Token ids -> projected text embeddings ``(n, d)`` (not normalised); owns the logit scale."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def scale_parameter(self) -> nn.Parameter:
        raise NotImplementedError

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` capped at :data:`MAX_SCALE` (a scalar tensor)."""
        return self.scale_parameter.exp().clamp(max=MAX_SCALE)


class HFTextTower(TextTower):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_model: Any = model.text_model
        self.text_projection: Any = model.text_projection
        self.logit_scale: nn.Parameter = model.logit_scale

    @property
    def scale_parameter(self) -> nn.Parameter:
        return self.logit_scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_projection(out.pooler_output)


class OpenClipTextTower(TextTower):
    """The open_clip model with its image tower removed (``encode_text`` does not use it)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        model.visual = None
        self.clip: Any = model

    @property
    def scale_parameter(self) -> nn.Parameter:
        return self.clip.logit_scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.clip.encode_text(input_ids)


class Tokenizer:
    """Prompts -> ``(input_ids (n, L) long, attention_mask (n, L) or None)``."""

    def __init__(self, kind: str, tok: Any, max_length: int) -> None:
        self.kind, self.tok, self.max_length = kind, tok, int(max_length)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "hf":
            enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length,
                           return_tensors="pt")
            return enc["input_ids"].long(), enc.get("attention_mask")
        return self.tok(list(texts)).long(), None


# --------------------------------------------------------------------------- loading


@dataclass
class ImageText:
    """Both towers of a CLIP-style model and how to feed them.

    Attributes: ``image`` (a :class:`ClipImageClassifier`), ``text`` (a :class:`TextTower`),
    ``config`` (JSON-able model config: rebuilds the architecture), ``mean``, ``std``,
    ``input_size`` ``(3, H, W)``, ``origin`` (the spec after ``clip:``).
    """

    image: ClipImageClassifier
    text: TextTower
    config: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    origin: str


def is_clip_spec(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def loads_weights(spec: str) -> bool:
    """Whether ``spec`` loads trained weights (HF: always; open_clip: with a ``/TAG``)."""
    kind, _, location = spec[len(PREFIX):].partition(":")
    return kind == "hf" or (kind == "open_clip" and _split_open_clip(location)[1] is not None)


def load_image_text(spec: str, *, config: dict[str, Any] | None = None, num_classes: int = 0) -> ImageText:
    """Build both towers of ``spec`` (``clip:hf:...`` / ``clip:open_clip:...``).

    With ``config`` (recorded in a checkpoint) the architecture is built from it with random
    weights (the checkpoint's are loaded next); without it the weights come from the origin.
    """
    if not is_clip_spec(spec):
        raise NotImageTextError(
            f"{spec!r} is not an image-text model; zero-shot heads and FLYP need a CLIP model: "
            "clip:hf:DIR (a saved Hugging Face CLIPModel) or clip:open_clip:ARCH[/TAG]"
        )
    kind, _, location = spec[len(PREFIX):].partition(":")
    if kind == "hf" and location:
        return _load_hf(location, config, num_classes)
    if kind == "open_clip" and location:
        return _load_open_clip(location, config, num_classes)
    raise FtlensError(f"cannot read image-text spec {spec!r}; use clip:hf:DIR or clip:open_clip:ARCH[/TAG]")


def _load_hf(location: str, config: dict[str, Any] | None, num_classes: int) -> ImageText:
    transformers = require("transformers", "hf", "transformers")
    if config is None:
        from ftlens.models.families.base import pickled_weights_error

        if Path(location).is_dir() and (refusal := pickled_weights_error(Path(location), "clip:hf:")) is not None:
            raise refusal
        try:
            cfg = transformers.AutoConfig.from_pretrained(location, trust_remote_code=False)
        except OSError as exc:
            raise _hf_missing(location, exc) from exc
        if getattr(cfg, "model_type", None) != "clip":
            raise NotImageTextError(
                f"{location} holds a Hugging Face {getattr(cfg, 'model_type', '?')!r} model, not a CLIPModel "
                "(model_type 'clip'); zero-shot heads and FLYP need both towers of a CLIP model"
            )
        try:
            model = transformers.CLIPModel.from_pretrained(location, use_safetensors=Path(location).is_dir() or None)
        except OSError as exc:
            raise _hf_missing(location, exc) from exc
    else:
        model = transformers.CLIPModel(transformers.CLIPConfig.from_dict(config))
    model = model.float().eval()
    full = json.loads(model.config.to_json_string())
    mean, std = _OPENAI_MEAN, _OPENAI_STD
    pre = Path(location) / "preprocessor_config.json"
    if config is None and pre.is_file():
        values = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = tuple(values.get("image_mean", mean)), tuple(values.get("image_std", std))
    size = int(model.config.vision_config.image_size)
    return ImageText(HFImageTower(model, num_classes), HFTextTower(model), full, tuple(mean), tuple(std),
                     (3, size, size), f"hf:{location}")


def _hf_missing(location: str, exc: Exception) -> FtlensError:
    if Path(location).exists():
        return FtlensError(f"cannot load a CLIPModel from {location} ({exc}); it should be a directory written "
                           "by CLIPModel.save_pretrained")
    return OfflineError(f"cannot load the CLIPModel {location!r} ({type(exc).__name__}); no such directory, and "
                        "the hub is not reachable or has no such model. Save it with save_pretrained(DIR) and "
                        "use clip:hf:DIR")


def _split_open_clip(location: str) -> tuple[str, str | None]:
    """``ARCH`` or ``ARCH/TAG`` (a built-in or registered open_clip architecture, a weights tag)."""
    arch, _, tag = location.partition("/")
    return arch, tag or None


def _load_open_clip(location: str, config: dict[str, Any] | None, num_classes: int) -> ImageText:
    open_clip = require("open_clip", "clip", "open_clip_torch")
    arch, tag = _split_open_clip(location)
    if config is None:
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=4)
            raise FtlensError(f"unknown open_clip model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                      else "; see open_clip.list_models()"))
        try:
            model = open_clip.create_model(arch, pretrained=tag)
        except Exception as exc:  # download failures come in many types
            if tag is not None:
                raise OfflineError(f"could not fetch open_clip weights {arch}/{tag} ({type(exc).__name__}: {exc}); "
                                   "with no network use weights already in the open_clip cache") from exc
            raise
    else:
        cfg = dict(config)
        model = _open_clip_from_config(open_clip, cfg)
    model = model.float().eval()
    if getattr(model, "logit_bias", None) is not None:
        raise NotImageTextError(f"{arch} is a SigLIP-style model (sigmoid loss, logit_bias); FLYP and zero-shot "
                                "heads here follow CLIP's softmax")
    if not hasattr(model, "encode_text"):
        raise NotImageTextError(f"open_clip model {arch} has no text tower")
    mean = tuple(getattr(model.visual, "image_mean", None) or _OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or _OPENAI_STD)
    size = getattr(model.visual, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    full = {**cfg, "ftlens_arch": arch}
    embed_dim = int(cfg.get("embed_dim", 0)) or int(model.text_projection.shape[-1])
    image = OpenClipImageTower(model, embed_dim, num_classes)
    return ImageText(image, OpenClipTextTower(model), full, mean, std, (3, int(h), int(w)), f"open_clip:{location}")


def _open_clip_from_config(open_clip, cfg: dict[str, Any]) -> nn.Module:
    cfg = {k: v for k, v in cfg.items() if k != "ftlens_arch"}
    if "multimodal_cfg" in cfg:
        raise NotImageTextError("CoCa models are not supported (captioning decoder)")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**cfg)


def load_tokenizer(spec_or_origin: str, config: dict[str, Any] | None = None) -> Tokenizer:
    """The model's own tokenizer: ``AutoTokenizer`` of the HF directory, ``open_clip.get_tokenizer``."""
    origin = spec_or_origin[len(PREFIX):] if is_clip_spec(spec_or_origin) else spec_or_origin
    kind, _, location = origin.partition(":")
    if kind == "hf":
        transformers = require("transformers", "hf", "transformers")
        try:
            tok = transformers.AutoTokenizer.from_pretrained(location)
        except (OSError, ValueError) as exc:
            raise FtlensError(
                f"no tokenizer for {location} ({type(exc).__name__}); save the model's tokenizer next to it "
                "(tokenizer.save_pretrained(DIR)) so that AutoTokenizer.from_pretrained(DIR) finds it"
            ) from exc
        max_length = int((config or {}).get("text_config", {}).get("max_position_embeddings", 77))
        return Tokenizer("hf", tok, max_length)
    open_clip = require("open_clip", "clip", "open_clip_torch")
    arch, _ = _split_open_clip(location)
    context = (config or {}).get("text_cfg", {}).get("context_length")
    tok = open_clip.get_tokenizer(arch, context_length=context) if context else open_clip.get_tokenizer(arch)
    return Tokenizer("open_clip", tok, int(context or 77))


_TEXT_ATTR = "_ftlens_text_tower"

#: Key prefix of the text tower's tensors among a checkpoint's ``task_head.*`` extras.
TEXT_KEY = "text."


def build_for_models(name: str, *, config: dict[str, Any] | None = None, num_classes: int = 0,
                     **kwargs: Any) -> tuple[ClipImageClassifier, dict[str, Any]]:
    """The image tower of ``clip:NAME`` for :func:`ftlens.models.load_model`, and the kwargs that
    rebuild it (``config``, ``num_classes``). Preprocessing goes in ``module.pretrained_cfg``."""
    if kwargs:
        raise FtlensError(f"clip: models take no extra arguments (they run at the image size of their config), "
                          f"got {sorted(kwargs)}")
    pair = load_image_text(PREFIX + name, config=config, num_classes=num_classes)
    module = pair.image
    if config is None:  # weights from the origin: keep its text tower (a plain attribute, not a submodule)
        module.__dict__[_TEXT_ATTR] = pair.text
    module.pretrained_cfg = {"mean": pair.mean, "std": pair.std, "input_size": pair.input_size}
    return module, {"config": pair.config, "num_classes": int(num_classes)}


def describe(spec: str) -> str:
    """A short display name for a ``clip:`` spec."""
    origin = spec[len(PREFIX):]
    kind, _, location = origin.partition(":")
    if kind == "hf" and os.sep in location:  # a directory: its name
        location = Path(location).name or location
    return f"clip-{kind}:{location}"
