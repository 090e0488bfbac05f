"""Sharding the work items of compare across processes (gloo on the CPU): same result, disjoint shares."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
import torch
from torch import nn

from ftlens import distributed
from ftlens.distributed import Context, ModelRef, assign, context, portable
from ftlens.invariance import compare, compare_plan
from ftlens.models import load_model, save_checkpoint
from ftlens.store import Cache

LAYERS = ["blocks.0", "blocks.1"]
KW = dict(layers=LAYERS, seeds=1, n_images=16, steps=5, progress=False)


@pytest.fixture(scope="module")
def models(pt, ft):
    return pt, ft


@pytest.fixture(scope="module")
def pool(make_pool):
    return make_pool(16, 7)


def test_two_gloo_processes_give_the_single_process_result(models, pool, tmp_path):
    pt, ft = models
    single = compare(pt, ft, pool, cache=None, **KW)
    cache_dir = tmp_path / "cache"
    sharded = compare(pt, ft, pool, cache=cache_dir, processes=2, **KW)

    pd.testing.assert_frame_equal(single.per_layer, sharded.per_layer, check_exact=True)
    pd.testing.assert_frame_equal(single.flow, sharded.flow, check_exact=True)
    pd.testing.assert_frame_equal(single.flow_relative, sharded.flow_relative, check_exact=True)
    pd.testing.assert_frame_equal(single.stir, sharded.stir, check_exact=True)

    # every unique item computed by exactly one rank, each rank its own (non-empty) share
    dist = sharded.config["distributed"]
    assert dist["world_size"] == 2 and [r["rank"] for r in dist["ranks"]] == [0, 1]
    *_, plan = compare_plan(pt, ft, pool, **{k: v for k, v in KW.items() if k != "progress"})
    shares = [set(r["computed"]) for r in dist["ranks"]]
    assert all(shares) and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(plan.unique_keys)
    assert [r["cache_writes"] for r in dist["ranks"]] == [len(s) for s in shares]
    assert all(r["threads"] >= 1 for r in dist["ranks"])
    assert len(Cache(cache_dir).entries()) == len(plan.unique_keys) == 4
    assert sharded.config["n_inversions_computed"] == 4

    # the shared cache holds every item: a single-process rerun computes nothing
    again = compare(pt, ft, pool, cache=cache_dir, **KW)
    assert again.config["n_inversions_computed"] == 0
    pd.testing.assert_frame_equal(single.per_layer, again.per_layer, check_exact=True)


def test_cli_processes(tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app

    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-micro", "--data", "digits",
            "--images", "8", "--steps", "1", "--seeds", "1", "--layers", "blocks.0,blocks.1", "--no-plots",
            "--cache-dir", str(cache), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--processes", "2"])
    assert result.exit_code == 0, result.output
    assert "sharded over 2 processes" in result.output
    assert (out / "per_layer.csv").exists() and len(Cache(cache).entries()) == 4
    refused = CliRunner().invoke(app, [*args, "--processes", "2", "--no-cache"])
    assert refused.exit_code != 0 and "cache" in refused.output


def test_sharding_needs_a_cache(models, pool):
    pt, ft = models
    with pytest.raises(ValueError, match="cache"):
        compare(pt, ft, pool, cache=None, processes=2, **KW)


def test_assign_is_disjoint_covering_and_balanced():
    costs = [float(1 + i % 12) for i in range(72)]  # 12 layers x 2 models x 3 seeds
    for world in (1, 2, 3, 8):
        shares = assign(costs, world)
        flat = sorted(i for s in shares for i in s)
        assert flat == list(range(72))
        loads = [sum(costs[i] for i in s) for s in shares]
        assert max(loads) - min(loads) <= max(costs)
    assert assign([1.0] * 6, 2) == [[0, 2, 4], [1, 3, 5]]  # equal costs: round robin
    assert assign(costs, 2) == assign(list(costs), 2)  # deterministic


def test_context_from_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert context() == Context() and not context().distributed and context().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.distributed, ctx.is_main) == (3, 4, 1, True, False)
    assert ctx.shard(list(range(10))) == [3, 7]
    assert ctx.resolve_device("cpu") == torch.device("cpu") and ctx.resolve_device(None) is None
    with pytest.raises(ValueError, match="launcher"):
        compare("ftlens:vit-micro", "ftlens:vit-micro", torch.rand(4, 3, 16, 16), processes=2)


def _same(a, b, x):
    assert a.fingerprint == b.fingerprint and a.layers == b.layers and a.name == b.name
    assert (a.mean, a.std, a.input_size) == (b.mean, b.std, b.input_size)
    ra, rb = a.representations(x), b.representations(x)
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_models_cross_process_boundaries(tmp_path, make_vit):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # a random-weight spec: the weights travel, not the spec
    m = make_vit(5)
    _same(m, pickle.loads(pickle.dumps(ModelRef.from_wrapper(m))).load(), x)
    # a checkpoint, with the final norm as an extra layer
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    ck = load_model(path, include_norm=True)
    back = pickle.loads(pickle.dumps(portable(ck))).load()
    _same(ck, back, x)
    assert back.layers[-1] == "pre_logits" and back.spec == str(path)
    # a spec string is loaded once, in the parent
    ref = portable(str(path))
    assert ref.fingerprint == ck.fingerprint
    # a user nn.Module
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    user = load_model(net, layers=["1", "3"], input_size=(3, 16, 16))
    _same(user, pickle.loads(pickle.dumps(portable(user))).load(), x)


def test_launch_local_reraises_the_original_error():
    with pytest.raises(KeyError, match="boom"):
        distributed.launch_local(_fail_on_rank_1, 2)


def _fail_on_rank_1(ctx: Context):
    if ctx.rank == 1:
        raise KeyError("boom")
    distributed.barrier()
    return ctx.rank
