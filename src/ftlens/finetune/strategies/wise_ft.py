"""``wise-ft``: WiSE-FT (Wortsman et al., 2022), weight-space ensembles of two checkpoints.

No training: for each ``a`` of ``wise_alphas`` the weights ``(1 - a) * theta_from + a * theta_to``
are evaluated and saved as epoch ``i`` of the run directory (phase ``wise``, column ``alpha``).
``wise_from`` defaults to epoch 0 of ``wise_to``'s run. The endpoints are evaluated with the task
model of the strategy that wrote ``wise_to`` (FLYP: both towers are interpolated and the head is
recomputed from the interpolated text tower, with the FLYP run's prompts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ftlens import io
from ftlens.errors import CheckpointError, ConfigError
from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.evaluation import test_metrics
from ftlens.finetune.loop import Runtime
from ftlens.finetune.registry import find_strategy
from ftlens.finetune.result import RunResult
from ftlens.finetune.robustness import corrupted_sources
from ftlens.finetune.rundir import RunDir, metrics_frame, read_checkpoint, save_state, write_metrics
from ftlens.finetune.sources import load_test_source
from ftlens.finetune.strategies.base import Strategy
from ftlens.models import load_model, resolve_run_checkpoint, save_checkpoint


class WiseFT(Strategy):
    name = "wise-ft"
    aliases = ("wiseft", "wise")
    summary = "interpolate the weights of two checkpoints (no training)"
    pretrained_start = False
    compared = False  # its last checkpoint is wise_to's weights again
    needs_model = False  # read from wise_to

    def check(self, cfg):
        if not cfg.wise_to:
            raise ConfigError(
                "strategy wise-ft needs wise_to (--wise-to RUN@last), the finetuned endpoint, and "
                "optionally wise_from (default: epoch 0 of the same run)"
            )

    def plan_phases(self, cfg):
        return []

    def run(self, cfg, runtime, *, resume, overwrite, stop_after, progress):
        return run_wise(cfg, runtime, overwrite=overwrite)


def _resolve_endpoint(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    try:
        return resolve_run_checkpoint(spec)
    except CheckpointError:
        raise
    except Exception as exc:  # pragma: no cover - defensive
        raise CheckpointError(f"cannot resolve checkpoint {spec!r}: {exc}") from exc


def run_wise(cfg: FinetuneConfig, runtime: Runtime, *, overwrite: bool) -> RunResult:
    """Interpolate ``wise_from`` and ``wise_to`` for each alpha: one checkpoint and one metrics row each.

    Epoch ``i`` of the run directory is alpha ``wise_alphas[i]``.
    """
    to_path = _resolve_endpoint(cfg.wise_to)
    wise_from = cfg.wise_from
    if wise_from is None:
        m = re.match(r"^(.+?)(?:@\w+|[/\\]epoch[_-]?\d+)$", cfg.wise_to)
        if not m or not Path(m.group(1)).is_dir():
            raise ConfigError("wise_from is required when wise_to is a checkpoint file rather than RUN@EPOCH")
        wise_from = f"{m.group(1)}@0"
    from_path = _resolve_endpoint(wise_from)
    cfg = cfg.replace(wise_from=str(wise_from))
    theta_0, _ = read_checkpoint(from_path)
    theta_1, meta1 = read_checkpoint(to_path)
    task = meta1.get("ftlens_task", cfg.task)
    if task != cfg.task:
        raise ConfigError(f"wise_to {cfg.wise_to} is a {task} checkpoint but task is {cfg.task}; pass --task {task}")
    wrapper = load_model(to_path)
    if cfg.model is None:
        cfg = cfg.replace(model=wrapper.source.spec)
    endpoint = find_strategy(meta1.get("ftlens_strategy")) or Strategy()
    run_config = to_path.parent.parent / "config.yaml"
    if endpoint.checkpoint_options and run_config.is_file():  # e.g. the FLYP run's own prompts
        saved = FinetuneConfig.from_yaml(run_config)
        cfg = cfg.replace(**{k: getattr(saved, k) for k in endpoint.checkpoint_options})
    d = RunDir(cfg.out)
    if runtime.is_main:
        d.prepare(cfg, resume=True, overwrite=overwrite)
        d.clean_after(None)
        io.write_text(d.config, cfg.to_yaml())
    runtime.barrier()
    size = tuple(wrapper.input_size[1:])
    test_src, test = load_test_source(cfg, size, runtime, wrapper)
    corrupted = corrupted_sources(cfg, test_src, size)
    for src in corrupted.values():
        src.to(runtime.device)
    model = endpoint.checkpoint_model(cfg, wrapper, task, getattr(test, "classes", None)).to(runtime.device)
    rows: list[dict[str, Any]] = []
    for i, alpha in enumerate(cfg.wise_alphas):
        weights = interpolate_state_dicts(theta_0, theta_1, alpha)
        model.load_weights(weights, f"interpolation alpha={alpha}")
        model.before_evaluate()
        row: dict[str, Any] = {"epoch": i, "phase": "wise", "alpha": float(alpha)}
        row.update(test_metrics(model, test_src, corrupted, task, runtime, cfg.eval_batch_size))
        rows.append(row)
        if runtime.is_main:
            meta = {"ftlens_task": task, "ftlens_epoch": str(i), "ftlens_phase": "wise",
                    "ftlens_strategy": WiseFT.name, "ftlens_wise_alpha": json.dumps(float(alpha))}
            save_checkpoint(wrapper, d.checkpoint(i), extra_tensors=model.extra_tensors(), metadata=meta)
            save_state(d.state(i), {"epoch": i, "metrics": rows})
            if i > 0:
                d.state(i - 1).unlink(missing_ok=True)
            write_metrics(d.metrics, rows, None)
        runtime.barrier()
    df = metrics_frame(rows, None)
    return RunResult(run_dir=d.path, metrics=df, model=load_model(f"{d.path}@last"), config=cfg)

def interpolate_state_dicts(
    theta_0: Mapping[str, torch.Tensor], theta_1: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta_0 + alpha * theta_1`` key by key (WiSE-FT).

    alpha 0 and 1 return exact copies of the endpoints. Non-float tensors (counters) are taken
    from the nearer endpoint. Keys and shapes must agree: a :class:`CheckpointError` lists them.
    """
    k0, k1 = set(theta_0), set(theta_1)
    if k0 != k1:
        only0, only1 = sorted(k0 - k1), sorted(k1 - k0)
        raise CheckpointError(
            "WiSE-FT endpoints have different keys (different architectures or task heads): "
            f"only in wise_from: {only0[:6]}; only in wise_to: {only1[:6]}. Interpolate two "
            "checkpoints of the same run (e.g. RUN@0 and RUN@last of an lp-ft run)"
        )
    shapes = [k for k in theta_0 if tuple(theta_0[k].shape) != tuple(theta_1[k].shape)]
    if shapes:
        raise CheckpointError(f"WiSE-FT endpoints differ in shape for {shapes[:6]}; they must share the architecture")
    alpha = float(alpha)
    out: dict[str, torch.Tensor] = {}
    for k, a in theta_0.items():
        b = theta_1[k]
        if alpha == 0.0:
            out[k] = a.clone()
        elif alpha == 1.0:
            out[k] = b.clone()
        elif a.is_floating_point():
            out[k] = ((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)
        else:
            out[k] = (b if alpha >= 0.5 else a).clone()
    return out


STRATEGY = WiseFT()
