"""Test-session settings shared by every test file."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# Headless plots, no progress bars, throw-away cache and data folders (never the user's).
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FTLENS_PROGRESS", "0")
os.environ.setdefault("FTLENS_CACHE_DIR", tempfile.mkdtemp(prefix="ftlens-test-cache-"))
os.environ.setdefault("FTLENS_DATA_DIR", tempfile.mkdtemp(prefix="ftlens-test-data-"))  # generated corruptions


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the tests use tiny models, and on 2 cores shared with other jobs
    two spinning OpenMP threads run several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- shared models and images


def _make_vit(seed: int = 0, **kwargs):
    """The small ViT (``ftlens:vit-micro``: 4 blocks, 16x16 inputs) with weights drawn from ``seed``."""
    from ftlens.models import load_model

    torch.manual_seed(seed)
    return load_model("ftlens:vit-micro", **kwargs)


def _make_pool(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """``n`` uniform random images (n, 3, size, size) in [0, 1] from ``seed``."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def make_vit():
    """Factory: ``make_vit(seed=0, **load_model_kwargs)`` -> a vit-micro wrapper (same seed, same weights)."""
    return _make_vit


@pytest.fixture(scope="session")
def make_pool():
    """Factory: ``make_pool(n, seed, size=16)`` -> random images (n, 3, size, size) in [0, 1]."""
    return _make_pool


@pytest.fixture(scope="module")
def pt(make_vit):
    """The 'pretrained' model of the tests (vit-micro, seed 0)."""
    return make_vit(0)


@pytest.fixture(scope="module")
def ft(make_vit):
    """A *different* model (vit-micro, seed 1), standing for the finetuned one."""
    return make_vit(1)


def _synthetic_comparison(learning, forgetting, cka_divergence, flow=None, *, seeds: int = 3, noise: float = 0.002,
                          residual: float = 0.1, seed: int = 0):
    """A :class:`~ftlens.invariance.Comparison` whose answers are known, built from synthetic STIR tables.

    Per seed: ``STIR(pt|pt) = STIR(ft|ft) = 0.9`` (+ noise) everywhere; on the diagonal
    ``STIR(ft^[i]|pt^[i]) = STIR(pt^[i]|pt^[i]) - forgetting_i`` and ``STIR(pt^[i]|ft^[i]) =
    STIR(ft^[i]|ft^[i]) - learning_i``; off the diagonal ``STIR(ft^[a]|pt^[b]) = 0.6 + flow[b, a] / 2``
    so that the corrected flow is ``flow`` (antisymmetric) up to the noise; ``CKA(ft^[i], pt^[i]) =
    1 - cka_divergence_i``; every inversion has mean residual ``residual``.
    """
    import numpy as np
    import pandas as pd

    from ftlens.invariance.result import build_comparison

    L = len(learning)
    layers = [f"blocks.{i}" for i in range(L)]
    flow = np.zeros((L, L)) if flow is None else np.asarray(flow, dtype=float)
    rng = np.random.default_rng(seed)
    stir_rows, cka_rows = [], []
    for s in range(seeds):
        m = {key: 0.9 + noise * rng.standard_normal((L, L)) for key in ("pp", "ff")}
        m["fp"] = 0.6 + flow.T / 2 + noise * rng.standard_normal((L, L))
        m["pf"] = 0.6 + noise * rng.standard_normal((L, L))
        for i in range(L):
            m["fp"][i, i] = m["pp"][i, i] - forgetting[i]
            m["pf"][i, i] = m["ff"][i, i] - learning[i]
        for key, (target, reference) in {"pp": ("pretrained", "pretrained"), "ff": ("finetuned", "finetuned"),
                                         "fp": ("finetuned", "pretrained"), "pf": ("pretrained", "finetuned")}.items():
            for a in range(L):
                for b in range(L):
                    stir_rows.append((target, reference, layers[a], layers[b], s, float(m[key][a, b]), residual))
        for model in ("finetuned", "pretrained"):
            for a in range(L):
                for b in range(L):
                    same = model == "pretrained" and a == b
                    value = 1.0 if same else (1.0 - cka_divergence[a] + noise * rng.standard_normal()
                                              if a == b else 0.5)
                    cka_rows.append((model, layers[a], layers[b], s, value))
    stir_df = pd.DataFrame(stir_rows, columns=["target", "reference", "target_layer", "reference_layer", "seed",
                                               "stir", "residual"])
    stir_df["estimator"] = "biased"
    cka_df = pd.DataFrame(cka_rows, columns=["model", "layer", "pretrained_layer", "seed", "cka"])
    config = {"layers": layers, "first_term": "measured", "seeds": list(range(seeds))}
    return build_comparison(stir_df, cka_df, pd.DataFrame(), config)


@pytest.fixture(scope="session")
def synthetic_comparison():
    """Factory: ``synthetic_comparison(learning, forgetting, cka_divergence, flow, seeds=3, noise=0.002,
    residual=0.1)`` -> a Comparison with those per-layer values (see the helper's docstring)."""
    return _synthetic_comparison
