"""A model family is one module and one registry line: a toy family defined here and registered
with one line in ``FAMILIES`` loads by spec, is recognised as a module object, and goes through
representations, inversion and ``compare`` (an exact copy gives exactly 0; a perturbed middle
block gives 0 before it and forgetting > 0 from it on)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ftlens.invariance import compare
from ftlens.models import load_model
from ftlens.models.families import FAMILIES, family_of
from ftlens.models.families.base import Built, Defaults, Family, Source
from ftlens.models.load import takes_pretrained


class ToyNet(nn.Module):
    """stem -> 3 conv blocks -> global average pool."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Tanh())
                                      for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


class ToyFamily(Family):
    prefix = "toy"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        return Built(ToyNet(**kwargs), Source(f"toy:{name}", dict(kwargs)), random_init=True, family="toy")

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, ToyNet)

    def defaults(self, module: nn.Module) -> Defaults:
        return Defaults(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 12, 12),
                        layers=("blocks.0", "blocks.1", "blocks.2"))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", ToyFamily())  # the one registry line
    yield


def test_a_registered_family_loads_and_compares(toy, tmp_path):
    torch.manual_seed(0)
    pt = load_model("toy:small", width=6)
    assert pt.layers == ["blocks.0", "blocks.1", "blocks.2"] and tuple(pt.input_size) == (3, 12, 12)
    assert family_of(ToyNet()) is FAMILIES["toy"] and family_of(nn.Linear(2, 2)) is FAMILIES["module"]
    assert not takes_pretrained("toy:small")
    # a module object of the family is described by it (its defaults, not the plain module's)
    assert load_model(ToyNet()).layers == pt.layers

    pool = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    kw = dict(seeds=1, n_images=8, steps=40, cache=None, progress=False)
    same = compare(pt, pt.copy(), pool, **kw).per_layer
    assert (same["learning"] == 0).all() and (same["forgetting"] == 0).all()
    ft = pt.copy()
    with torch.no_grad():
        for p in ft.module.get_submodule("blocks.1").parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 2)
    pl = compare(pt, ft, pool, **kw).per_layer
    assert pl.loc["blocks.0", "forgetting"] == 0 and pl.loc["blocks.0", "learning"] == 0
    assert (pl.loc[["blocks.1", "blocks.2"], "forgetting"] > 0).all(), pl[["learning", "forgetting"]]
    assert list(pl["layer_number"]) == [1, 2, 3]


def test_an_unregistered_family_is_an_error_naming_the_families():
    from ftlens.errors import ModelError

    with pytest.raises(ModelError, match="toy:"):
        load_model("toy:small")
