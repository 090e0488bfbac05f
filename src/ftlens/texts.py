"""Texts as the API takes them, the counterpart of :mod:`ftlens.images`.

:func:`as_texts` recognises text inputs: a string, a list of strings, a tokenised batch (a
mapping with ``input_ids``, as a Hugging Face tokenizer returns it) or a text dataset of
:mod:`ftlens.data.text` (its ``texts``). A text model (:class:`~ftlens.models.text_wrapper.TextWrapper`)
tokenises them itself, so two models with different tokenizers read the same sentences;
:func:`model_inputs` gives one tensor that every compared model reads (the reference model's
word vectors, the continuous space of the inversions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ftlens.models.textmodel import is_text_input

__all__ = ["as_texts", "count", "input_note", "model_inputs", "pool_inputs"]


def as_texts(x: Any, n: int | None = None) -> str | list[str] | dict[str, Any] | None:
    """``x`` as texts (the first ``n``), or None when ``x`` is not text."""
    if hasattr(x, "texts") and not isinstance(x, (str, Mapping)):  # a text dataset
        x = list(x.texts)
    if not is_text_input(x):
        return None
    if isinstance(x, str):
        return [x]
    if isinstance(x, Mapping):
        if n is None:
            return dict(x)
        return {k: (v[:n] if hasattr(v, "__getitem__") and not isinstance(v, str) else v) for k, v in x.items()}
    return list(x)[:n] if n is not None else list(x)


def count(texts: Sequence[str] | Mapping[str, Any]) -> int:
    """How many texts (rows of a tokenised batch)."""
    if isinstance(texts, Mapping):
        ids = torch.as_tensor(texts["input_ids"])
        return 1 if ids.dim() == 1 else int(ids.shape[0])
    return len(texts)


def model_inputs(x: Any, reference: Any) -> Any:
    """Inputs as every compared model reads them: for a text model, texts (or tokens) become the
    ``reference`` model's word vectors ``(n, T, D + 1)``; anything else is returned as it is."""
    from ftlens.models.text_wrapper import is_text_model

    if not is_text_model(reference):
        return x
    texts = as_texts(x)
    return reference.embed(texts if texts is not None else x)


def pool_inputs(x: Any, reference: Any) -> torch.Tensor:
    """A comparison's pool: images as :func:`ftlens.images.as_images` reads them, or, for a text
    model, texts (a list, a tokenised batch, a text dataset, tokens) as ``reference``'s word vectors."""
    from ftlens.images import as_images
    from ftlens.models.text_wrapper import is_text_model

    if is_text_model(reference):
        return model_inputs(x, reference)
    return as_images(x)


def input_note(reference: Any, others: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a text comparison compares: the models as functions of ``reference``'s word vectors,
    and how far each other model's word-embedding table is from ``reference``'s (relative Frobenius
    norm of the difference; 0 when the tables are equal, as after ftlens finetuning of a frozen or
    unchanged table). None for image models."""
    from ftlens.models.text_wrapper import is_text_model

    if not is_text_model(reference):
        return None
    table = reference.module.word_embeddings.detach().double()
    change = {}
    for label, m in others.items():
        if not is_text_model(m) or tuple(m.module.word_embeddings.shape) != tuple(table.shape):
            change[label] = None
            continue
        other = m.module.word_embeddings.detach().double().to(table.device)
        change[label] = float((other - table).norm() / table.norm())
    return {"space": "word vectors (rows of the word-embedding table, before position and type embeddings), "
                     "the mask as the last channel",
            "texts_embedded_by": reference.name, "max_length": reference.max_length,
            "word_table_change": change}
