"""Models with BatchNorm (timm resnet): hashing, eval mode, compare, LP/FT/freeze-BN/surgical
by pattern, and the input size recorded in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ftlens.finetune import finetune
from ftlens.invariance import compare
from ftlens.models import checkpoint_path, load_model, save_checkpoint, tensor_bytes
from ftlens.store import tensor_hash

SIZE = 24  # resnet10t at 24 px: stages at 12, 6, 3, 2, 1 px


def _resnet(seed: int = 0):
    torch.manual_seed(seed)
    return load_model("timm:resnet10t", image_size=SIZE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bn")


@pytest.fixture(scope="module")
def start(workdir):
    """A 'pretrained' resnet10t checkpoint at 24 px whose BN running statistics are not the
    defaults (a few forwards in train mode), so that a change to them is visible."""
    m = _resnet(3)
    m.module.train()
    with torch.no_grad():
        for _ in range(3):
            m.module(torch.randn(8, 3, SIZE, SIZE))
    m.module.eval()
    return save_checkpoint(m, workdir / "start.safetensors")


def test_zero_dim_buffers_hash():
    t = torch.tensor(7)  # num_batches_tracked is a 0-dim int64
    assert tensor_bytes(t) == tensor_bytes(t.reshape(1)) == (7).to_bytes(8, "little")
    assert tensor_hash(t) != tensor_hash(torch.tensor(8))
    m = _resnet()
    fp = m.fingerprint
    assert fp == m.copy().fingerprint
    m.module.bn1.num_batches_tracked += 1  # only the counter differs
    assert m.refresh_fingerprint() != fp
    assert len({m.layer_fingerprint(layer) for layer in m.layers}) == len(m.layers)


def test_representations_use_eval_mode_and_restore_the_mode():
    m = _resnet()
    x = torch.rand(4, 3, SIZE, SIZE)
    expected = m.representations(x)
    stats = m.module.bn1.running_mean.clone()
    m.module.train()
    m.module.layer1.eval()  # a mixed state (as during surgical finetuning) is restored as it was
    got = m.representations(x)
    got_grad = m.forward_layers(x)
    for layer in m.layers:
        assert torch.equal(got[layer], expected[layer])
        torch.testing.assert_close(got_grad[layer], expected[layer], rtol=0, atol=0)
    assert torch.equal(m.module.bn1.running_mean, stats)  # no statistics update
    assert m.module.training and m.module.bn1.training and not m.module.layer1.training


def test_compare_exact_copy_and_perturbed_stage():
    pt = _resnet()
    pool = torch.rand(24, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    kw = dict(seeds=1, n_images=12, steps=4, cache=None, progress=False)
    same = compare(pt, pt.copy(), pool, **kw).per_layer
    assert (same["learning"] == 0).all() and (same["forgetting"] == 0).all()
    ft = pt.copy()
    with torch.no_grad():
        for p in ft.module.layer2.parameters():
            p.add_(0.5 * torch.randn_like(p))
    pl = compare(pt, ft, pool, **kw).per_layer
    before = [layer for layer in pt.layers if layer in ("act1", "layer1")]
    after = ["layer2", "layer3", "layer4"]
    assert (pl.loc[before, "forgetting"] == 0).all() and (pl.loc[before, "learning"] == 0).all()
    assert (pl.loc[after, "cka_divergence"] > 0).all()
    assert np.isfinite(pl[["learning", "forgetting", "cka_divergence"]].to_numpy()).all()


def _small(workdir, start):
    return dict(pretrained_from=str(start), data="digits", data_dir=str(workdir / "data"), batch_size=32,
                warmup_steps=1, train_size=64, test_size=32, epochs=1, augment=False, progress=False)


def _backbone(path):
    return {k: v for k, v in load_file(str(path)).items() if not k.startswith(("fc.", "task_head."))}


def test_lp_keeps_backbone_and_running_statistics_bit_identical(workdir, start):
    run = finetune(strategy="lp", out=str(workdir / "lp"), **_small(workdir, start))
    before, after = _backbone(start), _backbone(checkpoint_path(run.run_dir, 1))
    assert any(k.endswith("running_var") for k in before)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ft_trains_bn_and_freeze_bn_keeps_it(workdir, start):
    ft = finetune(strategy="ft", out=str(workdir / "ft"), lr=0.01, **_small(workdir, start))
    before, after = _backbone(start), _backbone(checkpoint_path(ft.run_dir, 1))
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])
    frozen = finetune(strategy="ft", freeze_bn=True, out=str(workdir / "ft-frozen-bn"), lr=0.01,
                      **_small(workdir, start))
    after = _backbone(checkpoint_path(frozen.run_dir, 1))
    bn = [k for k in before if ".bn" in f".{k}" or k.startswith("bn")]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])


def test_surgical_by_layer_pattern(workdir, start):
    run = finetune(strategy="surgical", surgical_layers="layer2*", out=str(workdir / "surg"), lr=0.01,
                   **_small(workdir, start))
    before = load_file(str(start))
    after = load_file(str(checkpoint_path(run.run_dir, 1)))
    changed = {k for k in before if not k.startswith("fc.") and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("layer2.") for k in changed), sorted(changed)
    assert any("running_mean" in k for k in changed)  # layer2's BN trains and updates its statistics
    assert not torch.equal(load_file(str(checkpoint_path(run.run_dir, 0)))["fc.weight"], after["fc.weight"])


def test_checkpoint_records_input_size_mean_std(tmp_path):
    m = load_model("timm:resnet10t", image_size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = save_checkpoint(m, tmp_path / "r.safetensors")
    back = load_model(path)
    assert back.input_size == (3, 40, 40) and back.mean == (0.5,) * 3 and back.std == (0.25,) * 3
    assert back.fingerprint == m.fingerprint
    assert load_model(path, image_size=32).input_size == (3, 32, 32)  # an explicit size wins


def test_finetuning_random_weights_warns(workdir):
    from ftlens.errors import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning, match="random weights"):
        finetune(model="timm:resnet10t", pretrained=False, image_size=SIZE, strategy="lp", out=str(workdir / "rand"),
                 **{k: v for k, v in _small(workdir, None).items() if k != "pretrained_from"})


def test_pre_logits_of_a_cnn_is_what_the_classifier_receives():
    m = _resnet()
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    got = m.representations(x, ["pre_logits"])["pre_logits"]
    with torch.no_grad():
        ref = m.module.forward_head(m.module.forward_features(m._normalize(x)), pre_logits=True)
    torch.testing.assert_close(got, ref)
    fp = m.layer_fingerprint("pre_logits")
    with torch.no_grad():
        m.module.fc.weight.add_(1.0)  # the head runs after its input: no effect
    m.refresh_fingerprint()
    assert m.layer_fingerprint("pre_logits") == fp
    with torch.no_grad():
        m.module.layer4[0].conv1.weight.add_(1.0)
    m.refresh_fingerprint()
    assert m.layer_fingerprint("pre_logits") != fp
