"""A language transformer as ftlens reads it: :class:`TextClassifier` (encoder -> pooled
features -> head, timm's classifier API) and the two input forms it takes.

Inputs are one tensor per batch, in either form (the last dimension says which):

- **tokens** ``(n, T, 2)`` integer: ``[..., 0]`` token ids, ``[..., 1]`` the attention mask (1 for
  a real token, 0 for padding), padded on the right to the fixed length ``T``
  (:func:`tokenize`). The model reads them with its own word-embedding table (its true forward).
- **word vectors** ``(n, T, D + 1)`` float: ``[..., :D]`` vectors in the space of the word-embedding
  table (the rows the ids look up, before position and type embeddings are added), ``[..., D]``
  the attention mask (a position is a real token where it is >= 0.5). This is the continuous
  space inversions run in (:mod:`ftlens.inversion`); :meth:`TextClassifier.embed` turns tokens into it.

Both forms give the same outputs for the same sentence (``embed`` is the table look-up). Padding
never changes a real token's output (the mask hides padded keys from attention); layer outputs
are reduced with the mask by :func:`masked_reduce`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ftlens.errors import ConfigError, LayerError, TextError
from ftlens.models.head import LinearHeadMixin

__all__ = ["POOLINGS", "TextClassifier", "TokenPool", "is_text_input", "masked_reduce", "tokenize"]

#: How a sentence's features are pooled for the head (``pre_logits``): sentence-transformers'
#: mean over the real tokens, or the first ([CLS]) token of the last layer.
POOLINGS = ("mean", "cls")
#: A position of a word-vector input is a real token where its mask channel is >= this.
MASK_THRESHOLD = 0.5


def split_input(x: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``("tokens", ids, mask)`` or ``("vectors", vectors, mask)``; ``mask`` is bool ``(n, T)``."""
    if x.is_floating_point():
        return "vectors", x[..., :-1], x[..., -1] >= MASK_THRESHOLD
    return "tokens", x[..., 0].long(), x[..., 1] > 0


def masked_reduce(t: torch.Tensor, mask: torch.Tensor, mode: str, *, has_cls: bool = True,
                  layer: str = "") -> torch.Tensor:
    """One layer output ``(n, T, d)`` -> ``(n, features)`` with the attention mask ``(n, T)`` respected.

    ``"all"``: every position flattened to ``(n, T*d)``, padded positions set to 0 (so padding
    adds nothing); ``"cls"``: the first token ``(n, d)``; ``"mean"``: the mean over the real tokens
    ``(n, d)`` (sentence-transformers' pooling: special tokens included, padding left out).
    Outputs that are not ``(n, T, d)`` are flattened.
    """
    n = t.shape[0]
    if t.dim() != 3 or t.shape[1] != mask.shape[1]:
        return t.reshape(n, -1)
    m = mask.to(t.dtype).unsqueeze(-1)
    if mode == "all":
        return (t * m).reshape(n, -1)
    if mode == "cls":
        if not has_cls:
            raise LayerError(f"layer {layer!r}: this model (a decoder) has no [CLS] token; use tokens='mean' or 'all'")
        return t[:, 0]
    return (t * m).sum(1) / m.sum(1).clamp_min(1.0)


