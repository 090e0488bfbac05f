"""Checkpoint files and run directories: safetensors with the architecture, preprocessing and
input size in their metadata, written atomically; ``RUN_DIR@EPOCH`` specs.

Metadata keys: ``ftlens_spec`` and ``ftlens_kwargs`` (how to rebuild the architecture: a family
spec and its build kwargs), ``ftlens_mean``, ``ftlens_std``, ``ftlens_input_size`` and
``ftlens_info`` (notes such as a merged LoRA adapter).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ftlens import io
from ftlens.errors import CheckpointError

if TYPE_CHECKING:
    from ftlens.models.wrapper import ModelWrapper

#: Keys of extra task heads stored beside a backbone in a checkpoint.
TASK_HEAD_PREFIX = "task_head."
CHECKPOINT_DIR = "checkpoints"

_RUN_EPOCH = re.compile(r"^(?P<dir>.+?)(?:@(?P<at>\w+)|[/\\]epoch[_-]?(?P<ep>\d+))$")


def looks_like_run_spec(spec: str) -> bool:
    m = _RUN_EPOCH.match(spec)
    return bool(m) and not Path(spec).is_file() and Path(m.group("dir")).is_dir()


def resolve_run_checkpoint(spec: str | os.PathLike) -> Path:
    """``"RUN_DIR@3"`` / ``"RUN_DIR@last"`` / ``"RUN_DIR/epoch_3"`` -> the checkpoint file."""
    m = _RUN_EPOCH.match(str(spec))
    if not m:
        raise CheckpointError(f"{spec!r} is not a run spec; use RUN_DIR@EPOCH or RUN_DIR@last")
    run = Path(m.group("dir"))
    ckpts = sorted((run / CHECKPOINT_DIR).glob("epoch_*.safetensors"))
    if not ckpts:
        raise CheckpointError(f"run directory {run} has no checkpoints under {run / CHECKPOINT_DIR}")
    at = m.group("at") if m.group("at") is not None else m.group("ep")
    if at == "last":
        return ckpts[-1]
    if at is None or not at.isdigit():
        raise CheckpointError(f"epoch {at!r} in {spec!r} is not a number or 'last'")
    path = run / CHECKPOINT_DIR / f"epoch_{int(at):03d}.safetensors"
    if not path.exists():
        have = [int(p.stem.split("_")[1]) for p in ckpts]
        raise CheckpointError(f"run {run} has no checkpoint for epoch {int(at)}; epochs present: {have}")
    return path


def run_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{epoch: path}`` of every complete checkpoint in a run directory, in order."""
    ckpts = sorted((Path(run_dir) / CHECKPOINT_DIR).glob("epoch_*.safetensors"))
    return {int(p.stem.split("_")[1]): p for p in ckpts}


def checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:03d}.safetensors"


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            return state, meta
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated: re-create it (a finetuning run resumes from its last complete epoch)"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, {}


def checkpoint_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The ftlens entries of a checkpoint's metadata, decoded (absent keys left out)."""
    out: dict[str, Any] = {}
    for key in ("spec", "kwargs", "mean", "std", "input_size", "info"):
        raw = meta.get(f"ftlens_{key}")
        if raw is None:
            continue
        try:
            out[key] = raw if key == "spec" else json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint metadata ftlens_{key} is not valid JSON ({exc})") from exc
    return out


def save_checkpoint(
    wrapper: ModelWrapper,
    path: str | os.PathLike,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the wrapper's weights (plus ``task_head.*`` extras) as safetensors, atomically.

    The file records the architecture (family spec and build kwargs), mean, std and input size,
    so that ``load_model(path)`` rebuilds the same model alone. Written to a temporary file in
    the same directory, then renamed, so a killed process never leaves a half-written checkpoint.
    """
    if wrapper.source.spec == "module":
        raise CheckpointError(
            "save_checkpoint needs a model loaded from a spec (timm:, torchvision:, hf:, open_clip:, ftlens:); "
            "a user's nn.Module cannot be rebuilt from a file: save its state_dict yourself"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in wrapper.module.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        key = k if k.startswith(TASK_HEAD_PREFIX) else TASK_HEAD_PREFIX + k
        state[key] = v.detach().cpu().contiguous()
    meta = {
        "ftlens_spec": wrapper.source.spec,
        "ftlens_kwargs": json.dumps(wrapper.source.kwargs, sort_keys=True, default=str),
        "ftlens_mean": json.dumps(list(wrapper.mean)),
        "ftlens_std": json.dumps(list(wrapper.std)),
        "ftlens_input_size": json.dumps(list(wrapper.input_size)),
        **({"ftlens_info": json.dumps(wrapper.info, sort_keys=True, default=str)} if wrapper.info else {}),
        **(metadata or {}),
    }
    with io.atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path
