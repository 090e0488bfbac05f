""":class:`TextWrapper`: the :class:`~ftlens.models.ModelWrapper` of a language transformer.

Everything the wrapper does for images (ordered layers, hooks for one forward, the early stop,
token modes, fingerprints) it does for text; what differs is the input:

- :meth:`TextWrapper.as_input` takes a string, a list of strings (tokenised by the model's own
  tokenizer, padded or truncated to the fixed length ``T``), a tokenised batch (a mapping with
  ``input_ids``), or a tensor in one of the two forms of :mod:`ftlens.models.textmodel`: tokens
  ``(n, T, 2)`` or word vectors ``(n, T, D + 1)``.
- ``input_size`` is ``(T, D + 1)``, the shape of one word-vector input (the space inversions run
  in); there is no normalisation and no clamp.
- Layer outputs ``(n, T, d)`` are reduced with the attention mask (:func:`masked_reduce`):
  ``tokens="all"`` keeps every position with padding set to 0, ``"mean"`` averages the real
  tokens, ``"cls"`` takes the first one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ftlens.errors import ImageSizeError, TextError
from ftlens.models.domain import InputDomain
from ftlens.models.families.base import PRE_LOGITS
from ftlens.models.textmodel import is_text_input, masked_reduce, split_input, tokenize
from ftlens.models.wrapper import ModelWrapper

__all__ = ["TextWrapper", "is_text_model"]


def is_text_model(model: Any) -> bool:
    return isinstance(model, TextWrapper)


class TextWrapper(ModelWrapper):
    """A text model with its tokenizer, fixed length and ordered layers (see the module docstring).

    Attributes (besides :class:`ModelWrapper`'s): ``max_length`` (``T``), ``embed_dim`` (``D``),
    ``tokenizer``.
    """

    def __init__(self, module: torch.nn.Module, *, spec: str, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, input_size: Sequence[int] | None = None,
                 **kwargs: Any) -> None:
        self._mask: torch.Tensor | None = None
        size = (int(module.max_length), int(module.embed_dim) + 1)
        super().__init__(module, spec=spec, mean=(), std=(), input_size=size, **kwargs)

    # ------------------------------------------------------------------ the input
    @property
    def max_length(self) -> int:
        return int(self.module.max_length)

    @property
    def embed_dim(self) -> int:
        return int(self.module.embed_dim)

    @property
    def tokenizer(self) -> Any:
        return self.module.tokenizer

    def _set_input_size(self, input_size: Sequence[int]) -> None:
        size = tuple(int(s) for s in input_size)
        if size != (self.max_length, self.embed_dim + 1) or len(size) != 2:
            raise ImageSizeError(f"{self.name} reads inputs of shape (n, {self.max_length}, 2) (tokens) or "
                                 f"(n, {self.max_length}, {self.embed_dim + 1}) (word vectors), not {size}; "
                                 "load it with max_length=... to change the length")
        self._adopt_input_size(size)

    def set_max_length(self, max_length: int) -> None:
        """Read texts as ``max_length`` tokens from now on (recorded in checkpoints)."""
        t = int(max_length)
        if t == self.max_length:
            return
        config = self.module.body.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if t < 2 or (limit is not None and t > int(limit) - (2 if config.model_type == "roberta" else 0)):
            raise TextError(f"max_length must be in [2, {limit}] for {self.name}, got {t}")
        self.module.max_length = t
        self.source = dataclasses.replace(self.source, kwargs={**self.source.kwargs, "max_length": t})
        self._set_input_size((t, self.embed_dim + 1))

    def tokenize(self, texts: Any) -> torch.Tensor:
        """A string, strings or a tokenised batch -> tokens ``(n, T, 2)`` int64 (the model's tokenizer)."""
        return tokenize(self.tokenizer, texts, self.max_length)

    def embed(self, x: Any) -> torch.Tensor:
        """Any input -> word vectors ``(n, T, D + 1)`` float32 on the CPU, through this model's table."""
        x = self.as_input(x)
        if x.is_floating_point():
            return x.detach().float().cpu()
        return self.module.embed(x.to(self.device)).float().cpu()

    def as_input(self, x: Any) -> torch.Tensor:
        """Texts, a tokenised batch or an input tensor -> an input tensor (checked)."""
        if is_text_input(x):
            x = self.tokenize(x)
        self.check_images(x)
        return x

    def check_images(self, x: Any) -> None:
        """:class:`~ftlens.errors.TextError` unless ``x`` is tokens ``(n, T, 2)`` (ids in the
        vocabulary, mask 0/1, a real first token) or finite word vectors ``(n, T, D + 1)`` (mask 0/1)."""
        t, d = self.max_length, self.embed_dim
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            raise TextError(f"{self.name} reads text, not images {tuple(x.shape)}; give texts (a text dataset: "
                            "fortunes-topics, csv:PATH, textfolder:PATH, hf-text:NAME)")
        if not isinstance(x, torch.Tensor):
            raise TextError(f"{self.name} reads text: give a string, a list of strings, a tokenised batch "
                            f"({{'input_ids': ...}}) or a tensor (n, {t}, 2) / (n, {t}, {d + 1}); got {type(x).__name__}")
        tokens_form = x.dim() == 3 and x.shape[2] == 2 and not x.is_floating_point() and not x.is_complex()
        vectors_form = x.dim() == 3 and x.shape[2] == d + 1 and x.is_floating_point()
        if x.shape[1:2] != (t,) or not (tokens_form or vectors_form):
            raise TextError(f"text inputs of {self.name} are tokens (n, {t}, 2) int64 or word vectors "
                            f"(n, {t}, {d + 1}) float, got {tuple(x.shape)} {x.dtype}; pass strings to tokenise them")
        if not x.numel():
            return
        kind, values, mask = split_input(x)
        raw_mask = x[..., -1]
        if not bool(((raw_mask == 0) | (raw_mask == 1)).all()):
            raise TextError("the attention mask (the last channel) of a text input must be 0 or 1")
        if not bool(mask[:, 0].all()):
            raise TextError("a text input has no real first token (mask 0 at position 0); every text needs one "
                            "token at least, and padding goes on the right")
        if kind == "tokens":
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= self.module.vocab_size:
                raise TextError(f"token ids must be in [0, {self.module.vocab_size}) for {self.name}, got [{lo}, {hi}]; "
                                "was the batch tokenised by another model's tokenizer?")
        elif not bool(torch.isfinite(values).all()):
            raise TextError("word-vector inputs contain NaN or inf")

    @property
    def domain(self) -> InputDomain:
        """Word vectors: unbounded; steps and noise starts in units of the spread of this model's
        word-embedding table (``centre + scale * z``: the table's mean and standard deviation over
        every entry, float64), so that a start looks like word vectors; the mask channel is taken
        from the text being inverted and never changes."""
        table = self.module.word_embeddings.detach()
        std, mean = torch.std_mean(table.double())
        return InputDomain(low=None, high=None, scale=float(std), centre=float(mean), fixed_last=True)

    def layer_fingerprint(self, layer: str) -> str:
        """:meth:`ModelWrapper.layer_fingerprint` with the input domain (it comes from the word table,
        which runs before no layer when the input is word vectors, but sets an inversion's starts)."""
        base = super().layer_fingerprint(layer)
        return hashlib.sha256(f"{base}|{sorted(self.domain.describe().items())}".encode()).hexdigest()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Text inputs are not normalised (and word vectors are not clamped)."""
        return x

    def representations(self, images: Any, layers: None | str | Sequence[str] = None, **kwargs: Any
                        ) -> dict[str, torch.Tensor]:
        """``{layer: float32 (n, features)}`` of texts (strings, a tokenised batch, tokens or word
        vectors; see :class:`ModelWrapper.representations` for the other arguments)."""
        return super().representations(self.as_input(images), layers, **kwargs)

    def forward_layers(self, images: Any, layers: None | str | Sequence[str] = None, *, clone: bool = True
                       ) -> dict[str, torch.Tensor]:
        if not isinstance(images, torch.Tensor):
            images = self.as_input(images)
        return super().forward_layers(images, layers, clone=clone)

    # ------------------------------------------------------------------ masked reduction
    def _capture(self, images: torch.Tensor, layers: list[str], *, clone: bool) -> dict[str, torch.Tensor]:
        self._mask = split_input(images)[2]
        try:
            return super()._capture(images, layers, clone=clone)
        finally:
            self._mask = None

    def _reduce(self, layer: str, t: torch.Tensor) -> torch.Tensor:
        if layer == PRE_LOGITS or self._mask is None:
            return t.reshape(t.shape[0], -1)
        return masked_reduce(t, self._mask, self.tokens, has_cls=not self.module.causal, layer=layer)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.max_length, "pooling": self.module.pool.mode}