class TokenPool(nn.Module):
    """Last hidden states ``(n, T, d)`` and mask ``(n, T)`` -> pooled features ``(n, d)`` (a module,
    so that ``pre_logits`` can be hooked)."""

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_reduce(hidden, mask, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class _Shared:
    """Holds the tokenizer: shared, not copied, by ``copy.deepcopy`` of the model (it has no weights)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class TextClassifier(LinearHeadMixin, nn.Module):
    """``head(pool(body(x)))`` for a Hugging Face text transformer, with timm's classifier API.

    Args:
        body: the transformer without a task head (``BertModel``, ``RobertaModel``,
            ``DistilBertModel``, ``GPT2Model``, ...): it must take ``inputs_embeds`` and
            ``attention_mask``.
        pooling: ``"mean"`` or ``"cls"`` (:data:`POOLINGS`).
        max_length: the fixed length ``T`` inputs are padded (or truncated) to.
        tokenizer: the model's own tokenizer (a ``transformers`` tokenizer), or None (then only
            tokenised batches are accepted).
        tokenizer_source: how to load that tokenizer again (recorded in checkpoints).
        head: the classifier (``nn.Linear(d, classes)``) or None.

    ``forward(x)`` takes tokens ``(n, T, 2)`` or word vectors ``(n, T, D + 1)`` (module docstring).
    """

    def __init__(self, body: nn.Module, *, pooling: str = "mean", max_length: int = 128,
                 tokenizer: Any = None, tokenizer_source: str | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.pool = TokenPool(pooling)
        self.head = head if head is not None else nn.Identity()
        config = body.config
        self.num_features = int(getattr(config, "hidden_size", None) or getattr(config, "dim", 0) or config.n_embd)
        self.embed_dim = int(body.get_input_embeddings().embedding_dim)
        self.vocab_size = int(body.get_input_embeddings().num_embeddings)
        self.max_length = int(max_length)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is not None and self.max_length > int(limit) - (2 if config.model_type == "roberta" else 0):
            raise TextError(f"max_length {self.max_length} exceeds the {limit} positions of this "
                             f"{config.model_type} model; use a shorter max_length")
        self.causal = bool(getattr(config, "is_decoder", False)) or config.model_type in ("gpt2", "gpt_neo", "gptj")
        if self.causal and pooling == "cls":
            raise ConfigError(f"{config.model_type} is a decoder without a [CLS] token; use pooling='mean'")
        self._tokenizer = _Shared(tokenizer)
        self.tokenizer_source = tokenizer_source

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer.value

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features) if isinstance(self.head, nn.Linear) else 0

    @property
    def word_embeddings(self) -> torch.Tensor:
        """The word-embedding table ``(vocab, D)`` (a view of the weights)."""
        return self.body.get_input_embeddings().weight

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(n, T, 2)`` -> word vectors ``(n, T, D + 1)`` float32 (no gradient): this
        model's table rows, with the mask as the last channel."""
        kind, ids, mask = split_input(tokens)
        if kind != "tokens":
            return tokens
        with torch.no_grad():
            vectors = self.body.get_input_embeddings()(ids.to(self.word_embeddings.device)).float()
        return torch.cat([vectors, mask.to(vectors).unsqueeze(-1)], dim=-1)

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last hidden states (n, T, d), mask (n, T) bool)`` of either input form."""
        kind, values, mask = split_input(x)
        feed = {"input_ids": values} if kind == "tokens" else {"inputs_embeds": values}
        out = self.body(**feed, attention_mask=mask.long())
        return out.last_hidden_state, mask

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.hidden(x))


def is_text_input(x: Any) -> bool:
    """Whether ``x`` is text the text models read: a string, a sequence of strings, or a tokenised
    batch (a mapping with ``input_ids``)."""
    if isinstance(x, str):
        return True
    if isinstance(x, Mapping):
        return "input_ids" in x
    if isinstance(x, Sequence) and not isinstance(x, (bytes, bytearray)) and len(x):
        return all(isinstance(s, str) for s in x)
    return False


def tokenize(tokenizer: Any, texts: str | Sequence[str] | Mapping[str, Any], max_length: int) -> torch.Tensor:
    """Texts (tokenised by ``tokenizer``) or a tokenised batch -> tokens ``(n, T, 2)`` int64.

    A tokenised batch is a mapping with ``input_ids`` and optionally ``attention_mask`` (``(n, L)``
    tensors or lists, as a Hugging Face tokenizer returns them); it is padded with the mask 0 (id:
    the tokenizer's pad id, else 0) or truncated to ``max_length`` on the right.
    """
    if isinstance(texts, Mapping):
        ids = torch.as_tensor(texts["input_ids"])
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        mask = torch.as_tensor(texts.get("attention_mask", torch.ones_like(ids)))
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
        if ids.is_floating_point() or tuple(mask.shape) != tuple(ids.shape):
            raise TextError(f"a tokenised batch needs integer input_ids and an attention_mask of the same shape, "
                             f"got {tuple(ids.shape)} {ids.dtype} and {tuple(mask.shape)}")
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        n, length = ids.shape
        out = torch.zeros((n, max_length, 2), dtype=torch.long)
        out[..., 0] = pad
        keep = min(length, max_length)
        out[:, :keep, 0] = ids[:, :keep].long()
        out[:, :keep, 1] = (mask[:, :keep] > 0).long()
        return out
    if tokenizer is None:
        raise TextError("this text model has no tokenizer; pass a tokenised batch {'input_ids': ..., "
                         "'attention_mask': ...} or load it from a directory with its tokenizer files")
    if isinstance(texts, str):
        texts = [texts]
    batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    return torch.stack([batch["input_ids"].long(), batch["attention_mask"].long()], dim=-1)
