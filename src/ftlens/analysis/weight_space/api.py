""":func:`weight_diff`: what finetuning changed in the weights, per layer, with the layer names and
numbers of every other table (:mod:`ftlens.layers`)."""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ftlens import io
from ftlens.analysis.weight_space.adapter import (
    adapter_deltas,
    adapter_deltas_from_dir,
    is_peft_model,
)
from ftlens.analysis.weight_space.result import WeightDiff
from ftlens.analysis.weight_space.tables import cosine_from_norms, diff_tables
from ftlens.layers import layer_numbers
from ftlens.models import ModelWrapper, load_model
from ftlens.models.families.base import INPUT_OF

__all__ = ["weight_diff"]


def _load(spec: Any, layers: Sequence[str] | None, **kwargs: Any) -> ModelWrapper:
    return spec if isinstance(spec, ModelWrapper) else load_model(spec, layers=layers, **kwargs)


def _prefix(model: ModelWrapper, layer: str) -> str | None:
    """The module whose tensors make up ``layer`` (None for a pseudo-layer read at a module's input)."""
    target = model.defaults.aliases.get(layer, layer)
    return None if target.startswith(INPUT_OF) else target


def _bn_eps(module: nn.Module) -> dict[str, float]:
    return {name: float(m.eps) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats}


def weight_diff(
    pretrained: Any,
    finetuned: Any,
    *,
    layers: Sequence[str] | str | None = None,
    spectrum: bool = True,
) -> WeightDiff:
    """Per layer: how far the finetuned weights moved from the pretrained ones (float64).

    Args:
        pretrained, finetuned: models (wrappers, modules or specs for :func:`ftlens.load_model`,
            e.g. ``"RUN_DIR@5"``). A LoRA finetune (``"peft:ADAPTER_DIR"``, read against
            ``pretrained`` as its base, or a ``PeftModel`` object) contributes its adapter's own
            ``ΔW = B A * scale`` for the adapted weights (``source = "adapter"``).
        layers: analysis layers (names / globs; default: the pretrained model's layers). A layer
            holds every tensor under its module (``blocks.3.*``).
        spectrum: compute the singular spectrum of every matrix's ``ΔW`` (the SVDs are the cost).

    Returns:
        a :class:`~ftlens.analysis.weight_space.result.WeightDiff`: ``per_layer`` (relative change
        ``||ΔW|| / ||W_pt||``, cosine, effective and stable rank of ``ΔW``, BatchNorm statistics
        moved), ``tensors``, ``spectrum`` and ``config`` (with the totals over all parameters).
        An exact copy gives exactly 0 change, cosine 1 and effective rank 0 everywhere. The models
        are read, never changed.
    """
    t0 = time.perf_counter()
    requested = [layers] if isinstance(layers, str) else (list(layers) if layers is not None else None)
    pt = _load(pretrained, requested)
    adapter: dict[str, Any] | None = None
    deltas: dict[str, torch.Tensor] = {}
    if isinstance(finetuned, str) and finetuned.startswith("peft:"):
        ft = load_model(finetuned, base=pt, layers=requested)
        deltas = adapter_deltas_from_dir(pt.module, finetuned.split(":", 1)[1], pt.name)
        adapter = {**ft.info.get("lora", {}), "tensors": sorted(deltas)}
    elif is_peft_model(finetuned):
        ft = load_model(finetuned, layers=requested)
        deltas = adapter_deltas(finetuned)
        adapter = {**ft.info.get("lora", {}), "tensors": sorted(deltas)}
    else:
        ft = _load(finetuned, requested)
    layer_list = pt.resolve_layers(requested) if requested is not None else pt.layers
    numbers = layer_numbers(layer_list, pt)
    pt_state, ft_state = pt.module.state_dict(), ft.module.state_dict()
    if deltas and not set(deltas) <= set(pt_state) and all(f"body.{k}" in pt_state for k in deltas):
        deltas = {f"body.{k}": v for k, v in deltas.items()}  # a PeftModel of the module a family wraps
    unknown = sorted(set(deltas) - set(pt_state))
    if unknown:  # the adapter names weights the base does not have: fall back to the merged difference
        deltas = {k: v for k, v in deltas.items() if k in pt_state}
    params = {n for n, _ in pt.module.named_parameters()} | {n for n, _ in ft.module.named_parameters()}
    per_layer, tensors, spectra = diff_tables(
        pt_state, ft_state, [(layer, n, _prefix(pt, layer)) for layer, n in zip(layer_list, numbers, strict=True)],
        parameters=params, deltas=deltas, bn_eps=_bn_eps(pt.module), spectrum=spectrum)
    same = tensors[(tensors["kind"] == "parameter") & (tensors["status"] == "same shape")]
    na, nb, nd = (math.sqrt(float((same[c] ** 2).sum())) for c in ("norm_pretrained", "norm_finetuned", "norm_delta"))
    config: dict[str, Any] = {
        "kind": "ftlens.weights",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pretrained": pt.describe(), "finetuned": ft.describe(),
        "layers": layer_list, "layer_numbers": numbers,
        "total": {"relative_change": nd / na if na > 0 else float("nan"), "cosine": cosine_from_norms(na, nb, nd),
                  "n_parameters": int(same["numel"].sum()),
                  "outside_layers_relative_change": _outside(same)},
        "differs": tensors.loc[tensors["status"] != "same shape", ["tensor", "status"]].values.tolist(),
        "arithmetic": "float64",
        "spectrum": bool(spectrum),
        "versions": io.versions(),
        "seconds": time.perf_counter() - t0,
    }
    if adapter is not None:
        config["adapter"] = {**adapter, "not_in_base": unknown}
    return WeightDiff(per_layer, tensors, spectra, config)


def _outside(same) -> float:
    """Relative change of the parameters outside every analysis layer (stem, embeddings, head)."""
    out = same[same["layer"] == ""]
    na = math.sqrt(float((out["norm_pretrained"] ** 2).sum()))
    return math.sqrt(float((out["norm_delta"] ** 2).sum())) / na if na > 0 else float("nan")
