"""The entry points: :func:`compare` (two models, every metric) and :func:`stir` (any models).

Both are *plan -> run -> score -> derive*: :func:`~ftlens.invariance.plan.plan_inversions`
lists the work items, an executor runs them (:class:`~ftlens.invariance.run.InProcess`, or
the local-process and ``torch.distributed`` executors of :mod:`ftlens.invariance.parallel`), the
scorer turns inversions into tidy STIR / CKA tables, and the pure derivations give per-layer
metrics and flows. ``compare`` is the one way to run a comparison, in one process or many.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import ConfigError, LayerError
from ftlens.invariance import parallel
from ftlens.invariance.inputs import (
    ModelLike,
    as_model,
    check_input_sizes,
    resolve_shared_layers,
)
from ftlens.invariance.metrics import FIRST_TERMS
from ftlens.invariance.plan import Plan, plan_inversions
from ftlens.invariance.result import Comparison, build_comparison, inversion_table, model_info
from ftlens.invariance.run import Executor, run_plan
from ftlens.invariance.score import (
    BOOTSTRAP_COLUMNS,
    FINETUNED,
    PRETRAINED,
    cka_table,
    estimator_of,
    score,
    stir_measure,
)
from ftlens.inversion import InversionSettings, runtime, schedule_fields
from ftlens.layers import layer_numbers
from ftlens.models import ModelWrapper
from ftlens.settings import PAPER
from ftlens.similarity.measure import Measure
from ftlens.store import Cache, resolve_cache, tensor_hash
from ftlens.texts import input_note, pool_inputs

__all__ = ["compare", "compare_plan", "stir"]


def compare_plan(
    pretrained: ModelLike,
    finetuned: ModelLike,
    images: torch.Tensor,
    layers: Sequence[str] | str | None = None,
    seeds: int | Sequence[int] = PAPER.seeds,
    n_images: int | None = PAPER.images,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    *,
    autocast: str | None = None,
    device: str | torch.device | None = None,
    schedule: str | Mapping[str, Any] | None = None,
) -> tuple[ModelWrapper, ModelWrapper, list[str], InversionSettings, Plan]:
    """The models, layers, settings and :class:`~ftlens.invariance.plan.Plan` that :func:`compare` runs."""
    pt = as_model(pretrained, PRETRAINED)
    ft = as_model(finetuned, FINETUNED)
    models = {PRETRAINED: pt, FINETUNED: ft}
    check_input_sizes(models, images)
    layer_list = resolve_shared_layers(models, layers)
    settings = InversionSettings(steps=steps, step_size=step_size, start=start, autocast=autocast,
                                 **schedule_fields(schedule))
    plan = plan_inversions(models, images, layers={PRETRAINED: layer_list, FINETUNED: layer_list}, seeds=seeds,
                           n_images=n_images, settings=settings, device=device)
    return pt, ft, layer_list, settings, plan


def compare(
    pretrained: ModelLike,
    finetuned: ModelLike,
    images: torch.Tensor | Any,
    layers: Sequence[str] | str | None = None,
    seeds: int | Sequence[int] = PAPER.seeds,
    n_images: int | None = PAPER.images,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    *,
    cache: Cache | str | os.PathLike | bool | None = True,
    debiased: bool = PAPER.debiased,
    first_term: str = PAPER.first_term,
    batch_size: int | None = None,
    autocast: str | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    processes: int | None = None,
    threads: int | None = None,
    executor: Executor | None = None,
    bootstrap: int = PAPER.bootstrap,
    confidence: float = PAPER.confidence,
    residual_threshold: float = PAPER.residual_threshold,
    schedule: str | Mapping[str, Any] | None = None,
    batch_layers: bool | None = None,
    measure: str | Measure | None = None,
    image_size: int | Sequence[int] | None = None,
) -> Comparison | None:
    """Learning, forgetting, cka divergence and InvarianceFlow of ``finetuned`` vs ``pretrained``.

    Works for any two models with the same input size and layer names (not only a
    pretrained/finetuned pair); the table labels are the roles ``pretrained``/``finetuned``.

    Args:
        pretrained, finetuned: models (wrappers or specs for :func:`ftlens.load_model`).
        images: the image pool (n, C, H, W) in [0, 1] (a tensor, a Dataset or a DataLoader:
            :func:`ftlens.images.as_images`), or for text models texts (strings, a tokenised
            batch, a text dataset), read by both models as the pretrained model's word vectors
            (:func:`ftlens.texts.pool_inputs`); each seed draws ``n_images`` of it
            (``None``: the whole pool) and its own start noise
            (:mod:`ftlens.invariance.pool`: disjoint samples when the pool allows).
        layers: layer names / globs present in both models (default: the pretrained model's).
        seeds: a count (0..k-1) or explicit seeds; means and intervals are over seeds.
        steps, step_size, start: inversion settings (the paper: 50 steps, 0.5, noise).
        cache: ``True`` (``$FTLENS_CACHE_DIR`` or ``~/.cache/ftlens``), a directory or
            :class:`~ftlens.store.Cache`, or ``None`` (no cache). Pretrained-side inversions
            are shared by every comparison against the same pretrained model.
        debiased: debiased (unbiased-HSIC) linear CKA for STIR and cka divergence.
        first_term: ``"measured"`` (default: ``STIR(pt^[i] | pt^[i])`` from the same
            inversions, so an exact copy gives exactly 0) or ``"one"`` (the paper's ``1 - STIR``).
        batch_size: images per batch for inversion and capture.
        autocast: ``"bf16"`` to run the inversion forward in bfloat16 on CUDA.
        schedule: inversion schedule: ``None`` / ``"adaptive"`` (default, ``PAPER.schedule``:
            adaptive step length, per-image early stopping at ``PAPER.stop_fraction *
            residual_threshold``), ``"fixed"`` (the paper's fixed step length, every image every
            step) or a mapping of schedule fields (:func:`ftlens.inversion.schedule_fields`);
            part of every cache key.
        processes: ``N > 1`` splits the inversions over ``N`` local processes (gloo,
            ``threads`` or ``cpu_count // N`` CPU threads each, one GPU each when ``device``
            is CUDA); they share ``cache`` (required), and the merged result equals the
            single-process one. Under a launcher (``accelerate launch``, ``torchrun``) the
            launcher's processes are used and every rank but 0 returns ``None``.
        executor: where the work items run (default from ``processes`` and the launcher:
            :func:`ftlens.invariance.parallel.executor`).
        bootstrap: resamples of the images within each seed for the per-layer intervals
            (0: intervals over seeds only); cheap, from the Gram matrices.
        confidence: level of the intervals (0.95).
        residual_threshold: a layer whose inversions end with a larger mean relative residual
            is marked ``converged = False``.
        batch_layers: run each model's inversions (all layers and seeds) in one staged batch
            per step (:mod:`ftlens.inversion.batched`; speed only, same results up to rounding,
            not in the cache key); default: the current :func:`ftlens.inversion.runtime`'s (off).
        measure: the similarity inside STIR and cka divergence instead of linear CKA: a registered
            similarity measure's name (``svcca``, ``rsa_correlation_spearman``, ``mutual_knn``, ...;
            :func:`ftlens.similarity.measure_names`) or a :class:`~ftlens.similarity.Measure`. The
            inversions are the same (and cached the same); there is no image bootstrap with a
            measure other than linear CKA (intervals over seeds).
        image_size: input resolution for models given as specs or module objects
            (:func:`ftlens.load_model`'s; a ViT is resampled to it, a CNN takes the images' size).

    Returns:
        a :class:`~ftlens.invariance.result.Comparison` (``None`` on ranks other than 0 under a
        launcher). It takes ``2 L`` inversions per seed for ``L`` layers.

    Raises:
        LayerError: a layer missing from a model. ImageError: images outside [0, 1], of the
        wrong shape, fewer than ``n_images``, or models with different input sizes.
    """
    t_start = time.perf_counter()
    chosen, debiased = stir_measure(measure, debiased)  # an unknown or unfit measure fails before any work
    if first_term not in FIRST_TERMS:
        raise ConfigError(f"first_term must be one of {FIRST_TERMS}, got {first_term!r}")
    executor = executor or parallel.executor(processes=processes, threads=threads, cache=cache)
    pt = as_model(pretrained, PRETRAINED, image_size)
    ft = as_model(finetuned, FINETUNED, image_size)
    images = pool_inputs(images, pt)  # texts: the pretrained model's word vectors
    note = input_note(pt, {FINETUNED: ft})
    models, images, device = executor.prepare({PRETRAINED: pt, FINETUNED: ft}, images, device)
    pt, ft = models[PRETRAINED], models[FINETUNED]
    # one session per model for the whole call: the weights are checked (and hashed again where
    # they changed) once, here, and the models are in their working state until the end
    with pt.session(check=True), ft.session(check=True):
        return _compare(pt, ft, images, device, executor, t_start, layers=layers, seeds=seeds, n_images=n_images,
                        steps=steps, step_size=step_size, start=start, cache=cache, debiased=debiased,
                        first_term=first_term, batch_size=batch_size, autocast=autocast, progress=progress,
                        bootstrap=bootstrap, confidence=confidence, residual_threshold=residual_threshold,
                        schedule=schedule, batch_layers=batch_layers, chosen=chosen, note=note)


def _compare(pt: ModelWrapper, ft: ModelWrapper, images: torch.Tensor, device, executor: Executor, t_start: float, *,
             layers, seeds, n_images, steps, step_size, start, cache, debiased, first_term, batch_size, autocast,
             progress, bootstrap, confidence, residual_threshold, schedule, batch_layers,
             chosen: Measure | None, note: Any) -> Comparison | None:
    fields = schedule_fields(schedule)
    if fields.get("schedule", PAPER.schedule) != "fixed" and "stop_residual" not in fields:
        # one threshold: the early-stopping schedules stop images at a fraction of the convergence gate's
        fields["stop_residual"] = PAPER.stop_fraction * float(residual_threshold)
    pt, ft, layer_list, settings, plan = compare_plan(
        pt, ft, images, layers=layers, seeds=seeds, n_images=n_images, steps=steps,
        step_size=step_size, start=start, autocast=autocast, device=device, schedule=fields)
    store = resolve_cache(cache)
    t_plan = time.perf_counter()
    with runtime(**({} if batch_layers is None else {"batch_layers": bool(batch_layers)})):
        done = executor.run(plan, images, cache=store, batch_size=batch_size, progress=progress)
    if done is None:  # a rank other than 0: its share is in the cache, rank 0 scores
        return None
    invs = done.inversions
    t_inv = time.perf_counter()
    clean: dict = {}
    boot_rows: list = []
    stir_df = score(plan, invs, images, {PRETRAINED: (pt, layer_list), FINETUNED: (ft, layer_list)},
                    debiased=debiased, batch_size=batch_size, clean_grams=clean, bootstrap=bootstrap,
                    bootstrap_rows=boot_rows, measure=chosen)
    numbers = layer_numbers(layer_list, pt)
    cka_df = cka_table(clean, plan.seeds, layer_list, debiased, numbers=numbers, bootstrap=bootstrap,
                       bootstrap_rows=boot_rows, n_images=plan.n_images, measure=chosen)
    boot_df = pd.DataFrame(boot_rows, columns=BOOTSTRAP_COLUMNS) if boot_rows else None
    t_score = time.perf_counter()
    estimator = estimator_of(chosen, debiased)
    similarity = f"linear CKA ({estimator} HSIC), float64" if chosen is None else f"{chosen.label}, float64"
    config: dict[str, Any] = {
        "kind": "ftlens.compare",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pretrained": model_info(pt),
        "finetuned": model_info(ft),
        "layers": layer_list,
        "layer_numbers": numbers,
        "seeds": plan.seeds,
        "n_images": plan.n_images,
        "pool_size": plan.pool_size,
        "pool_hash": tensor_hash(images),
        "sample_hashes": {str(k): v for k, v in plan.sample_hashes.items()},
        "samples": {str(k): v for k, v in plan.samples.items()},
        "inversion": settings.as_dict(),
        "estimator": estimator,
        "similarity": similarity,
        "measure": chosen.name if chosen is not None else ("linear_cka_debiased" if debiased else "linear_cka"),
        "first_term": first_term,
        "confidence": confidence,
        "bootstrap": int(bootstrap) if chosen is None else 0,
        "residual_threshold": residual_threshold,
        "flow_definition": {
            "flow": "eq. 5 as printed: flow[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[j]); "
                    "rows pretrained layer i, columns finetuned layer j",
            "flow_relative": "flow_relative[i, j] = STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i])",
            "baseline": "the same with ft = pt (the pretrained model with itself); corrected = flow - baseline",
        },
        "n_inversions": len(plan.unique_keys),
        "n_inversions_computed": len(done.computed),
        "batch_size": batch_size,
        "device": str(plan.device or pt.device),
        "cache": str(store.root) if store is not None else None,
        "versions": io.versions(),
        "timings": {
            "plan_s": t_plan - t_start,
            "inversions_s": t_inv - t_plan,
            "inversion_compute_s": done.compute_seconds,
            "scoring_s": t_score - t_inv,
            "total_s": time.perf_counter() - t_start,
        },
    }
    if note is not None:
        config["inputs"] = note
    if done.info:
        config["distributed"] = done.info
    return build_comparison(stir_df, cka_df, inversion_table(plan, invs), config, boot_df)


def _label_models(target, image_size=None) -> dict[str, ModelWrapper]:
    if isinstance(target, Mapping):
        return {str(k): as_model(v, f"target {k}", image_size) for k, v in target.items()}
    if isinstance(target, (ModelWrapper, str, os.PathLike)):
        target = [target]
    out: dict[str, ModelWrapper] = {}
    for i, m in enumerate(target):
        m = as_model(m, f"target {i}", image_size)
        label, k = m.name, 2
        while label in out:
            label, k = f"{m.name}#{k}", k + 1
        out[label] = m
    return out


def stir(
    target: ModelLike | Sequence[ModelLike] | Mapping[str, ModelLike],
    reference: ModelLike,
    images: torch.Tensor,
    target_layers: Sequence[str] | str | None = None,
    reference_layers: Sequence[str] | str | None = None,
    seeds: int | Sequence[int] = 1,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    *,
    n_images: int | None = None,
    debiased: bool = False,
    cache: Cache | str | os.PathLike | bool | None = True,
    batch_size: int | None = None,
    autocast: str | None = None,
    device: str | torch.device | None = None,
    reference_name: str | None = None,
    progress: bool | None = None,
    schedule: str | Mapping[str, Any] | None = None,
    measure: str | Measure | None = None,
    image_size: int | Sequence[int] | None = None,
) -> pd.DataFrame:
    """``STIR(target^[i] | reference^[j])`` for every target layer ``i`` and reference layer ``j``.

    One inversion per (reference layer, seed) serves every target layer of every target.

    Args:
        target: a model, a list of models (labelled by name) or ``{label: model}``; all are
            scored against the same inversions.
        reference: the model whose layers are inverted.
        images: the pool (n, C, H, W) in [0, 1]; each seed uses ``n_images`` of it (default all).
        target_layers, reference_layers: layer names / globs (default: each model's layers).
        seeds: a count or explicit seeds (each: its own image sample and start noise).
        steps, step_size, start: inversion settings (:func:`ftlens.invert`).
        debiased: debiased linear CKA instead of the biased default.
        cache: ``True`` (default directory), a directory / :class:`~ftlens.store.Cache`, or None.
        schedule: inversion schedule: ``None`` / ``"adaptive"`` (default), ``"fixed"`` (the
            paper) or a mapping (:func:`ftlens.inversion.schedule_fields`).
        measure: a registered similarity measure instead of linear CKA (as in :func:`compare`).
        image_size: input resolution for models given as specs or module objects.

    Returns:
        Tidy DataFrame with columns ``target, reference, target_layer, target_layer_number,
        reference_layer, reference_layer_number, seed, stir, residual, estimator``
        (``residual``: mean relative residual of the inversion; layer numbers 1-based;
        ``estimator``: ``biased`` / ``debiased`` for linear CKA, else the measure's name).
    """
    chosen, debiased = stir_measure(measure, debiased)
    ref = as_model(reference, "reference", image_size)
    ref_label = reference_name or ref.name
    images = pool_inputs(images, ref)  # texts: the reference model's word vectors
    tmodels = _label_models(target, image_size)
    check_input_sizes({ref_label: ref, **tmodels}, images)
    tlayers = {}
    for label, m in tmodels.items():
        try:
            tlayers[label] = m.resolve_layers(target_layers)
        except LayerError as exc:
            raise LayerError(f"target {label}: {exc}") from None
    settings = InversionSettings(steps=steps, step_size=step_size, start=start, autocast=autocast,
                                 **schedule_fields(schedule))
    with contextlib.ExitStack() as stack:  # each model checked once and in its working state throughout
        for m in {id(m): m for m in (ref, *tmodels.values())}.values():
            stack.enter_context(m.session(check=True))
        plan = plan_inversions({ref_label: ref}, images, layers=reference_layers, seeds=seeds, n_images=n_images,
                               settings=settings, device=device)
        invs = run_plan(plan, images, cache=cache, batch_size=batch_size, progress=progress)
        return score(plan, invs, images, {label: (m, tlayers[label]) for label, m in tmodels.items()},
                     debiased=debiased, batch_size=batch_size, measure=chosen)
