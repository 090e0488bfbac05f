"""The epoch loop of a finetuning run: set up, resume, train each epoch, evaluate, save.

A run that was killed resumes from its last complete epoch (:class:`~ftlens.finetune.rundir.RunDir`)
and ends bit-identical (CPU) to a run that was never interrupted, because each epoch's randomness
is seeded by ``(seed, epoch)``. A complete run without ``state/`` is returned as it is (usable for
analysis and as a starting point), never retrained.

What depends on the strategy is asked of it (:class:`~ftlens.finetune.strategies.Strategy`): the
phase of each epoch, the parameters that train in a phase, a penalty, the task model.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import OutputError
from ftlens.finetune.build import build_task_model, start_model, warn_if_random
from ftlens.finetune.config import PAPER_WARMUP_STEPS, FinetuneConfig, default_lr
from ftlens.finetune.evaluation import source_features, summary_line, test_metrics
from ftlens.finetune.linear_probe import LinearProbe, fit_linear_probe
from ftlens.finetune.loop import (
    EpochSettings,
    Runtime,
    epoch_seed,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from ftlens.finetune.result import RunResult
from ftlens.finetune.robustness import corrupted_sources
from ftlens.finetune.rundir import (
    STATE_ADVICE,
    RunDir,
    load_state,
    metrics_frame,
    read_checkpoint,
    save_state,
    write_metrics,
)
from ftlens.finetune.sources import default_flip, load_sources
from ftlens.finetune.strategies import get_strategy
from ftlens.finetune.strategies.base import (
    HEAD_ONLY_PHASES,
    ft_start_epoch,
    set_train_mode,
    set_trainable,
)
from ftlens.models import load_model, save_checkpoint


class TrainingRun:
    """One run of a training strategy in its run directory: ``TrainingRun(cfg, runtime, progress).run(...)``."""

    def __init__(self, cfg: FinetuneConfig, runtime: Runtime, progress: bool | None) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.show_progress = progress
        self.dir = RunDir(cfg.out)
        self.strategy = get_strategy(cfg.strategy)

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.wrapper = start_model(cfg)
        self.train_src, self.test_src, self.num_classes = load_sources(cfg, self.wrapper)
        classes = getattr(self.train_src.dataset, "classes", None)
        self.model = build_task_model(cfg, self.wrapper, self.num_classes, classes).to(self.runtime.device)
        self.corrupted = corrupted_sources(cfg, self.test_src, tuple(self.wrapper.input_size[1:]))
        device = self.runtime.device
        for src in (self.train_src, self.test_src, *self.corrupted.values()):
            src.to(device)
        self.phases = self.strategy.plan_phases(cfg)
        self.ft_start = ft_start_epoch(self.phases) if self.strategy.measures_energy else None
        world = self.runtime.world_size
        self.per_rank_batch = max(1, cfg.batch_size // world)
        per_rank_examples = len(self.train_src) // world  # train_epoch gives every rank as many
        self.steps_per_epoch = max(1, math.ceil(per_rank_examples / self.per_rank_batch))
        # resolve what depends on the data
        updates: dict[str, Any] = {}
        if hasattr(self.wrapper, "tokenize"):  # text: no image augmentation
            updates.update(augment=False, flip=False, crop_padding=0)
        if cfg.crop_padding is None and "crop_padding" not in updates:
            updates["crop_padding"] = max(1, int(self.wrapper.input_size[1]) // 8)
        if cfg.flip is None and "flip" not in updates:
            updates["flip"] = default_flip(cfg.data)
        if cfg.lr is None:
            updates["lr"] = default_lr(cfg.strategy, text=hasattr(self.wrapper, "tokenize"))
        if updates:
            self.cfg = cfg = cfg.replace(**updates)

    def _phase_steps(self, phase: str) -> int:
        return self.phases.count(phase) * self.steps_per_epoch

    def _warmup(self, total: int) -> int:
        w = self.cfg.warmup_steps
        if w is None:
            return min(PAPER_WARMUP_STEPS, total // 10)
        return min(w, total)

    # ---------------------------------------------------------------- run
    def run(self, *, resume: bool, overwrite: bool, stop_after: int | None) -> RunResult:
        self._setup()
        cfg, rt, d = self.cfg, self.runtime, self.dir
        if rt.is_main:
            d.prepare(cfg, resume=resume, overwrite=overwrite)
        rt.barrier()
        last = d.last_complete() if resume else None
        if resume and d.is_complete_without_state(len(self.phases)) and (last is None or last < len(self.phases)):
            return self._shared_result()
        d.check_no_stray_checkpoints(last)
        if rt.is_main:
            io.write_text(d.config, cfg.to_yaml())
            d.clean_after(last)
            warn_if_random(cfg, self.wrapper)
        rt.barrier()
        self.rows: list[dict[str, Any]] = []
        self.energy: dict[str, Any] | None = None
        self.probe: dict[str, Any] | None = None
        self.seconds: dict[str, float] = {}
        self.optimizer = None
        self.scheduler = None
        self.opt_phase: str | None = None
        self.ddp_model: torch.nn.Module = self.model
        self.params: list[torch.nn.Parameter] = []
        state: dict[str, Any] | None = None
        if last is not None:
            state = load_state(d.state(last))
            weights, _ = read_checkpoint(d.checkpoint(last))
            self.model.load_weights(weights, str(d.checkpoint(last)))
            self.rows = list(state["metrics"])
            self.energy = state.get("energy")
            self.probe = state.get("linear_probe")
            self.seconds = dict(state.get("seconds", {}))
            start = last
        else:
            self._epoch_zero()
            start = 0
        tracker = self._tracker()
        self.monitor = self._monitor(last)
        if last is None:
            self._monitor_epoch(0, self.rows[-1], tracker)
            tracker.log(self.rows[-1], 0)
        self.start_weights = None
        if self.strategy.uses_start_weights:  # the backbone of epoch 0 (the starting point), also after a resume
            weights0, _ = read_checkpoint(d.checkpoint(0))
            self.start_weights = {name: weights0[name.removeprefix("backbone.")].to(rt.device)
                                  for name, _ in self.model.backbone_parameters()}
        total = len(self.phases)
        end = total if stop_after is None else min(total, max(int(stop_after), start))
        show = self.show_progress
        if show is None:
            from ftlens.progress import enabled

            show = enabled()
        bar = None
        if show and rt.is_main:
            from ftlens.progress import make_progress

            bar = make_progress()
        with bar if bar is not None else contextlib.nullcontext():
            epoch_task = step_task = None
            if bar is not None:
                epoch_task = bar.add_task(f"{cfg.strategy} {Path(cfg.out).name}", total=total, completed=start, info="")
                step_task = bar.add_task("epoch", total=self.steps_per_epoch, info="")
            for epoch in range(start + 1, end + 1):
                phase = self.phases[epoch - 1]
                if bar is not None:
                    bar.reset(step_task, total=self.steps_per_epoch, description=f"epoch {epoch} ({phase})")
                on_step = (lambda: bar.advance(step_task)) if bar is not None else None
                tic = time.perf_counter()
                row = self._epoch(epoch, phase, state if epoch == start + 1 else None, on_step)
                self.seconds[str(epoch)] = time.perf_counter() - tic
                self._save(epoch)
                self._monitor_epoch(epoch, row, tracker)
                tracker.log(row, epoch)
                if bar is not None:
                    bar.advance(epoch_task)
                    bar.update(epoch_task, info=summary_line(row))
        tracker.close()
        df = metrics_frame(self.rows, self.energy)
        rt.barrier()
        model = load_model(f"{d.path}@last")
        monitor = dict(self.monitor.summary) if self.monitor is not None else None
        return RunResult(run_dir=d.path, metrics=df, model=model, config=cfg, energy=self.energy,
                         linear_probe=self.probe, completed=end >= total, monitor=monitor)

    def _shared_result(self) -> RunResult:
        """A finished run without its training states: its files as they are, nothing trained."""
        d = self.dir
        try:
            df = pd.read_csv(d.metrics)
            if "epoch" not in df.columns or len(df) != len(self.phases) + 1:
                raise ValueError(f"{len(df)} rows, expected {len(self.phases) + 1} with an 'epoch' column")
        except Exception as exc:
            raise OutputError(f"{d.metrics} cannot be read ({type(exc).__name__}: {exc}); {STATE_ADVICE}") from None
        energy = io.read_json(d.energy) if d.energy.is_file() else None
        probe = io.read_json(d.probe) if d.probe.is_file() else None
        return RunResult(run_dir=d.path, metrics=df, model=load_model(f"{d.path}@last"), config=self.cfg,
                         energy=energy, linear_probe=probe, completed=True)

    def _tracker(self):
        """TensorBoard / W&B logging of each epoch's metrics (rank 0 only; a no-op when not asked for)."""
        from ftlens.tracking import Tracker

        cfg = self.cfg
        if not self.runtime.is_main:
            return Tracker(self.dir.path)
        return Tracker(self.dir.path, tensorboard=cfg.tensorboard, wandb_project=cfg.wandb,
                       name=Path(cfg.out).name if cfg.out else None, config=cfg.to_dict())

    def _monitor(self, last: int | None):
        """The forgetting monitor (rank 0, ``monitor_forgetting``), or None."""
        cfg, rt = self.cfg, self.runtime
        if not (cfg.monitor_forgetting and rt.is_main):
            return None
        from ftlens.finetune.monitor import ForgettingMonitor

        kwargs = dict(steps=cfg.monitor_steps, keep=cfg.monitor_keep,
                      device=rt.device if rt.device.type == "cuda" else None)
        if self.test_src.dataset is not None:
            monitor = ForgettingMonitor.for_run(self.dir.path, self.test_src.dataset, cfg.monitor_images, **kwargs)
        else:
            monitor = ForgettingMonitor(self.dir.path, self.test_src.images[: cfg.monitor_images].cpu(), **kwargs)
        monitor.forget_after(last if last is not None else -1)
        return monitor

    def _monitor_epoch(self, epoch: int, row: dict[str, Any], tracker) -> None:
        """Learning / forgetting of the saved epoch against epoch 0 into ``row`` (and metrics.csv, the
        state); the training's random streams are left as they were."""
        if self.monitor is None:
            return
        with torch.random.fork_rng(devices=[]):
            row.update(self.monitor.measure(epoch))
        state = load_state(self.dir.state(epoch))
        state["metrics"] = self.rows
        save_state(self.dir.state(epoch), state)
        write_metrics(self.dir.metrics, self.rows, self.energy)
        tracker.log(self.monitor.per_layer(epoch), epoch, prefix="monitor/")

    # ---------------------------------------------------------------- epochs
    def _epoch_zero(self) -> None:
        cfg = self.cfg
        tic = time.perf_counter()
        phase = self.strategy.initial_phase(cfg)
        row: dict[str, Any] = {"epoch": 0, "phase": phase, "lr": float("nan"), "train_loss": float("nan")}
        if cfg.task == "classification":
            row["train_acc"] = float("nan")
        if phase == "lp":
            self._fit_probe(row)
        self._evaluate(row, 0)
        self.rows.append(row)
        self.seconds["0"] = time.perf_counter() - tic
        self._save(0)

    def _fit_probe(self, row: dict[str, Any]) -> LinearProbe:
        cfg, rt = self.cfg, self.runtime
        self.model.eval()
        # LP-FT: the head is fitted on the features FT will train on (the same augmentation), so the
        # first FT steps start from a head that fits them (an un-augmented fit collapses FT's first epoch)
        augment = (int(cfg.crop_padding), bool(cfg.flip)) if cfg.augment and self.strategy.probe_sees_augmentation \
            else None
        feats, labels = source_features(self.wrapper, self.train_src, cfg.eval_batch_size, rt.device,
                                        augment=augment, seed=cfg.seed)
        probe = fit_linear_probe(feats, labels, self.num_classes, grid=cfg.lp_grid, val_fraction=cfg.lp_val_fraction,
                                 seed=cfg.seed, max_iter=cfg.lp_max_iter)
        probe.install(self.model.backbone)
        self.probe = probe.summary()
        train = evaluate(self.model, self.train_src, cfg.task, rt, cfg.eval_batch_size)
        row.update(train_loss=train["loss"], train_acc=train["acc"])
        return probe

    def _ensure_optimizer(self, phase: str, state: dict[str, Any] | None) -> None:
        if self.optimizer is not None and self.opt_phase == phase:
            return
        cfg, rt = self.cfg, self.runtime
        names = self.strategy.trainable_names(self.model, cfg, phase)
        params = set_trainable(self.model, names)
        lr = self.strategy.learning_rate(cfg, phase)
        optimizer = make_optimizer(params, cfg.optimizer, lr=lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, betas=cfg.betas)
        total = self._phase_steps(phase)
        scheduler = make_scheduler(optimizer, total, self._warmup(total))
        if state is not None and state.get("opt_phase") == phase and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        self.ddp_model, self.optimizer = rt.prepare(self.model, optimizer)
        self.scheduler, self.opt_phase, self.params = scheduler, phase, params

    def _epoch(self, epoch: int, phase: str, state: dict[str, Any] | None, on_step: Callable | None) -> dict:
        cfg, rt = self.cfg, self.runtime
        row: dict[str, Any] = {"epoch": epoch, "phase": phase}
        if phase == "lp" and cfg.task == "classification":
            row.update(lr=float("nan"), train_loss=float("nan"), train_acc=float("nan"))
            self._fit_probe(row)
            self.optimizer, self.opt_phase = None, None
        else:
            self._ensure_optimizer(phase, state)
            head_only = phase in HEAD_ONLY_PHASES
            penalty = self.strategy.penalty(cfg, self.model, phase, self.start_weights)
            settings = EpochSettings(
                task=cfg.task, batch_size=cfg.batch_size, augment=cfg.augment, padding=int(cfg.crop_padding),
                flip=bool(cfg.flip),
                frozen_backbone=head_only,
                label_smoothing=self.strategy.label_smoothing(cfg, phase),
                grad_clip=cfg.grad_clip, penalty=penalty, model_loss=self.strategy.model_loss,
            )
            set_train_mode(self.model, phase, cfg.freeze_bn)
            stats = train_epoch(self.ddp_model, self.train_src, self.optimizer, self.scheduler, self.params,
                                settings, rt, epoch_seed(cfg.seed, epoch), on_step)
            row.update(stats)
        self._evaluate(row, epoch)
        self.rows.append(row)
        return row

    def _evaluate(self, row: dict[str, Any], epoch: int) -> None:
        cfg, rt = self.cfg, self.runtime
        self.model.before_evaluate()
        row.update(test_metrics(self.model, self.test_src, self.corrupted, cfg.task, rt, cfg.eval_batch_size))
        if self.ft_start is not None and epoch == self.ft_start:
            train = evaluate(self.model, self.train_src, cfg.task, rt, cfg.eval_batch_size)
            key = "loss" if cfg.task == "classification" else "l1"
            self.energy = {"epoch": epoch, "train_loss": train[key], "strategy": cfg.strategy,
                           "hp_epochs": self.phases.count("hp")}
            if cfg.task == "classification":
                self.energy["train_acc"] = train["acc"]

    def _save(self, epoch: int) -> None:
        rt, d = self.runtime, self.dir
        if rt.is_main:
            optimizer_state = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate wraps it
            state = {
                "epoch": epoch,
                "opt_phase": self.opt_phase,
                "optimizer": optimizer_state.state_dict() if optimizer_state is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "metrics": self.rows,
                "energy": self.energy,
                "linear_probe": self.probe,
                "seconds": self.seconds,
            }
            save_state(d.state(epoch), state)
            meta = {"ftlens_task": self.cfg.task, "ftlens_epoch": str(epoch),
                    "ftlens_phase": str(self.rows[-1]["phase"]), "ftlens_strategy": self.cfg.strategy}
            save_checkpoint(self.wrapper, d.checkpoint(epoch), extra_tensors=self.model.extra_tensors(), metadata=meta)
            if epoch > 0:
                d.state(epoch - 1).unlink(missing_ok=True)
            write_metrics(d.metrics, self.rows, self.energy)
            if self.energy is not None:
                io.write_json(d.energy, self.energy)
            if self.probe is not None:
                io.write_json(d.probe, self.probe)
            io.write_json(d.info, {"versions": io.versions(), "device": str(rt.device), "world_size": rt.world_size,
                                   "seconds_per_epoch": self.seconds})
        rt.barrier()
