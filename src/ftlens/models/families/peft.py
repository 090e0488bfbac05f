"""``peft:ADAPTER_DIR`` with ``base=SPEC``: a LoRA (PEFT) finetune, analysed as its base model
with the adapters merged into the weights (``merge_and_unload``), so that it compares layer by
layer with the base. The wrapper's ``info["lora"]`` records the merge (adapter, rank, alpha,
target modules) for reports. A ``PeftModel`` object given to ``load_model`` is merged the same
way (on a copy). Needs ``pip install 'ftlens[peft]'``.

The adapter is applied to the base model as loaded (a timm model), or, for families that wrap
their models (Hugging Face, torchvision), to the wrapped model (``body``); an adapter that fits
neither (other module names or shapes) is a :class:`~ftlens.errors.ModelError`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from ftlens.errors import ModelError
from ftlens.models.families.base import Built, Family, pickled_weights_error


class PeftFamily(Family):
    prefix = "peft"
    package = "peft"
    extra = "peft"
    loads_models = True

    def build(self, name: str, *, pretrained: bool, base: Any = None, load: Callable[..., Any] | None = None,
              **kwargs: Any) -> Built:
        """``load`` (given by :func:`ftlens.models.load_model`) loads the base model from its spec."""
        peft = self.require()
        directory = Path(name)
        if kwargs.get("trust_remote_code"):
            raise ModelError(f"peft:{name}: ftlens never runs a model's own Python code (trust_remote_code)")
        if not (directory / "adapter_config.json").is_file():
            raise ModelError(f"{directory} is not a PEFT adapter directory (no adapter_config.json); save the "
                             "adapter with peft_model.save_pretrained(DIR)")
        refusal = pickled_weights_error(directory, "the PEFT adapter folder")
        if refusal is not None:  # before the base model is loaded: the fix is the adapter's
            raise refusal
        config = peft.PeftConfig.from_pretrained(str(directory))
        if base is None:
            base = config.base_model_name_or_path
            if not base or ":" not in str(base):
                raise ModelError(f"give the base model of the LoRA adapter {directory}: load_model('peft:{directory}', "
                                 "base='timm:NAME' or a checkpoint of it)")
        if not hasattr(base, "module") and load is None:
            raise ModelError(f"the LoRA adapter {directory} names its base {base!r} as a spec: load it with "
                             "ftlens.load_model('peft:DIR', base=...), which knows how to load the base")
        base_wrapper = base if hasattr(base, "module") else load(base, pretrained=pretrained, **kwargs)
        weights = read_adapter(directory)
        merged, where = _merge(peft, base_wrapper.module, config, weights, str(directory), base_wrapper.name)
        info = {**base_wrapper.info, "lora": lora_info(config, str(directory), base_wrapper.spec, where)}
        return Built(merged, base_wrapper.source, random_init=False, family=base_wrapper.family, info=info,
                     preprocessing={"mean": base_wrapper.mean, "std": base_wrapper.std,
                                    "input_size": base_wrapper.input_size},
                     name=f"{base_wrapper.name}+lora")

    def owns(self, module: nn.Module) -> bool:
        return hasattr(module, "peft_config") and hasattr(module, "merge_and_unload")

    def adopt(self, module: nn.Module) -> nn.Module:
        """A ``PeftModel``: a merged copy (the caller's model keeps its adapters)."""
        return copy.deepcopy(module).merge_and_unload()


def lora_info(config: Any, adapter: str, base: str, where: str = "") -> dict[str, Any]:
    targets = getattr(config, "target_modules", None)
    return {"merged": True, "adapter": adapter, "base": base, "r": getattr(config, "r", None),
            "alpha": getattr(config, "lora_alpha", None),
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            **({"applied_to": where} if where else {})}


def read_adapter(directory: Path) -> dict[str, Any]:
    path = directory / "adapter_model.safetensors"
    refusal = pickled_weights_error(directory, "the PEFT adapter folder")
    if refusal is not None:
        raise refusal
    if not path.is_file():
        raise ModelError(f"{directory} holds no adapter_model.safetensors (ftlens reads safetensors adapters only)")
    return load_file(str(path))


def apply_adapter(peft: Any, base: nn.Module, config: Any, weights: dict[str, Any], adapter: str,
                  base_name: str) -> tuple[nn.Module, str]:
    """``(PeftModel, where)``: the adapter applied to a copy of ``base`` (or of its ``body``: ``where``),
    its weights loaded strictly, not merged; the caller's ``base`` is unchanged."""
    candidates = [("", base)]
    if hasattr(base, "body"):
        candidates.append(("body", base.body))
    problems = []
    for where, target in candidates:
        try:
            model = peft.get_peft_model(copy.deepcopy(target), copy.deepcopy(config))
            result = peft.set_peft_model_state_dict(model, weights)
        except (ValueError, RuntimeError, KeyError) as exc:
            problems.append(f"{where or 'model'}: {str(exc).splitlines()[0]}")
            continue
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if unexpected or missing:
            problems.append(f"{where or 'model'}: {len(unexpected)} adapter tensors without a place, "
                            f"{len(missing)} LoRA weights not in the adapter")
            continue
        return model, where
    raise ModelError(f"the LoRA adapter {adapter} does not fit the base model {base_name} ({'; '.join(problems)}); "
                     "give the base model the adapter was trained on (base=...)")


def _merge(peft: Any, base: nn.Module, config: Any, weights: dict[str, Any], adapter: str,
           base_name: str) -> tuple[nn.Module, str]:
    """Apply the adapter to ``base`` (or its ``body``), load its weights strictly, merge."""
    model, where = apply_adapter(peft, base, config, weights, adapter, base_name)
    merged = model.merge_and_unload()
    if where:
        out = copy.deepcopy(base)
        setattr(out, where, merged)
        return out, where
    return merged, where
