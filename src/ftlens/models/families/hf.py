"""``hf:NAME_OR_DIR``: Hugging Face transformers vision models (``ViTModel``,
``ViTForImageClassification``, ``Dinov2Model``, ``CLIPVisionModel``, the image tower of a
``CLIPModel``, ...); a text model's directory (BERT, RoBERTa, DistilBERT, GPT-2) is handed to
the text family (:mod:`ftlens.models.families.text`). A local directory written by ``save_pretrained`` loads offline with its
weights; a hub id loads its weights with ``pretrained=True`` (else its config with random weights).

The model is wrapped in :class:`~ftlens.models.families.adapter.FeatureClassifier`: the encoder
is the ``body``, a classification model's ``classifier`` the ``head``; ``pre_logits`` is the CLS
token after the final norm (CLIP: ``pooler_output``). Layers: the encoder's blocks, whose
outputs are the model's hidden states 1..L. Checkpoints record the model config, so they
rebuild without the original directory. Needs ``pip install 'ftlens[hf]'``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from torch import nn

from ftlens.errors import ModelError, OfflineError
from ftlens.models.families.adapter import FeatureClassifier, Pool
from ftlens.models.families.base import (
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    pickled_weights_error,
)
from ftlens.models.hub import hub_online, is_network_error

_MEAN_STD = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
#: names of the encoder's block list (transformers 4: ``encoder.layer``; 5: ``layers``; CLIP: ``encoder.layers``)
_BLOCK_LISTS = ("layer", "layers", "blocks")


class HFFamily(Family):
    prefix = "hf"
    hub = True
    package = "transformers"
    extra = "hf"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        transformers = self.require()
        if kwargs.pop("trust_remote_code", False):
            raise ModelError(f"hf:{name}: ftlens never runs a model's own Python code (trust_remote_code); use an "
                             "architecture that transformers ships (ViT, DINOv2, CLIP, ...)")
        if "config" in kwargs:  # rebuilt from a checkpoint: the recorded config, no weights
            return self._from_record(transformers, name, kwargs)
        local = Path(name).is_dir()
        if local:
            refusal = pickled_weights_error(Path(name), "hf:")
            if refusal is not None:
                raise refusal
            kwargs["use_safetensors"] = True  # a folder with both: never the pickle
        online = True if local else hub_online()
        try:
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=not online, trust_remote_code=False)
            from ftlens.models.families.text import TextFamily, is_text_config

            if is_text_config(config):  # a language transformer: the text family reads it
                return TextFamily().build(name, pretrained=pretrained, **kwargs)
            has_weights = local and any(Path(name).glob("*.safetensors"))
            load_weights = has_weights if local else pretrained
            arch = (getattr(config, "architectures", None) or [None])[0]
            cls = getattr(transformers, arch, None) if arch else None
            if cls is None:
                cls = transformers.AutoModel
            if load_weights:
                model = cls.from_pretrained(name, local_files_only=not online, trust_remote_code=False, **kwargs)
            else:
                kwargs.pop("use_safetensors", None)
                model = cls.from_config(config, **kwargs) if cls is transformers.AutoModel else cls(config, **kwargs)
        except ValueError as exc:
            if "trust_remote_code" not in str(exc):
                raise
            raise ModelError(f"hf:{name} needs its own Python code (trust_remote_code), which ftlens never runs; use "
                             "an architecture that transformers ships (ViT, DINOv2, CLIP, ...)") from None
        except OSError as exc:
            if not local and (not online or is_network_error(exc)):
                raise OfflineError(
                    f"hf:{name} is not in the local Hugging Face cache and the hub cannot be reached; download "
                    "it while online, or save it with save_pretrained(DIR) and load hf:DIR"
                ) from exc
            raise ModelError(f"cannot load hf:{name} ({exc}); give a hub id or a save_pretrained directory") from exc
        wrapped, record = adapt(transformers, model, Path(name) if local else None)
        info = {"hf": {"source": name, "class": type(model).__name__}}
        return Built(wrapped, Source(f"hf:{name}", record), random_init=not load_weights, family=self.prefix,
                     info=info)

    def _from_record(self, transformers: Any, name: str, kwargs: dict[str, Any]) -> Built:
        config_cls = getattr(transformers, kwargs["config_class"])
        config = config_cls.from_dict(dict(kwargs["config"]))
        body = getattr(transformers, kwargs["body"])(config, **kwargs.get("body_kwargs", {}))
        wrapped = _wrap(body, None)
        if int(kwargs.get("num_classes", 0)):
            wrapped.reset_classifier(int(kwargs["num_classes"]))
        return Built(wrapped, Source(f"hf:{name}", dict(kwargs)), random_init=True, family=self.prefix)

    def owns(self, module: nn.Module) -> bool:
        if isinstance(module, FeatureClassifier):
            return getattr(module, "origin", None) == self.prefix
        return type(module).__module__.startswith("transformers.")

    def adopt(self, module: nn.Module) -> nn.Module:
        if isinstance(module, FeatureClassifier):
            return module
        return adapt(self.require(), module, None)[0]  # shares the weights (a CLIPModel: its tower copied)

    def defaults(self, module: nn.Module) -> Defaults:
        config = module.body.config
        mean, std = _MEAN_STD.get(config.model_type, _MEAN_STD["dinov2"])
        mean, std = getattr(module, "mean", mean), getattr(module, "std", std)
        size = config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        lists = [(n, m) for n, m in module.named_modules()
                 if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] in _BLOCK_LISTS and len(m)]
        blocks = [f"{lists[0][0]}.{i}" for i in range(len(lists[0][1]))] if lists else []
        prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        return Defaults(mean=tuple(mean), std=tuple(std), input_size=(int(config.num_channels), *size),
                        layers=tuple(blocks) or None, aliases={PRE_LOGITS: "pool"}, prefix_tokens=prefix)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        """Another resolution: position embeddings are interpolated in the forward
        (``interpolate_pos_encoding=True``; DINOv2 always interpolates)."""
        config = module.body.config
        size = config.image_size
        native = (size, size) if isinstance(size, int) else tuple(size)
        accepts = "interpolate_pos_encoding" in inspect.signature(module.body.forward).parameters
        module.call_kwargs = {"interpolate_pos_encoding": True} if accepts and tuple(hw) != native else {}


def _wrap(body: nn.Module, head: nn.Module | None) -> FeatureClassifier:
    config = body.config
    pick = "pooler" if config.model_type == "clip_vision_model" else "cls"
    wrapped = FeatureClassifier(body, num_features=int(config.hidden_size), head=head, pool=Pool(pick),
                                pixel_kwarg=True)
    wrapped.origin = "hf"
    return wrapped


def adapt(transformers: Any, model: nn.Module, directory: Path | None) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Split a transformers model into ``FeatureClassifier(body, head)`` and the record that
    rebuilds it (config, body class, head size)."""
    head = None
    body_kwargs: dict[str, Any] = {}
    if type(model).__name__ == "CLIPModel":  # keep the image tower: CLIPVisionModel with the same weights
        vision = transformers.CLIPVisionModel(model.config.vision_config)
        vision.vision_model.load_state_dict(model.vision_model.state_dict())
        body = vision
    elif hasattr(model, "classifier") and model is not model.base_model:
        body, head = model.base_model, model.classifier
        if not isinstance(head, nn.Linear):
            raise ModelError(f"{type(model).__name__}: only a Linear classifier can be the head, got {type(head).__name__}")
        if "add_pooling_layer" in inspect.signature(type(body).__init__).parameters:
            body_kwargs["add_pooling_layer"] = getattr(body, "pooler", None) is not None
    else:
        body = model
    if not hasattr(body, "config") or getattr(body.config, "image_size", None) is None:
        raise ModelError(f"{type(model).__name__} is not a vision model with an image_size; ftlens reads image encoders "
                         "(ViTModel, Dinov2Model, CLIPVisionModel, ...)")
    wrapped = _wrap(body, head)
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        pre = json.loads((directory / "preprocessor_config.json").read_text())
        if pre.get("image_mean") and pre.get("image_std"):
            wrapped.mean, wrapped.std = tuple(pre["image_mean"]), tuple(pre["image_std"])
    record = {"config_class": type(body.config).__name__, "config": body.config.to_dict(), "body": type(body).__name__,
              "body_kwargs": body_kwargs, "num_classes": int(head.out_features) if head is not None else 0}
    return wrapped, record
