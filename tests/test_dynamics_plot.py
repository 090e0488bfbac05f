"""The dynamics figure draws each layer's 95% interval over epochs (the noise floor from seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection

from ftlens.report.dynamics_plots import metric_over_epochs


def _dyn(with_interval: bool) -> pd.DataFrame:
    rows = []
    for epoch in range(3):
        for k, layer in enumerate(("blocks.0", "blocks.1")):
            row = {"epoch": epoch, "layer": layer}
            for m in ("learning", "forgetting", "cka_divergence"):
                v = 0.1 * epoch + 0.01 * k
                row |= {m: v, f"{m}_std": 0.001}
                if with_interval:
                    row |= {f"{m}_lo": v - 0.05, f"{m}_hi": v + 0.07}
            rows.append(row)
    return pd.DataFrame(rows)


def _band_extents(fig):
    ax = fig.axes[0]  # learning
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    return [(float(p.get_paths()[0].vertices[:, 1].min()), float(p.get_paths()[0].vertices[:, 1].max())) for p in polys]


def test_bands_are_the_interval_when_present():
    fig = metric_over_epochs(_dyn(True))
    bands = _band_extents(fig)
    assert len(bands) == 2
    # layer 1: values 0, 0.1, 0.2 -> band from -0.05 to 0.27
    assert np.allclose(bands[0], (-0.05, 0.27))
    assert "95% interval" in fig._suptitle.get_text()


def test_bands_fall_back_to_std():
    fig = metric_over_epochs(_dyn(False))
    assert np.allclose(_band_extents(fig)[0], (-0.001, 0.201))
    assert "std" in fig._suptitle.get_text()
