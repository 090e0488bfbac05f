"""Scoring: finished inversions -> the tidy STIR table and the clean-image CKA table.

``STIR(target^[i] | reference^[j]) = CKA(target^[i](X), target^[i](X'_j))`` where ``X'_j`` is
inverted on ``reference^[j]``; every CKA is computed from float64 Gram matrices
(:func:`ftlens.similarity.cka_from_grams`). Another registered *similarity* measure
(``measure=NAME``: SVCCA, RSA, mutual k-NN, ...; :mod:`ftlens.similarity.registry`) can take CKA's
place: then the clean and inverted representations are kept instead of their Grams, the measure
is called on each pair, and there is no image bootstrap (resampling repeats images, which CCA and
nearest-neighbour measures cannot take; the intervals are over seeds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ftlens.errors import ConfigError
from ftlens.invariance.plan import Plan
from ftlens.inversion import Inversion
from ftlens.layers import layer_numbers
from ftlens.models import ModelWrapper
from ftlens.similarity import cka_from_grams, gram_linear
from ftlens.similarity.measure import Measure
from ftlens.similarity.registry import get_measure, measure_names
from ftlens.vocabulary import FINETUNED, PRETRAINED

__all__ = ["BOOTSTRAP_COLUMNS", "CKA_COLUMNS", "FINETUNED", "PRETRAINED", "STIR_COLUMNS", "bootstrap_cka",
           "bootstrap_indices", "cka_table", "grams", "score", "stir_measure"]

#: the measures STIR computes from Gram matrices (with the image bootstrap)
GRAM_MEASURES = {"linear_cka": False, "linear_cka_debiased": True}


def stir_measure(measure: str | Measure | None, debiased: bool = False) -> tuple[Measure | None, bool]:
    """``(measure, debiased)`` of STIR: ``(None, debiased)`` for linear CKA (from Grams;
    ``linear_cka_debiased`` sets ``debiased``), else ``(a registered similarity, False)``; a
    distance, or ``debiased`` with another measure, is a :class:`ConfigError`."""
    if measure is None:
        return None, bool(debiased)
    m = get_measure(measure)
    if m.name in GRAM_MEASURES:
        if debiased and not GRAM_MEASURES[m.name]:
            raise ConfigError("debiased=True (--debiased) selects linear_cka_debiased, but the measure 'linear_cka' "
                              "was given: name one of them")
        return None, GRAM_MEASURES[m.name]
    if debiased:
        raise ConfigError(f"debiased=True (--debiased) is a CKA estimator; the measure {m.name!r} has none: drop it")
    if m.kind != "similarity":
        similar = [n for n in measure_names() if get_measure(n).kind == "similarity"]
        raise ConfigError(f"STIR needs a similarity (1 = the layer ignores what the reference ignored); {m.name!r} is a "
                          f"{m.kind}. Similarity measures: {', '.join(similar)}")
    return m, False


def estimator_of(measure: Measure | None, debiased: bool) -> str:
    """What the ``estimator`` column says: ``biased`` / ``debiased`` (linear CKA) or the measure's name."""
    return measure.name if measure is not None else ("debiased" if debiased else "biased")


def features(model: ModelWrapper, x: torch.Tensor, layers: list[str], batch_size: int | None) -> dict[str, torch.Tensor]:
    """``{layer: (n, features)}`` representations of ``model``'s ``layers`` on images ``x`` (CPU tensors)."""
    reps = model.representations(x, layers, batch_size=batch_size or 256)
    return {layer: reps.pop(layer).cpu() for layer in layers}

#: the tidy STIR table (``PRETRAINED`` / ``FINETUNED``, the role labels, come from :mod:`ftlens.vocabulary`)
STIR_COLUMNS = ["target", "reference", "target_layer", "target_layer_number", "reference_layer",
                "reference_layer_number", "seed", "stir", "residual"]
#: the clean-image CKA table: ``CKA(model^[layer], pretrained^[pretrained_layer])``
CKA_COLUMNS = ["model", "layer", "layer_number", "pretrained_layer", "pretrained_layer_number", "seed", "cka"]
#: one row per bootstrap replicate of a per-layer (diagonal) STIR or clean CKA value
BOOTSTRAP_COLUMNS = ["quantity", "target", "reference", "layer", "seed", "replicate", "value"]
_BOOTSTRAP_SEED = 104_729  # offset of the resampling generator's seed (independent of the start noise)


def bootstrap_indices(n: int, replicates: int, seed: int) -> torch.Tensor:
    """``replicates`` resamples (with replacement) of ``n`` image indices -> (replicates, n) int64.

    The same resamples serve every quantity of a seed, so differences (learning, forgetting)
    are bootstrapped pairwise.
    """
    g = torch.Generator().manual_seed(_BOOTSTRAP_SEED + int(seed))
    return torch.randint(0, n, (int(replicates), n), generator=g)


