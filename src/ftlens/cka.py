"""The CKA one-liner: ``ftlens.CKA(first, second).compare(loader).plot()``.

Linear CKA between every layer of one model (``first``, the rows) and every layer of another
(``second``, the columns) on the same images, or any registered similarity measure
(``measure=NAME``, :mod:`ftlens.similarity.registry`). The images stream through both models
batch by batch: exact CKA (:func:`ftlens.similarity.cka_matrix`) where its memory allows, else the
minibatch estimator (:class:`ftlens.similarity.MinibatchCKA`), whose memory does not grow with
the number of images. The result
saves in the layout of ``ftlens cka`` (``cka.csv`` + ``cka.json``), so ``ftlens report`` reads it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import ConfigError, FtlensError, ImageError, NumericalError
from ftlens.images import count_images, image_batches
from ftlens.models import ModelWrapper, load_model
from ftlens.models.session import one_thread, paused_gc
from ftlens.progress import track
from ftlens.similarity.measure import Measure
from ftlens.similarity.minibatch_cka import MinibatchCKA
from ftlens.similarity.pairwise import choose_route
from ftlens.similarity.registry import get_measure, measure_names
from ftlens.texts import as_texts, count
from ftlens.vocabulary import upgrade_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CKA", "EXACT_MEMORY", "CKAResult", "exact_bytes", "load_cka", "resolve_measure"]


def resolve_measure(measure: str | Measure | None, debiased: bool = False) -> Measure:
    """The measure to compare layers with: ``measure`` (a registered name or a :class:`Measure`),
    or by default linear CKA, debiased if ``debiased``."""
    if measure is None:
        return get_measure("linear_cka_debiased" if debiased else "linear_cka")
    m = get_measure(measure)
    if debiased and not m.name.endswith("_debiased"):
        raise ConfigError(f"debiased=True (--debiased) selects linear_cka_debiased, but the measure {m.name!r} "
                          f"was given: name one measure (known: {', '.join(measure_names())}).")
    return m


@dataclass
class CKAResult:
    """``matrix``: CKA (or the ``config["measure"]`` chosen), rows ``first_layer`` (layers of the first
    model), columns ``second_layer``; ``config``: what was run."""

    matrix: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def estimator(self) -> str:
        return str(self.config.get("estimator", "biased"))

    @property
    def measure(self) -> str:
        """The registered name of the measure in ``matrix`` (results of earlier versions: ``linear_cka``)."""
        return str(self.config.get("measure", "linear_cka"))

    @property
    def title(self) -> str:
        """What the numbers are, e.g. ``linear CKA (biased)`` or the measure's label."""
        if self.estimator == "minibatch":
            return f"linear CKA (minibatch, {self.config.get('batches', '?')} batches of {self.config.get('batch_size', '?')})"
        if self.measure.startswith("linear_cka"):
            return f"linear CKA ({self.estimator})"
        return str(self.config.get("similarity", self.measure)).removesuffix(", float64")

    @property
    def colorbar(self) -> str:
        """The colour-bar label of a heat map: the measure and its value for identical layers."""
        name = "linear CKA" if self.measure.startswith("linear_cka") else self.measure
        return name + (" (0 = identical)" if self.config.get("measure_kind") == "distance" else " (1 = identical)")

    def plot(self, *, title: str | None = None) -> Figure:
        """Heat map with an adaptive colour scale and the values in the cells (a matplotlib Figure)."""
        from ftlens.report.figures import cka_heatmap

        a, b = self.config.get("first", "the first model"), self.config.get("second", "the second model")
        return cka_heatmap(self.matrix, title=title or f"{self.title}: {a} vs {b}",
                           xlabel=f"layer of {b}", ylabel=f"layer of {a}", colorbar=self.colorbar)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``cka.csv`` and ``cka.json`` (atomic) into ``directory``."""
        d = Path(directory)
        io.write_table(d / "cka.csv", self.matrix)
        io.write_json(d / "cka.json", self.config)
        return d

    def _repr_html_(self) -> str:
        from ftlens.display import frame_html

        a, b = self.config.get("first", "first"), self.config.get("second", "second")
        head = (f"{self.title} of {a} (rows) vs {b} (columns), "
                f"{self.config.get('images', '?')} images")
        return frame_html(self.matrix, head)

    def __repr__(self) -> str:
        return f"CKAResult({self.matrix.shape[0]}x{self.matrix.shape[1]} layers, {self.title})"


def load_cka(directory: str | os.PathLike) -> CKAResult:
    """Read a :class:`CKAResult` written by :meth:`CKAResult.save` or ``ftlens cka --out``.

    Results of earlier versions (keys ``model_a`` / ``model_b``) are read with the current names.
    """
    d = Path(directory)
    matrix = pd.read_csv(d / "cka.csv", index_col=0)
    matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
    config = upgrade_keys(io.read_json(d / "cka.json")) if (d / "cka.json").exists() else {}
    return CKAResult(matrix, config)


#: Bytes the exact path may hold (stored features and Grams) before ``estimator="auto"`` streams.
EXACT_MEMORY = 1 << 30
ESTIMATORS = ("auto", "exact", "minibatch")


def exact_bytes(n: int, widths_a: Sequence[int], widths_b: Sequence[int]) -> int:
    """Memory of exact linear CKA over ``n`` images: the float32 features of every layer plus the
    float64 work of the cheaper exact route (``L`` centred ``n x n`` Grams, or centred features)."""
    feats = 4 * n * (sum(widths_a) + sum(widths_b))
    route = choose_route(n, widths_a, widths_b, "linear", "auto")
    if route == "gram":  # the Grams, and one layer's float64 features and centred copy while its Gram is made
        return feats + 8 * n * n * (len(widths_a) + len(widths_b)) + 16 * n * max(*widths_a, *widths_b)
    return feats + 8 * n * (sum(widths_a) + sum(widths_b))


#: The streaming forward runs up to this many images at once (several loader batches) ...
FORWARD_IMAGES = 512
#: ... while their captured layer outputs and a working set stay under this many bytes.
FORWARD_BYTES = 256 << 20


def forward_images(batch: int, ra: dict[str, torch.Tensor], rb: dict[str, torch.Tensor], a: ModelWrapper,
                   b: ModelWrapper) -> int:
    """Images per forward of the streaming path: at least one ``batch``, at most
    :data:`FORWARD_IMAGES`, and no more than the captured outputs (``ra``, ``rb``: one batch's) plus
    three of the largest module outputs of either model fit in :data:`FORWARD_BYTES`."""
    captured = sum(r[0].numel() for r in (*ra.values(), *rb.values()))
    largest = max(math.prod(shape) for m in (a, b) for shape in m.trace.shapes.values() if shape)
    per_image = 4 * (captured + 3 * largest)
    return max(batch, min(FORWARD_IMAGES, FORWARD_BYTES // max(per_image, 1)))


def _joined(chunks: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` that frees each chunk once copied (peak: the result and one chunk, not twice the data)."""
    out = torch.empty((sum(c.shape[0] for c in chunks), chunks[0].shape[1]), dtype=chunks[0].dtype)
    lo = 0
    while chunks:
        c = chunks.pop(0)
        out[lo : lo + c.shape[0]] = c
        lo += c.shape[0]
    return out


class CKA:
    """Compare two models layer by layer with linear CKA (in the spirit of ``torch_cka``).

    Args:
        first, second: models (``nn.Module`` objects, specs or wrappers for :func:`ftlens.load_model`);
            the result's rows are the first model's layers, its columns the second's. A module
            object is used as it is and left as it was (:func:`ftlens.load_model`).
        first_layers, second_layers: layers (names or globs; default: every block).
        debiased: debiased (unbiased-HSIC) CKA instead of the biased one (exact estimator).
        device: where the forward passes run (default: the models' device).
        measure: another registered similarity measure by name (``ftlens.similarity.measure_names()``)
            or a :class:`ftlens.similarity.Measure`; default linear CKA.
        image_size: input resolution for models given as specs or modules (a ViT's position
            embedding is resampled; a CNN takes the images' size whatever this is).

    Example:
        >>> result = ftlens.CKA(resnet18, resnet34).compare(loader)  # doctest: +SKIP
        >>> result.plot()                                            # doctest: +SKIP
    """

    def __init__(self, first: Any, second: Any, *, first_layers: Sequence[str] | None = None,
                 second_layers: Sequence[str] | None = None, debiased: bool = False,
                 device: str | torch.device | None = None, measure: str | Measure | None = None,
                 image_size: int | Sequence[int] | None = None) -> None:
        self.measure = resolve_measure(measure, debiased)  # before loading: a wrong name fails fast
        self.first = self._load(first, first_layers, image_size, "first")
        self.second = self.first if second is first else self._load(second, second_layers, image_size, "second")
        self.first_layers = list(first_layers) if first_layers is not None else None
        self.second_layers = list(second_layers) if second_layers is not None else None
        self.debiased = self.measure.name.endswith("_debiased")
        self.device = device
        if device is not None:
            self.first.to(device)
            self.second.to(device)
        self.result: CKAResult | None = None

    @staticmethod
    def _load(model: Any, layers: Sequence[str] | None, image_size: Any, what: str) -> ModelWrapper:
        if isinstance(model, ModelWrapper):
            from ftlens.invariance.inputs import as_model

            return as_model(model, what, image_size)
        size = {"image_size": image_size} if image_size is not None else {}
        return load_model(model, layers=layers, **size)

    def compare(self, images: Any, n_images: int | None = None, *, batch_size: int = 256, progress: bool = False,
                estimator: str = "auto", max_memory: int = EXACT_MEMORY, fold: bool = True) -> CKAResult:
        """CKA of every layer pair on ``images`` (a tensor, Dataset or DataLoader; at most ``n_images``).

        The images are read batch by batch (a DataLoader's own batches; otherwise ``batch_size``)
        and never held all at once. ``estimator``:

        - ``"exact"``: CKA over all ``n`` images at once (biased, or debiased with ``debiased``;
          other measures are always exact); it keeps every layer's features (float32) and, for
          features >> images, ``n x n`` Grams: memory grows with ``n`` (:func:`exact_bytes`).
        - ``"minibatch"``: the minibatch estimator of Nguyen et al. (2021): per batch, one
          U-centred Gram per layer, shared by every layer pair; the unbiased HSIC_1 terms averaged
          over batches, their ratio taken at the end (the same population CKA as debiased CKA,
          the same numbers as pytorch-cka's ``compute_cka`` before its clamp to [0, 1]). Memory
          is one batch's, whatever ``n``. Batches need at least 4 images; a shorter last batch
          is left out (and counted in the result's config).
        - ``"auto"`` (default): exact when it needs at most ``max_memory`` bytes (1 GiB) and the
          number of images is known, else minibatch.

        ``fold`` (speed only): run copies of convolutional models with each BatchNorm folded into
        the convolution before it (:meth:`ModelWrapper.folded`), after checking on the first batch
        that every compared layer's output is the same up to float rounding (``1e-3`` of its
        largest value; else the models themselves run). The config records ``batchnorm_folded``.
        """
        if estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        linear = self.measure.name in ("linear_cka", "linear_cka_debiased")
        if estimator == "minibatch" and not linear:
            raise ConfigError(f"the minibatch estimator is linear CKA's; the measure {self.measure.name!r} is computed "
                              "exactly (estimator='exact'), on at most n_images images")
        a, b = self.first, self.second
        texts = as_texts(images, n_images)
        if texts is not None:  # text models: each tokenises the texts itself; exact, on every text at once
            return self._compare_texts(texts, batch_size, progress)
        n = count_images(images, n_images)
        batches = image_batches(images, n_images, batch_size)
        with contextlib.ExitStack() as stack:
            for m in (a,) if a is b else (a, b):  # the BatchNorm-folded copies run (channels-last) when they can
                stack.enter_context(m.session(channels_last=not fold))
            stack.enter_context(torch.inference_mode())
            it = iter(batches)
            x0 = next(it)
            fa, fb, folded = self._fast_models(x0) if fold else (a, b, False)
            ra, rb = self._forward(x0, fa, fb)
            mode = estimator
            if mode == "auto":
                widths_a = [r.shape[1] for r in ra.values()]
                widths_b = [r.shape[1] for r in rb.values()]
                fits = n is not None and exact_bytes(n, widths_a, widths_b) <= max_memory
                mode = "exact" if fits or not linear else "minibatch"
            total = None if n is None else -(-n // (x0.shape[0] or 1))
            rest = track(it, description=f"CKA {a.name} vs {b.name}", total=total and total - 1) if progress else it
            chunk = forward_images(x0.shape[0], ra, rb, fa, fb)
            pairs = itertools.chain([(ra, rb, [x0.shape[0]])], self._chunked(rest, chunk, fa, fb))
            del ra, rb
            matrix, extra = self._minibatch(pairs) if mode == "minibatch" else self._exact(pairs)
            del fa, fb, pairs
        matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
        measure = self.measure
        config = {"kind": "ftlens.cka", "first": a.name, "second": b.name, "first_spec": str(a.spec),
                  "second_spec": str(b.spec), "images": int(extra.pop("images")), "measure": measure.name,
                  "measure_kind": measure.kind, **extra, "batchnorm_folded": folded}
        if mode == "minibatch":
            config.update(estimator="minibatch", similarity="linear CKA (minibatch HSIC_1, Nguyen et al.), float64")
        else:
            if "cka" in measure.name:  # the HSIC estimator is a CKA notion
                config["estimator"] = "debiased" if measure.name.endswith("_debiased") else "biased"
            config["similarity"] = f"{measure.label}, float64"
        config["versions"] = io.versions()
        self.result = CKAResult(matrix, config)
        return self.result

    def _compare_texts(self, texts: Any, batch_size: int, progress: bool) -> CKAResult:
        """Exact CKA (or the measure) of every layer pair on texts (strings, a tokenised batch or
        a text dataset), each model tokenising them with its own tokenizer."""
        a, b = self.first, self.second
        ra = a.representations(texts, self.first_layers, batch_size=batch_size, device=self.device, progress=progress)
        rb = b.representations(texts, self.second_layers, batch_size=batch_size, device=self.device, progress=progress)
        measure = self.measure
        matrix = measure.matrix(ra, rb)
        matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
        config = {"kind": "ftlens.cka", "first": a.name, "second": b.name, "first_spec": str(a.spec),
                  "second_spec": str(b.spec), "images": count(texts), "measure": measure.name,
                  "measure_kind": measure.kind}
        if "cka" in measure.name:  # the HSIC estimator is a CKA notion
            config["estimator"] = "debiased" if measure.name.endswith("_debiased") else "biased"
        config.update(similarity=f"{measure.label}, float64", versions=io.versions())
        self.result = CKAResult(matrix, config)
        return self.result

    def _forward(self, x: torch.Tensor, a: ModelWrapper, b: ModelWrapper
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both models' layer outputs ``{layer: (b, features)}`` for one batch (one forward if they are one model)."""
        a.check_images(x)
        la = a.resolve_layers(self.first_layers)
        if a is b:
            lb = a.resolve_layers(self.second_layers)
            both = a.forward_layers(x.to(a.device, non_blocking=True), sorted(set(la) | set(lb), key=(la + lb).index),
                                    clone=False)
            return {k: both[k] for k in la}, {k: both[k] for k in lb}
        b.check_images(x)
        ra = a.forward_layers(x.to(a.device, non_blocking=True), la, clone=False)
        rb = b.forward_layers(x.to(b.device, non_blocking=True), b.resolve_layers(self.second_layers), clone=False)
        return ra, rb

    def _chunked(self, batches: Iterator[torch.Tensor], chunk: int, a: ModelWrapper, b: ModelWrapper
                 ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]]:
        """``(reps_a, reps_b, sizes)``: layer outputs (:meth:`_forward`) of several consecutive loader
        batches of ``sizes`` images, from one forward of up to ``chunk`` images: the same per-image
        outputs, fewer and larger forwards (a CPU runs a ResNet at 32 px several times faster in
        batches of 512 than of 128). The batches the estimator sees stay the loader's own."""
        group: list[torch.Tensor] = []

        def flush() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
            sizes = [g.shape[0] for g in group]
            ra, rb = self._forward(group[0] if len(group) == 1 else torch.cat(group), a, b)
            group.clear()
            return ra, rb, sizes

        for x in batches:
            if group and x.shape[1:] != group[0].shape[1:]:  # images of another size: a forward of their own
                yield flush()
            group.append(x)
            if sum(g.shape[0] for g in group) >= chunk:
                yield flush()
        if group:
            yield flush()

    def _fast_models(self, x: torch.Tensor) -> tuple[ModelWrapper, ModelWrapper, bool]:
        """Copies of the models with BatchNorm folded into the convolutions (a ResNet's forward about
        a tenth faster on a CPU), used only if their layer outputs on (part of) the first batch
        match the models' own up to float rounding; else the models themselves."""
        with paused_gc():
            return self._fold_and_check(x)

    def _fold_and_check(self, x: torch.Tensor) -> tuple[ModelWrapper, ModelWrapper, bool]:
        a, b = self.first, self.second
        x = x[:4]
        a.check_images(x)
        b.check_images(x)
        fa = a.folded(x) if a._cnn else a
        fb = fa if b is a else (b.folded(x) if b._cnn else b)
        if fa is a and fb is b:
            return a, b, False
        with one_thread():
            want, got = self._forward(x, a, b), self._forward(x, fa, fb)
        for w, g in zip(want, got, strict=True):
            for layer, r in w.items():
                scale = float(r.abs().max()) or 1.0
                if g[layer].shape != r.shape or float((g[layer] - r).abs().max()) > 1e-3 * scale:
                    return a, b, False
        return fa, fb, True

    def _minibatch(self, pairs: Iterator[tuple[dict, dict, list[int]]]) -> tuple[pd.DataFrame, dict[str, Any]]:
        acc = MinibatchCKA()
        images = dropped = 0
        sizes_seen = set()
        for ra, rb, sizes in pairs:
            lo = 0
            for size, run in itertools.groupby(sizes):  # equal consecutive batches: one update
                k = len(list(run))
                if size < 4:
                    dropped += size * k
                else:
                    acc.update({n: r[lo : lo + size * k] for n, r in ra.items()},
                               {n: r[lo : lo + size * k] for n, r in rb.items()}, batches=k)
                    images += size * k
                    sizes_seen.add(size)
                lo += size * k
        if not acc.n_batches:
            raise ImageError(f"the minibatch estimator needs batches of at least 4 images; got {dropped} image(s) "
                             "in smaller ones (pass batch_size=..., or a DataLoader with a larger batch size)")
        matrix = acc.compute()
        extra = {"images": images, "batches": acc.n_batches, "batch_size": max(sizes_seen)}
        if dropped:
            extra["images_left_out"] = dropped
        return matrix, extra

    def _exact(self, pairs: Iterator[tuple[dict, dict, list[int]]]) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Every batch's features kept (float32, on the CPU), then exact CKA over all of them."""
        stores: tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]] = ({}, {})
        images = 0
        for ra, rb, sizes in pairs:
            for store, reps in zip(stores, (ra, rb), strict=True):
                for layer, r in reps.items():
                    store.setdefault(layer, []).append(r.float().cpu())
            images += sum(sizes)
        ra, rb = ({k: _joined(v) for k, v in store.items()} for store in stores)
        for model, reps in ((self.first, ra), (self.second, rb)):
            for layer, r in reps.items():
                if not torch.isfinite(r).all():
                    raise NumericalError(f"NaN/inf in the representation of layer {layer!r} of {model.name}; "
                                         "check the weights (a diverged checkpoint?) and the inputs")
        return self.measure.matrix(ra, rb), {"images": images}

    def plot(self, **kwargs: Any) -> Figure:
        """The last result's heat map (after :meth:`compare`)."""
        if self.result is None:
            raise FtlensError("nothing to plot yet: call .compare(images) first")
        return self.result.plot(**kwargs)

    def export(self) -> CKAResult | None:
        """The last result (torch_cka's name for it)."""
        return self.result
