"""The CKA one-liner over a whole dataset: plain timm CNNs at any image size, exact CKA where memory
allows, the minibatch estimator (Nguyen et al.) otherwise, checked against slow references and,
where it is installed, against pytorch-cka."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import ftlens
from ftlens.errors import ConfigError, ImageError
from ftlens.similarity import cka_matrix

LAYERS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def _cnn(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10)


@pytest.fixture(scope="module")
def cnns():
    return _cnn("resnet10t", 0), _cnn("resnet18", 1)


@pytest.fixture(scope="module")
def images():
    return torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _reps(model: torch.nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Slow reference: forward hooks on the raw model in eval mode, ImageNet-normalised input."""
    out, hooks = {}, []
    for name in layers:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda _m, _i, o, name=name: out.__setitem__(name, o.detach().flatten(1).double())))
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    was = model.training
    model.eval()
    with torch.no_grad():
        model((x - mean) / std)
    model.train(was)
    for h in hooks:
        h.remove()
    return out


def _hsic1(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al.'s unbiased HSIC_1 written out (Grams with zeroed diagonals)."""
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=x.dtype)
    value = (torch.trace(k @ l) + (one.T @ k @ one) * (one.T @ l @ one) / ((n - 1) * (n - 2))
             - 2.0 / (n - 2) * (one.T @ k @ l @ one))
    return float(value / (n * (n - 3)))


def test_one_liner_on_plain_timm_cnns_at_32px(cnns, images):
    """ftlens.CKA(cnn_a, cnn_b).compare(loader_of_32px_images): no extra arguments; the models stay as they were."""
    a, b = cnns
    a.train()
    modes = [m.training for m in a.modules()]
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=8)
    result = ftlens.CKA(a, b).compare(loader)
    assert result.matrix.shape == (5, 5)  # the stem and the 4 stages of each ResNet (timm's feature_info)
    assert result.config["images"] == 40 and result.config["estimator"] == "biased"  # small: exact
    assert [m.training for m in a.modules()] == modes and all(p.requires_grad for p in a.parameters())
    assert np.isfinite(result.matrix.to_numpy()).all()


def test_exact_path_equals_cka_of_all_representations(cnns, images):
    a, b = cnns
    loader = DataLoader(TensorDataset(images), batch_size=16)
    for debiased in (False, True):
        got = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS, debiased=debiased).compare(
            loader, estimator="exact")
        want = cka_matrix(_reps(a, images, LAYERS), _reps(b, images, LAYERS), debiased=debiased)
        np.testing.assert_allclose(got.matrix.to_numpy(), want.to_numpy(), atol=1e-5)


def test_minibatch_path_equals_the_averaged_hsic1_terms(cnns, images):
    a, b = cnns
    loader = DataLoader(TensorDataset(images), batch_size=10)  # 4 batches
    got = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS).compare(loader, estimator="minibatch")
    assert got.config["estimator"] == "minibatch" and got.config["batches"] == 4 and "minibatch" in got.title
    ra, rb = _reps(a, images, LAYERS), _reps(b, images, LAYERS)
    want = np.zeros((len(LAYERS), len(LAYERS)))
    for i, la in enumerate(LAYERS):
        for j, lb in enumerate(LAYERS):
            parts = [(_hsic1(ra[la][s], rb[lb][s]), _hsic1(ra[la][s], ra[la][s]), _hsic1(rb[lb][s], rb[lb][s]))
                     for s in (slice(k, k + 10) for k in range(0, 40, 10))]
            xy, xx, yy = np.mean(parts, axis=0)
            want[i, j] = xy / np.sqrt(xx * yy)
    np.testing.assert_allclose(got.matrix.to_numpy(), want, atol=1e-6)
    # one batch: the minibatch estimator is debiased CKA
    one = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS).compare(images, batch_size=40,
                                                                               estimator="minibatch")
    exact = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS, debiased=True).compare(images)
    np.testing.assert_allclose(one.matrix.to_numpy(), exact.matrix.to_numpy(), atol=1e-6)


def test_auto_streams_when_exact_would_not_fit_and_short_batches(cnns, images):
    a, b = cnns
    cka = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS)
    auto = cka.compare(images, batch_size=13, max_memory=10_000)
    forced = cka.compare(images, batch_size=13, estimator="minibatch")
    assert auto.config["estimator"] == "minibatch"
    np.testing.assert_array_equal(auto.matrix.to_numpy(), forced.matrix.to_numpy())
    assert forced.config["images"] == 39 and forced.config["images_left_out"] == 1  # 13 + 13 + 13 + (1 < 4)
    with pytest.raises(ConfigError, match="minibatch"):
        ftlens.CKA(a, b, measure="procrustes_distance").compare(images, estimator="minibatch")
    with pytest.raises(ImageError, match="at least 4"):
        cka.compare(images[:3], estimator="minibatch")


def test_same_model_once_and_vit_needs_image_size(make_vit, images):
    vit = make_vit(0)
    with pytest.raises(ImageError, match=r"image_size=32"):
        ftlens.CKA(vit, vit).compare(images)
    result = ftlens.CKA("ftlens:vit-micro", "ftlens:vit-micro", image_size=32).compare(images[:8])
    assert result.matrix.shape == (4, 4)