def bootstrap_cka(k: torch.Tensor, l: torch.Tensor, index: torch.Tensor, *, debiased: bool = False,  # noqa: E741
                  chunk: int = 16) -> torch.Tensor:
    """CKA of the two Grams (n, n) restricted to each resample of ``index`` (B, n) -> (B,) float64.

    A resample of the images is the matching rows and columns of each Gram matrix, so no
    forward pass is repeated. Biased: from the resample's multiplicities ``w`` (how often each
    image was drawn), ``trace(K_b H L_b H) = w'(K*L)w - 2/n sum_a w_a (Kw)_a (Lw)_a +
    (w'Kw)(w'Lw)/n^2``, a few matrix products for all resamples at once (``*``: elementwise).
    Debiased: one :func:`cka_from_grams` per resample on the gathered rows and columns.
    """
    k, l = k.double(), l.double()  # noqa: E741
    if debiased:
        return torch.tensor([cka_from_grams(k[i][:, i], l[i][:, i], debiased=True) for i in index],
                            dtype=torch.float64)
    # centring the full Grams first changes no resample's centred Gram (it only adds terms
    # u_a + u_b, which the resample's own centring removes) and avoids cancellation below
    k = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    l = l - l.mean(0, keepdim=True) - l.mean(1, keepdim=True) + l.mean()  # noqa: E741
    n = index.shape[1]
    w = torch.zeros(index.shape[0], k.shape[0], dtype=torch.float64)
    w.scatter_add_(1, index, torch.ones(index.shape, dtype=torch.float64))
    kw, lw = w @ k, w @ l  # (B, n): K w and L w for every resample (K, L symmetric)

    def hsic(a: torch.Tensor, aw: torch.Tensor, b: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
        quad = ((w @ (a * b)) * w).sum(1)
        return quad - 2.0 / n * (w * aw * bw).sum(1) + (w * aw).sum(1) * (w * bw).sum(1) / n**2

    return hsic(k, kw, l, lw) / (hsic(k, kw, k, kw) * hsic(l, lw, l, lw)).sqrt()


def grams(model: ModelWrapper, x: torch.Tensor, layers: list[str], batch_size: int | None) -> dict[str, torch.Tensor]:
    """``{layer: float64 Gram (n, n)}`` of ``model``'s ``layers`` on images ``x`` (CPU tensors).

    On CUDA the representations stay on the GPU (float32 forward) and each Gram is computed
    there in float64: the same arithmetic as the CPU path, without moving n x d features to
    the host and multiplying them there.
    """
    if model.device.type == "cuda":
        return _grams_on_device(model, x, layers, batch_size)
    reps = model.representations(x, layers, batch_size=batch_size or 256)
    return {layer: gram_linear(reps.pop(layer)) for layer in layers}


def _grams_on_device(model: ModelWrapper, x: torch.Tensor, layers: list[str], batch_size: int | None) -> dict[str, torch.Tensor]:
    model.check_images(x)
    device = model.device
    bs = batch_size or 256
    chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    with model.session(), torch.inference_mode():
        for lo in range(0, x.shape[0], bs):
            reps = model.forward_layers(x[lo : lo + bs].to(device, non_blocking=True), layers, clone=False)
            for layer in layers:
                chunks[layer].append(reps[layer].float())
    return {layer: gram_linear(torch.cat(chunks.pop(layer))).cpu() for layer in layers}


def score(
    plan: Plan,
    inversions: Mapping[str, Inversion],
    images: torch.Tensor,
    targets: Mapping[str, tuple[ModelWrapper, Sequence[str]]],
    *,
    debiased: bool = False,
    batch_size: int | None = None,
    clean_grams: dict | None = None,
    bootstrap: int = 0,
    bootstrap_rows: list | None = None,
    measure: Measure | None = None,
) -> pd.DataFrame:
    """Tidy STIR table of every target layer against every finished inversion of the plan.

    ``STIR(target^[i] | reference^[j]) = CKA(target^[i](X), target^[i](X'_j))`` (linear CKA,
    float64, biased unless ``debiased``), one row per (target, reference, target_layer,
    reference_layer, seed), with the mean residual of the inversion and each layer's 1-based
    number in its own model.

    Args:
        targets: ``{label: (model, layers)}``; a target may be one of the references.
        clean_grams: an optional dict filled with ``{(label, seed): {layer: Gram on X}}``
            (reused if already filled), e.g. to compute CKA on clean images without another forward.
        bootstrap: resamples of the images per seed for the per-layer (``target_layer ==
            reference_layer``) values; appended to ``bootstrap_rows`` as tuples of
            :data:`BOOTSTRAP_COLUMNS` (:func:`bootstrap_cka`); linear CKA only.
        measure: another similarity instead of linear CKA (:func:`stir_measure`); ``clean_grams``
            then holds representations, not Grams.
    """
    clean = clean_grams if clean_grams is not None else {}
    missing = [item for item in plan.items if item.key not in inversions]
    if missing:
        raise KeyError(
            f"{len(missing)} work item(s) have no inversion (first: {missing[0].describe()}); "
            "run them first (run_plan) or load them from the cache"
        )
    estimator = estimator_of(measure, debiased)
    prepare = grams if measure is None else features
    numbers = {label: dict(zip(layers, layer_numbers(list(layers), model), strict=True))
               for label, (model, layers) in targets.items()}
    ref_numbers = {label: dict(zip(plan.layers[label], layer_numbers(plan.layers[label], model), strict=True))
                   for label, model in plan.references.items()}
    rows = []
    for seed in plan.seeds:
        x = plan.sample(images, seed)
        for label, (model, layers) in targets.items():
            if (label, seed) not in clean:
                clean[(label, seed)] = prepare(model, x, list(layers), batch_size)
        for item in (it for it in plan.items if it.seed == seed):
            inv = inversions[item.key]
            residual = inv.mean_residual
            for label, (model, layers) in targets.items():
                inverted = prepare(model, inv.images, list(layers), batch_size)
                for layer in layers:
                    if measure is not None:
                        value = measure(clean[(label, seed)][layer], inverted[layer])
                    else:
                        value = cka_from_grams(clean[(label, seed)][layer], inverted[layer], debiased=debiased,
                                               names=(f"layer {layer} of the {label} model",
                                                      f"layer {layer} of the {label} model on images inverted "
                                                      f"through layer {item.layer} of the {item.reference} model"))
                    rows.append((label, item.reference, layer, numbers[label][layer], item.layer,
                                 ref_numbers[item.reference][item.layer], seed, value, residual))
                if bootstrap and bootstrap_rows is not None and item.layer in layers and measure is None:
                    index = bootstrap_indices(plan.n_images, bootstrap, seed)
                    values = bootstrap_cka(clean[(label, seed)][item.layer], inverted[item.layer], index,
                                           debiased=debiased)
                    bootstrap_rows.extend(("stir", label, item.reference, item.layer, seed, b, float(v))
                                          for b, v in enumerate(values.tolist()))
    df = pd.DataFrame(rows, columns=STIR_COLUMNS)
    df["estimator"] = estimator
    df.attrs["estimator"] = estimator
    return df


def cka_table(
    clean_grams: Mapping[tuple[str, int], Mapping[str, torch.Tensor]],
    seeds: Sequence[int],
    layers: Sequence[str],
    debiased: bool,
    *,
    numbers: Sequence[int] | None = None,
    bootstrap: int = 0,
    bootstrap_rows: list | None = None,
    n_images: int | None = None,
    measure: Measure | None = None,
) -> pd.DataFrame:
    """Tidy clean-image CKA: ``CKA(ft^[a], pt^[b])`` and ``CKA(pt^[a], pt^[b])`` for all a, b.

    One row per (model, layer a, pretrained_layer b, seed) (:data:`CKA_COLUMNS`); ``numbers``
    are the layers' 1-based positions (default ``1..L``). With ``bootstrap``, the per-layer ``CKA(ft^[i], pt^[i])`` of each resample of the seed's
    ``n_images`` images is appended to ``bootstrap_rows`` (quantity ``"cka"``). With ``measure``
    (:func:`stir_measure`), ``clean_grams`` holds representations and the column ``cka`` is that
    measure (no bootstrap).
    """
    number = dict(zip(layers, numbers if numbers is not None else range(1, len(layers) + 1), strict=True))
    rows = []
    for seed in seeds:
        if bootstrap and bootstrap_rows is not None and measure is None:
            index = bootstrap_indices(int(n_images), bootstrap, seed)
            for layer in layers:
                values = bootstrap_cka(clean_grams[(FINETUNED, seed)][layer], clean_grams[(PRETRAINED, seed)][layer],
                                       index, debiased=debiased)
                bootstrap_rows.extend(("cka", FINETUNED, PRETRAINED, layer, seed, b, float(v))
                                      for b, v in enumerate(values.tolist()))
        pt = clean_grams[(PRETRAINED, seed)]
        for model in (FINETUNED, PRETRAINED):
            own = clean_grams[(model, seed)]
            for la in layers:
                for lb in layers:
                    if measure is not None:
                        value = measure(own[la], pt[lb])
                    else:
                        value = cka_from_grams(own[la], pt[lb], debiased=debiased,
                                               names=(f"layer {la} of the {model} model",
                                                      f"layer {lb} of the {PRETRAINED} model"))
                    rows.append((model, la, number[la], lb, number[lb], seed, value))
    df = pd.DataFrame(rows, columns=CKA_COLUMNS)
    df["estimator"] = estimator_of(measure, debiased)
    return df
