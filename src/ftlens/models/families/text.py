"""Language transformers: ``hf:DIR`` of a text model (``BertModel``, ``RobertaModel``,
``DistilBertModel``, ``GPT2Model`` and their task variants, whose heads are left out) and the
packaged real weights ``ftlens:minilm-l6`` (:mod:`ftlens.weights.minilm_l6`).

A text model is a :class:`~ftlens.models.textmodel.TextClassifier` read by a
:class:`~ftlens.models.text_wrapper.TextWrapper`. Layers: ``embeddings`` (the input embeddings:
word + position (+ type) embeddings, after their LayerNorm where the model has one; numbered 0,
Hugging Face's hidden state 0) and the blocks (``body.encoder.layer.N``, ``body.transformer.layer.N``,
``body.h.N``: numbered N + 1); ``pre_logits`` is the pooled sentence feature the head sees. The
tokenizer is the model's own (``AutoTokenizer`` of the directory). Checkpoints record the config,
the pooling, the fixed length and where the tokenizer is, so they rebuild without the weights.
Needs ``pip install 'ftlens[hf]'``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ftlens.errors import ModelError, OfflineError, TextError
from ftlens.models.families.base import PRE_LOGITS, Built, Defaults, Family, Source

#: The pseudo-layer of a text model's input embeddings (layer 0).
EMBEDDINGS = "embeddings"
#: Default fixed length ``T`` of a text model's inputs.
DEFAULT_MAX_LENGTH = 128
_BLOCK_LISTS = ("layer", "layers", "h", "blocks")


def is_text_config(config: Any) -> bool:
    """Whether a transformers config describes a text model (a vocabulary, no image size)."""
    return getattr(config, "vocab_size", None) is not None and getattr(config, "image_size", None) is None \
        and not hasattr(config, "vision_config")


class TextFamily(Family):
    prefix = "text"
    package = "transformers"
    extra = "hf"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        transformers = self.require()
        if "config" in kwargs:  # rebuilt from a record (a checkpoint, scratch): random weights
            return self._from_record(transformers, name, kwargs)
        pooling, max_length = kwargs.pop("pooling", None), kwargs.pop("max_length", None)
        safetensors = {"use_safetensors": True} if kwargs.pop("use_safetensors", None) else {}  # a weights file only
        local = Path(name).is_dir()
        from ftlens.models.hub import hub_online, is_network_error

        online = True if local else hub_online()
        try:
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=not online, trust_remote_code=False)
            has_weights = local and any(any(Path(name).glob(p)) for p in ("*.safetensors", "*.bin"))
            load_weights = has_weights if local else pretrained
            cls = body_class(transformers, config)
            kwargs = {**no_pooler(cls), **kwargs}
            if load_weights:
                with _quiet(transformers):  # the left-out pooler's weights are reported as unexpected
                    body = cls.from_pretrained(name, local_files_only=not online, **safetensors, **kwargs)
            else:
                body = cls(config, **kwargs)
            tokenizer = _auto_tokenizer(transformers, name, online)
        except OSError as exc:
            if not local and (not online or is_network_error(exc)):
                raise OfflineError(f"hf:{name} is not in the local Hugging Face cache and the hub cannot be reached; "
                                   "save it with save_pretrained(DIR) (model and tokenizer) and load hf:DIR") from exc
            raise ModelError(f"cannot load hf:{name} ({exc}); give a save_pretrained directory of a text model") from exc
        source = str(Path(name).resolve()) if local else name
        if pooling is None and local:
            pooling = _st_pooling(Path(name))
        module = make_classifier(body, pooling=pooling, max_length=max_length, tokenizer=tokenizer,
                                 tokenizer_source=source if tokenizer is not None else None)
        info = {"text": {"source": name, "class": type(body).__name__, "pooling": module.pool.mode,
                         "max_length": module.max_length}}
        return Built(module, Source(f"text:{name}", record(module)), random_init=not load_weights,
                     family=self.prefix, info=info)

    def _from_record(self, transformers: Any, name: str, kwargs: dict[str, Any]) -> Built:
        config = getattr(transformers, kwargs["config_class"]).from_dict(dict(kwargs["config"]))
        cls = getattr(transformers, kwargs["body"])
        body = cls(config, **no_pooler(cls))
        ref = kwargs.get("tokenizer")
        module = make_classifier(body, pooling=kwargs.get("pooling"), max_length=kwargs.get("max_length"),
                                 tokenizer=load_tokenizer(ref), tokenizer_source=ref)
        if int(kwargs.get("num_classes", 0)):
            module.reset_classifier(int(kwargs["num_classes"]))
        return Built(module, Source(f"text:{name}", record(module)), random_init=True, family=self.prefix)

    def owns(self, module: nn.Module) -> bool:
        from ftlens.models.textmodel import TextClassifier

        return isinstance(module, TextClassifier)

    def keep_on_rebuild(self, old: nn.Module, new: nn.Module) -> None:
        """``scratch`` of a text model keeps the word-embedding table: the transformer (position and
        type embeddings, norms, blocks) starts from random weights, the table from ``old``'s, so
        that the scratch model and the pretrained one read the same word vectors (the space in
        which they are compared, :mod:`ftlens.models.textmodel`)."""
        import torch

        with torch.no_grad():
            new.word_embeddings.copy_(old.word_embeddings)

    def wrapper_class(self) -> str:
        return "text"

    def defaults(self, module: nn.Module) -> Defaults:
        blocks = block_names(module)
        aliases = {EMBEDDINGS: embeddings_name(module), PRE_LOGITS: "pool"}
        return Defaults(mean=None, std=None, input_size=None, layers=(EMBEDDINGS, *blocks), aliases=aliases,
                        prefix_tokens=0 if module.causal else 1)


def body_class(transformers: Any, config: Any) -> type:
    """The base model class of a text config (``BertModel`` for a ``BertForSequenceClassification``)."""
    if not is_text_config(config):
        raise ModelError(f"a {config.model_type} config is not a text model; hf: vision models load with the hf family")
    try:
        return transformers.MODEL_MAPPING[type(config)]
    except KeyError:
        raise ModelError(f"transformers has no base model for {type(config).__name__}") from None


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def no_pooler(cls: type) -> dict[str, Any]:
    """``{"add_pooling_layer": False}`` for classes that have a pooler (BERT, RoBERTa): ftlens pools
    the last hidden states itself, so the pooler would be weights that never run."""
    import inspect

    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


def make_classifier(body: nn.Module, *, pooling: str | None, max_length: int | None, tokenizer: Any,
                    tokenizer_source: str | None) -> nn.Module:
    from ftlens.models.textmodel import TextClassifier

    config = body.config
    causal = config.model_type in ("gpt2", "gpt_neo", "gptj") or bool(getattr(config, "is_decoder", False))
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH, int(limit)) if limit else DEFAULT_MAX_LENGTH
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:  # GPT-2: pads are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return TextClassifier(body, pooling=pooling or ("mean" if causal else "cls"), max_length=int(max_length),
                          tokenizer=tokenizer, tokenizer_source=tokenizer_source)


def record(module: nn.Module) -> dict[str, Any]:
    """What rebuilds ``module`` without its weights (its checkpoint's build kwargs)."""
    body = module.body
    return {"config_class": type(body.config).__name__, "config": body.config.to_dict(), "body": type(body).__name__,
            "tokenizer": module.tokenizer_source, "pooling": module.pool.mode, "max_length": module.max_length,
            "num_classes": module.num_classes}


def load_tokenizer(ref: str | None) -> Any:
    """The tokenizer a record names: ``ftlens:NAME`` (packaged weights), a directory, or None."""
    if ref is None:
        return None
    if ref.startswith("ftlens:"):
        from ftlens.weights import TEXT_WEIGHTS

        return TEXT_WEIGHTS[ref.split(":", 1)[1]].tokenizer()
    if not Path(ref).is_dir():
        raise TextError(f"the tokenizer of this text model was in {ref}, which is gone; restore that directory "
                        "(its tokenizer files), or pass tokenised batches")
    import transformers

    return _auto_tokenizer(transformers, ref, False)


def _auto_tokenizer(transformers: Any, name: str, online: bool) -> Any:
    local = Path(name)
    if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                  "vocab.txt", "vocab.json")):
        return None
    return transformers.AutoTokenizer.from_pretrained(name, local_files_only=not online)


def _st_pooling(directory: Path) -> str | None:
    """The pooling of a sentence-transformers directory (``1_Pooling/config.json``), if any."""
    path = directory / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    return "cls" if cfg.get("pooling_mode_cls_token") else "mean"


def block_names(module: nn.Module) -> list[str]:
    """The names of the transformer blocks (the first non-empty block list under ``body``)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS and len(sub):
            return [f"{name}.{i}" for i in range(len(sub))]
    raise ModelError(f"{type(module.body).__name__} has no list of transformer blocks ({_BLOCK_LISTS})")


def embeddings_name(module: nn.Module) -> str:
    """The module whose output is the input of block 1: ``body.embeddings`` (BERT-like) or GPT-2's
    embedding dropout ``body.drop`` (word + position embeddings)."""
    names = dict(module.named_modules())
    for name in ("body.embeddings", "body.drop"):
        if name in names:
            return name
    raise ModelError(f"{type(module.body).__name__}: no input-embedding module (body.embeddings or body.drop)")
