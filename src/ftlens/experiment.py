"""An experiment: pretrain (optional) -> finetune runs -> compare -> dynamics -> correlation
-> distortion -> findings -> report. One code path for the embedded demo and the paper.

A config (YAML, :mod:`ftlens.experiment_config`) names a model, an optional pretraining run, a
downstream dataset, a list of finetuning runs (each a strategy/task with overrides of
``defaults``) and the analysis settings. :func:`run_experiment` executes the stages in order; each stage writes its results under the
output directory and is skipped (or resumed) when they are already there, so a killed
experiment picks up where it stopped: finetuning resumes from its last complete epoch and
inversions come from the content-keyed cache.

The layout of ``OUT`` is :class:`ftlens.layout.ExperimentLayout`. The findings need runs in
certain roles (pretrained start, scratch control, reconstruction task, LP-FT): a config's
``roles:`` mapping names them, otherwise they are recognised by strategy and task
(:func:`ftlens.layout.resolve_roles`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from ftlens import (  # models.load_model, data.get_dataset: looked up when called
    data,
    io,
    models,
    progress,
)
from ftlens.analysis.correlation import correlation_table
from ftlens.analysis.distortion import feature_distortion, write_examples
from ftlens.analysis.dynamics import corrupted_accuracy, dynamics, read_dynamics, run_metrics
from ftlens.analysis.weight_space import weight_diff
from ftlens.checks import check_writable_dir
from ftlens.data.base import float_to_uint8, uint8_to_float
from ftlens.data.corruptions import corrupt
from ftlens.errors import OutputError
from ftlens.experiment_config import (  # noqa: F401  (re-exported: the configuration's old home)
    AnalysisConfig,
    ExperimentConfig,
    builtin_config,
    check_experiment,
    quick,
)
from ftlens.findings import compute_findings
from ftlens.finetune import finetune
from ftlens.finetune.loop import check_device
from ftlens.finetune.rundir import describe_folder
from ftlens.finetune.strategies import get_strategy
from ftlens.invariance import compare
from ftlens.invariance.pool import image_pool
from ftlens.layout import ExperimentLayout
from ftlens.models import ModelWrapper, takes_pretrained
from ftlens.process_group import context
from ftlens.report.build import build_report, read_config

STAGES = ("pretrain", "finetune", "compare", "dynamics", "correlation", "distortion", "findings", "report")
_ALL_RANKS = ("pretrain", "finetune", "compare", "dynamics")  # the stages that use every process


# --------------------------------------------------------------------------- runner


class Experiment:
    """Runs the stages of a config into ``out`` (see the module docstring)."""

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike, *, cache: Any = "default") -> None:
        self.config = config
        self.out = Path(out)
        self.layout = ExperimentLayout(self.out)
        self.cache = cache
        self.timings: dict[str, float] = {}

    # paths
    def run_dir(self, name: str) -> Path:
        return self.layout.run(name)

    @property
    def pretrained_spec(self) -> str:
        if self.config.pretrain:
            return f"{self.run_dir('pretrain')}@last"
        return self.config.model

    def load_pretrained(self) -> ModelWrapper:
        size: dict[str, Any] = {"image_size": self.config.image_size} if self.config.image_size is not None else {}
        if self.config.defaults.get("max_length") is not None:  # a text model: the runs' length
            size = {"max_length": self.config.defaults["max_length"]}
        if self.config.pretrain:
            return models.load_model(self.pretrained_spec, layers=self.config.analysis.layers, **size)
        if takes_pretrained(self.config.model):
            return models.load_model(self.config.model, pretrained=self.config.pretrained, layers=self.config.analysis.layers,
                              **size)
        return models.load_model(self.config.model, layers=self.config.analysis.layers, **size)

    def run_config(self, run: dict[str, Any]) -> dict[str, Any]:
        """The finetune kwargs of one run: defaults, then the run's own settings."""
        merged = {**self.config.defaults, **run}
        merged.pop("name")
        if self.config.image_size is not None:
            merged.setdefault("image_size", self.config.image_size)
        if merged.get("task") == "reconstruction" and "corruptions" not in run:
            merged["corruptions"] = []  # corrupted accuracy is a classification measure
        return merged

    # the stages
    def run(self, stages: tuple[str, ...] = STAGES) -> Path:
        """Run ``stages`` in order. Under a launcher (``accelerate launch`` / ``torchrun``) every
        rank trains (DDP) and inverts its share of the work items; rank 0 writes the results."""

        check_device(self.config.device)
        self.check_out()
        main = context().is_main
        self.out.mkdir(parents=True, exist_ok=True)
        if main:
            io.write_text(self.layout.config, yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        for stage in STAGES:
            if stage not in stages or (not main and stage not in _ALL_RANKS):
                continue
            start = time.perf_counter()
            if main:
                progress.stage(f"{self.config.name}: {stage} ...")
            getattr(self, f"stage_{stage}")()
            self.timings[stage] = time.perf_counter() - start
            if main:
                progress.stage(f"{self.config.name}: {stage} done in {self.timings[stage]:.0f} s")
            if main:
                io.write_json(self.layout.timings, {**self._old_timings(), **self.timings})
        return self.layout.report

    def check_out(self) -> None:
        """Before any work: ``out`` is writable, and either new, empty, or this experiment's own
        folder (its config.yaml holds the same configuration); OutputError otherwise."""

        check_experiment(self.config.to_dict())  # also when the config object was built in Python
        check_writable_dir(self.out, "--out")
        if not self.out.is_dir() or not any(self.out.iterdir()):
            return
        saved = self.out / "config.yaml"
        if not saved.exists():
            raise OutputError(f"{self.out} is not empty ({describe_folder(self.out)}) and is not an ftlens experiment "
                              "(no config.yaml); choose another --out")
        old = read_config(saved)
        new = yaml.safe_load(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise OutputError(f"{self.out} holds the experiment of another configuration ({', '.join(changed)} "
                              "differ); choose another --out, or delete that folder to start again")

    def _old_timings(self) -> dict[str, float]:
        path = self.layout.timings
        return io.read_json(path) if path.exists() else {}

    def stage_pretrain(self) -> None:
        if not self.config.pretrain:
            return

        kwargs = {"strategy": "scratch", **self.config.pretrain}
        kwargs.setdefault("seed", self.config.defaults.get("seed", 0))
        if self.config.image_size is not None:
            kwargs.setdefault("image_size", self.config.image_size)
        finetune(model=self.config.model, out=str(self.run_dir("pretrain")), device=self.config.device,
                 data_dir=self.config.data_dir, pretrained=False, **kwargs)

    def stage_finetune(self) -> None:
        for run in self.config.runs:
            kwargs = self.run_config(run)
            from_scratch = get_strategy(kwargs.get("strategy", "ft")).from_scratch
            model = self.config.model if from_scratch else self.pretrained_spec
            finetune(model=model, data=self.config.data, out=str(self.run_dir(run["name"])),
                     device=self.config.device, data_dir=self.config.data_dir, pretrained=self.config.pretrained,
                     **kwargs)

    def _image_pool(self, n: int, seeds: int = 1):
        """The test-split pool for ``seeds`` seeds of ``n`` images (:func:`ftlens.invariance.pool.image_pool`)."""

        pt = self.load_pretrained()
        ds = data.get_dataset(self.config.data, split="test", image_size=pt.input_size[1:], data_dir=self.config.data_dir)
        pool = image_pool(ds, min(n, len(ds)), seeds)
        return pool.images, pool.labels

    def _compare_kwargs(self) -> dict[str, Any]:
        a = self.config.analysis
        kw: dict[str, Any] = dict(seeds=a.seeds, n_images=a.images, steps=a.steps, step_size=a.step_size,
                                  layers=a.layers, debiased=a.debiased, residual_threshold=a.residual_threshold,
                                  bootstrap=a.bootstrap)
        if self.cache != "default":
            kw["cache"] = self.cache
        if a.batch_size:
            kw["batch_size"] = a.batch_size
        if self.config.device != "cpu":
            kw["device"] = self.config.device
        return kw

    def compare_names(self) -> list[str]:
        if self.config.analysis.compare is not None:
            return list(self.config.analysis.compare)
        return [r["name"] for r in self.config.runs if get_strategy(r.get("strategy", "ft")).compared]

    def stage_compare(self) -> None:
        pt = self.load_pretrained()
        images, _ = self._image_pool(self.config.analysis.images, self.config.analysis.seeds)
        for name in self.compare_names():
            target = self.layout.compare(name)
            ft = None
            if not (target / "comparison.json").exists():
                ft = models.load_model(f"{self.run_dir(name)}@last", layers=self.config.analysis.layers)
                cmp = compare(pt, ft, images, **self._compare_kwargs())
                if cmp is None:  # None on ranks other than 0 under a launcher: rank 0 writes
                    continue
                cmp.save(target)
            if not (self.layout.weights(name) / "weights.json").exists():  # the same two models' weight diff
                ft = ft or models.load_model(f"{self.run_dir(name)}@last", layers=self.config.analysis.layers)
                weight_diff(pt, ft, layers=self.config.analysis.layers).save(self.layout.weights(name))

    def stage_dynamics(self) -> None:
        if not self.config.analysis.dynamics:
            return
        pt = self.load_pretrained()
        images, _ = self._image_pool(self.config.analysis.images, self.config.analysis.seeds)
        for name in self.config.analysis.dynamics:
            dynamics(self.run_dir(name), pt, images, epochs=self.config.analysis.dynamics_epochs,
                     out=self.layout.dynamics(name), **self._compare_kwargs())

    def stage_correlation(self) -> None:
        for name in self.config.analysis.dynamics:
            dyn_path = self.layout.dynamics(name) / "dynamics.csv"
            metrics = run_metrics(self.run_dir(name))
            if not dyn_path.exists() or "corrupted_acc_mean" not in metrics.columns:
                continue
            dyn = read_dynamics(dyn_path)
            grid = correlation_table(dyn, corrupted_accuracy(metrics))
            io.write_table(self.layout.correlation(name), grid)

    def stage_distortion(self) -> None:
        names = self.config.analysis.distortion
        if not names:
            return
        pt = self.load_pretrained()
        splits, sources = self._distortion_splits(pt)
        frames, per_example = [], {}
        for name in names:
            ft = models.load_model(f"{self.run_dir(name)}@last", layers=self.config.analysis.layers)
            df, values = feature_distortion(pt, ft, splits, layers=list(pt.layers) + ["pre_logits"],
                                            device=None if self.config.device == "cpu" else self.config.device,
                                            examples=True)
            df.insert(0, "run", name)
            frames.append(df)
            per_example.update({(name, *key): v for key, v in values.items()})
        write_examples(self.layout.distortion_examples, per_example, sources)
        io.write_table(self.layout.distortion, pd.concat(frames, ignore_index=True).set_index("run"))

    def _distortion_splits(self, pt) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``({"ID": clean images, "OOD": corrupted copies}, {split: index of the clean image of each row})``.

        OOD row ``i`` is ID image ``i`` under corruption ``i mod k`` of the ``k`` configured ones
        (each corruption on an equal share of the images): every OOD row is a corrupted copy of
        the ID image in the same row, so ID and OOD are compared pairwise."""
        n = self.config.analysis.distortion_images
        images, _ = self._image_pool(n)
        images = images[:n]
        corruptions = self.config.defaults.get("corruptions") or ["gaussian_noise"]
        sev = max(self.config.defaults.get("severities") or [3])
        raw = float_to_uint8(images)
        ood = [uint8_to_float(corrupt(raw, c, sev, seed=0)) for c in corruptions]
        rows = torch.arange(len(images))
        ood_images = torch.stack(ood)[rows % len(ood), rows]
        sources = {"ID": np.arange(len(images)), "OOD": np.arange(len(images))}
        return {"ID": images, "OOD": ood_images}, sources

    def stage_findings(self) -> None:
        io.write_json(self.layout.findings, compute_findings(self.out, self.config))

    def stage_report(self) -> None:
        build_report(self.out)


def run_experiment(config: ExperimentConfig | str | os.PathLike, out: str | os.PathLike | None = None,
                   **kwargs: Any) -> Path:
    """Run a config (object or YAML path) into ``out`` (default ``runs/<name>``); returns the report path."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_yaml(config)
    out = Path(out) if out is not None else Path("runs") / config.name
    return Experiment(config, out, **kwargs).run()