def test_agrees_with_pytorch_cka(cnns, images):
    """The same numbers as pytorch-cka's compute_cka (minibatch HSIC_1 on the loader's batches) before
    its clamp to [0, 1], where pytorch-cka's arithmetic is exact enough to compare with: run in
    float64. (In float32 its uncentred Grams lose the HSIC_1 terms to cancellation: off by 0.1 and
    more at batches of 10, see BENCHMARKS.md; ftlens centres the features before the product.)"""
    peer = pytest.importorskip("cka")
    a, b = cnns
    loader = DataLoader(TensorDataset(images), batch_size=10)
    ours = ftlens.CKA(a, b, first_layers=LAYERS, second_layers=LAYERS).compare(loader, estimator="minibatch")
    # pytorch-cka runs the raw models on the raw images: give it the same normalised inputs
    mean = torch.tensor(a.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(a.pretrained_cfg["std"]).view(1, 3, 1, 1)
    norm = DataLoader(TensorDataset(((images - mean) / std).double()), batch_size=10)
    a64, b64 = copy.deepcopy(a).double(), copy.deepcopy(b).double()
    raw = {}
    unclamped = peer.CKA._compute_cka_matrix

    def keep(self, xy, xx, yy):  # the ratio before the clamp, then pytorch-cka's own code
        raw["cka"] = (xy / torch.sqrt(xx[:, None] * yy[None, :])).numpy()
        return unclamped(self, xy, xx, yy)

    peer.CKA._compute_cka_matrix = keep
    try:
        (clamped,) = peer.compute_cka(a64, b64, norm, layers=LAYERS, device="cpu", progress=False)
    finally:
        peer.CKA._compute_cka_matrix = unclamped
    np.testing.assert_allclose(ours.matrix.to_numpy(), raw["cka"], atol=1e-4)
    np.testing.assert_allclose(np.clip(raw["cka"], 0, 1), clamped.numpy(), atol=1e-12)


def test_batchnorm_folding_changes_only_rounding(cnns, images):
    from ftlens.models.inference import fold_batchnorm

    a, _ = cnns
    before = {k: v.clone() for k, v in a.state_dict().items()}
    a.eval()
    folded, folds = fold_batchnorm(a, images[:4])
    batchnorms = sum(type(m) is torch.nn.BatchNorm2d for m in a.modules())
    assert folds == batchnorms  # every BatchNorm of a ResNet follows a convolution
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())  # the original is untouched
    with torch.no_grad():
        want, got = a(images), folded(images)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    from ftlens.models.inference import channels_last_pools

    assert channels_last_pools(folded) == 1 and type(a.maxpool) is torch.nn.MaxPool2d  # the copy's pool only
    with torch.no_grad():
        assert torch.equal(folded(images), got)  # a maximum is exact in any memory format
    # a convolution whose output also goes elsewhere is not folded: the check on real inputs catches it
    conv = torch.nn.Conv2d(3, 4, 3)

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.out = conv, torch.nn.BatchNorm2d(4), torch.nn.Identity()
            self.bn.running_mean.fill_(0.3)

        def forward(self, x):
            y = self.conv(x)
            return self.out(self.bn(y) + y)

    _, n = fold_batchnorm(Both().eval(), images[:2])
    assert n == 1  # folded (the hooks cannot see the second use) ...
    result = ftlens.CKA(Both(), Both(), first_layers=["out"], second_layers=["out"]).compare(images[:8])
    assert result.config["batchnorm_folded"] is False  # ... so the comparison on real inputs refuses the copy

    x = images[:24]
    on = ftlens.CKA(a, cnns[1], first_layers=LAYERS, second_layers=LAYERS).compare(x, estimator="minibatch",
                                                                                   batch_size=8)
    off = ftlens.CKA(a, cnns[1], first_layers=LAYERS, second_layers=LAYERS).compare(x, estimator="minibatch",
                                                                                    batch_size=8, fold=False)
    assert on.config["batchnorm_folded"] and not off.config["batchnorm_folded"]
    np.testing.assert_allclose(on.matrix.to_numpy(), off.matrix.to_numpy(), atol=1e-5)


def test_minibatch_float32_constant_layer_is_nan_with_a_warning():
    from ftlens.errors import DegenerateRepresentationWarning
    from ftlens.similarity import MinibatchCKA

    acc = MinibatchCKA()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand(16, 5, generator=gen)
        acc.update({"const": torch.full((16, 7), 0.1), "x": x}, {"x": x})  # 0.1: not exact in float32
    with pytest.warns(DegenerateRepresentationWarning, match="const"):
        m = acc.compute()
    assert np.isnan(m.loc["const", "x"]) and m.loc["x", "x"] == pytest.approx(1.0, abs=1e-12)


def test_minibatch_update_of_several_batches_at_once_equals_one_by_one():
    from ftlens.similarity import MinibatchCKA

    gen = torch.Generator().manual_seed(1)
    a = {"x": torch.rand(30, 7, generator=gen), "y": torch.rand(30, 2, 3, generator=gen).relu()}
    b = {"z": torch.rand(30, 5, generator=gen) + a["x"][:, :5]}
    once, each = MinibatchCKA(), MinibatchCKA()
    once.update(a, b, batches=3)
    for k in range(3):
        each.update({n: r[k * 10 : (k + 1) * 10] for n, r in a.items()}, {n: r[k * 10 : (k + 1) * 10] for n, r in b.items()})
    assert once.n_batches == each.n_batches == 3
    np.testing.assert_allclose(once.compute().to_numpy(), each.compute().to_numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="equal minibatches"):
        once.update(a, b, batches=4)
