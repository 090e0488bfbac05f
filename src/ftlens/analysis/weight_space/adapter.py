"""A LoRA finetune's own ``ΔW``: ``B A * scale`` of each adapted module, in float64, from PEFT.

The merged weights of a LoRA finetune differ from the base by ``ΔW`` plus float32 rounding; the
adapter's own product has rank at most ``r`` exactly, so its spectrum shows what the adapter
amplifies without rounding noise. PEFT computes the product (``get_delta_weight``: scaling,
``fan_in_fan_out`` and convolution layouts included) on a float64 copy of the adapted model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["adapter_deltas", "adapter_deltas_from_dir", "is_peft_model"]

_PREFIX = "base_model.model."


def is_peft_model(module: Any) -> bool:
    """Whether ``module`` is a ``PeftModel`` (adapters not merged)."""
    return hasattr(module, "peft_config") and hasattr(module, "merge_and_unload")


def adapter_deltas(peft_model: nn.Module, where: str = "") -> dict[str, torch.Tensor]:
    """``{parameter name in the merged model: ΔW (float64)}`` of every LoRA-adapted module.

    ``where``: the submodule of the analysed model the adapter was applied to (``"body"`` for
    families that wrap their models), prefixed to the names. Several active adapters add up, as
    merging does. ``peft_model`` is not changed (the products come from a float64 copy).
    """
    model = copy.deepcopy(peft_model).double()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not (hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")):
                continue
            names = [a for a in getattr(module, "active_adapters", list(module.lora_A)) if a in module.lora_A]
            if not names:
                continue
            delta = sum(module.get_delta_weight(a).to(torch.float64) for a in names)
            plain = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
            out[".".join(p for p in (where, plain, "weight") if p)] = delta.cpu()
    return out


def adapter_deltas_from_dir(base: nn.Module, directory: str | Path, base_name: str = "the base model") -> dict[str, torch.Tensor]:
    """:func:`adapter_deltas` of the PEFT adapter saved in ``directory`` applied to (a copy of) ``base``."""
    from ftlens.models.families import FAMILIES
    from ftlens.models.families.peft import apply_adapter, read_adapter

    peft = FAMILIES["peft"].require()
    config = peft.PeftConfig.from_pretrained(str(directory))
    model, where = apply_adapter(peft, base, config, read_adapter(Path(directory)), str(directory), base_name)
    return adapter_deltas(model, where)
