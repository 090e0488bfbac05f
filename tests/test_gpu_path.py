"""The GPU path of inversion: TF32 helper, runtime settings, batch size from memory, the compiled
block stack and the bf16 tolerance. CUDA-only checks are skipped without a GPU; the rest runs on the
CPU (the compiled stack with the ``eager`` dynamo backend, bf16 with CPU autocast as a proxy)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from ftlens import inversion
from ftlens.invariance import compare
from ftlens.inversion import (
    Runtime,
    auto_batch_size,
    batch_size_from_memory,
    current_runtime,
    invert,
    runtime,
    set_tf32,
    tf32,
)
from ftlens.models import load_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BF16_STIR_TOLERANCE = 0.02  # the documented tolerance of bf16 against float32 (absolute, per STIR value)


@pytest.fixture(scope="module")
def images(make_pool):
    return make_pool(12, 3)


# ------------------------------------------------------------------------------ CPU-testable


def test_tf32_helper_sets_and_restores_precision():
    before = torch.get_float32_matmul_precision()
    previous = set_tf32(True)
    try:
        assert previous == before and torch.get_float32_matmul_precision() == "high"
        with tf32(False):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_runtime_context_and_validation():
    assert current_runtime() == Runtime() and current_runtime().compile_backend is None
    with runtime(compile=True, memory_fraction=0.5) as rt:
        assert rt.compile_backend == "inductor" and current_runtime().memory_fraction == 0.5
        with runtime(compile="eager"):
            assert current_runtime().compile_backend == "eager" and current_runtime().memory_fraction == 0.5
        assert current_runtime().compile_backend == "inductor"
    assert current_runtime() == Runtime()
    with pytest.raises(ValueError, match="memory_fraction"):
        Runtime(memory_fraction=0.0)
    with pytest.raises(ValueError, match="max_batch_size"):
        Runtime(max_batch_size=0)


def test_batch_size_from_memory():
    mib = 2**20
    # 1000 MiB free, 80% usable, 10 MiB fixed, 7 MiB per image -> cap 112; 500 images -> 5 batches of 100
    assert batch_size_from_memory(500, 1000 * mib, 7 * mib, 10 * mib) == 100
    assert batch_size_from_memory(50, 1000 * mib, 7 * mib, 10 * mib) == 50  # everything in one batch
    assert batch_size_from_memory(500, 1000 * mib, 7 * mib, memory_fraction=1.0, max_batch_size=64) == 63
    assert batch_size_from_memory(500, 1 * mib, 7 * mib) == 1  # never below one image
    with pytest.raises(ValueError):
        batch_size_from_memory(0, mib, mib)


def test_auto_batch_size_on_cpu_is_the_default(images, make_vit):
    m = make_vit(0)
    assert auto_batch_size(m, "blocks.1", 1000) == inversion.DEFAULT_BATCH_SIZE
    assert auto_batch_size(m, "blocks.1", 12) == 12
    with runtime(max_batch_size=5):
        assert auto_batch_size(m, "blocks.1", 1000) == 5


def test_compiled_block_stack_is_the_eager_computation_and_compiles_once(images, make_vit):
    from torch._dynamo.utils import counters

    m = make_vit(0)
    torch._dynamo.reset()
    counters.clear()
    for layer in m.layers:  # all four blocks, batches of 5, 5 and 2 images
        eager = invert(m, layer, images, steps=3, seed=1, batch_size=5)
        compiled = invert(m, layer, images, steps=3, seed=1, batch_size=5, compile="eager")
        assert compiled.extra["compile"] == "eager" and eager.extra["compile"] is None
        assert torch.equal(eager.images, compiled.images), layer
        assert torch.equal(eager.residual, compiled.residual), layer
        assert torch.equal(eager.history, compiled.history), layer
    # one graph for all blocks and layers (per grad mode and batch shape), not one per layer
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])


def test_compile_falls_back_for_other_models(images):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    m = load_model(net, layers=["1", "3"], input_size=(3, 16, 16))
    eager = invert(m, "3", images, steps=2)
    with pytest.warns(UserWarning, match="not a block"):
        compiled = invert(m, "3", images, steps=2, compile="eager")
    assert torch.equal(eager.images, compiled.images)


def test_bf16_within_tolerance_cpu_proxy(monkeypatch, make_vit):
    """bf16 autocast of the inversion forward (on CUDA in real use) against float32.

    The CPU path ignores autocast, so CPU autocast stands in for it here: the same ops run in
    bfloat16, the residual stays float32 and CKA float64, as on the GPU.
    """
    pt, ft = make_vit(0), make_vit(1)
    pool = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    kw = dict(seeds=1, n_images=24, steps=6, cache=None, progress=False)
    ref = compare(pt, ft, pool, **kw)

    def cpu_bf16(device, dtype):
        return torch.autocast("cpu", dtype=torch.bfloat16) if device.type == "cpu" else contextlib.nullcontext()

    monkeypatch.setattr(inversion.loop, "_amp", cpu_bf16)  # where the loop looks it up
    low = compare(pt, ft, pool, **kw)
    diff = (ref.stir["stir"] - low.stir["stir"]).abs().max()
    assert diff < BF16_STIR_TOLERANCE, diff
    for col in ("learning", "forgetting"):
        assert (ref.per_layer[col] - low.per_layer[col]).abs().max() < 2 * BF16_STIR_TOLERANCE


# ------------------------------------------------------------------------------ CUDA only


@cuda
def test_cuda_float32_matches_cpu(images, make_vit):
    m = make_vit(0)
    cpu = invert(m, "blocks.3", images, steps=5, seed=0)
    gpu = invert(m.copy(), "blocks.3", images, steps=5, seed=0, device="cuda")
    assert (cpu.residual - gpu.residual).abs().max() < 5e-3
    assert gpu.extra["peak_gpu_bytes"] > 0


@cuda
def test_cuda_bf16_stir_within_tolerance(make_vit):
    pt, ft = make_vit(0).to("cuda"), make_vit(1).to("cuda")
    pool = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    kw = dict(seeds=1, n_images=64, steps=10, cache=None, progress=False, device="cuda")
    ref = compare(pt, ft, pool, **kw)
    low = compare(pt, ft, pool, autocast="bf16", **kw)
    assert (ref.stir["stir"] - low.stir["stir"]).abs().max() < BF16_STIR_TOLERANCE


@cuda
def test_cuda_auto_batch_size_and_compile():
    m = load_model("ftlens:vit-tiny-32", device="cuda")
    x = torch.rand(300, 3, 32, 32)
    bs = auto_batch_size(m, "blocks.11", 300, autocast="bf16")
    assert 1 <= bs <= 300
    with runtime(memory_fraction=1e-4):  # a tiny budget forces several balanced batches
        small = auto_batch_size(m, "blocks.11", 300)
    assert small < 300
    eager = invert(m, "blocks.11", x, steps=3, seed=0)
    compiled = invert(m, "blocks.11", x, steps=3, seed=0, compile=True)
    assert (eager.residual - compiled.residual).abs().max() < 1e-3
