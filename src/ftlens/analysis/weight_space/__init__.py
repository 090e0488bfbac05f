"""Weight-space diff: what finetuning changed in the weights themselves, per layer.

- :func:`weight_diff` (``ftlens.weight_diff``, ``ftlens weights``): relative change, cosine,
  singular spectrum and effective rank of ``ΔW``, BatchNorm statistics moved; a LoRA finetune's
  own ``B A * scale`` (:mod:`~ftlens.analysis.weight_space.adapter`).
- :func:`moved_vs_forgetting`: do the layers whose weights moved most also forget most (a rank
  correlation over layers with its interval)?

Layout: ``spectrum`` (pure functions of a ``ΔW``), ``tables`` (state dicts -> tables), ``adapter``
(LoRA ``ΔW`` from PEFT), ``result`` (:class:`WeightDiff`, save / load), ``api`` (loading the
models), ``forgetting`` (the relation to a comparison's forgetting).
"""

from __future__ import annotations

from ftlens.analysis.weight_space.api import weight_diff
from ftlens.analysis.weight_space.forgetting import moved_vs_forgetting
from ftlens.analysis.weight_space.result import WeightDiff, load_weight_diff
from ftlens.analysis.weight_space.spectrum import (
           effective_rank,
           numerical_rank,
           singular_values,
           stable_rank,
)

__all__ = ["WeightDiff", "effective_rank", "load_weight_diff", "moved_vs_forgetting", "numerical_rank",
           "singular_values", "stable_rank", "weight_diff"]
