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


def _make_vit(seed: int, **kwargs):
    """The small ViT (``ftlens:vit-micro``: 4 blocks, 16x16 inputs) with weights drawn from ``seed``."""
    from ftlens.models import load_model

    torch.manual_seed(seed)
    return load_model("ftlens:vit-micro", **kwargs)


def _make_pool(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """``n`` uniform random images (n, 3, size, size) in [0, 1] from ``seed``."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def make_vit():
    """Factory: ``make_vit(seed, **load_model_kwargs)`` -> a vit-micro wrapper (same seed, same weights)."""
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
