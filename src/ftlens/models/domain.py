"""Where a model's inputs live, as an inversion needs to know it: :class:`InputDomain`.

An inversion (:mod:`ftlens.inversion`) steps through a model's input space. What that space is
belongs to the model, not to the loop: images are pixels in [0, 1] (:data:`PIXELS`: iterates are
clamped to the box, step lengths are in pixel units, starts are used as drawn); a text model's
word vectors are unbounded, its steps and starts are in units of its word-embedding table's
spread, and the attention mask travels in the input as a last channel that an inversion never
changes (:meth:`ftlens.models.text_wrapper.TextWrapper.domain`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["PIXELS", "InputDomain"]


@dataclass(frozen=True)
class InputDomain:
    """An input space.

    Attributes:
        low, high: the box iterates are clamped to (None: unbounded on that side).
        scale: the unit of step lengths: Adam's ``lr`` and ``step_size`` are multiples of it.
        centre: noise and uniform starts ``z`` become ``centre + scale * z`` (``mixed`` starts,
            real inputs, are used as they are).
        fixed_last: the last channel is part of what the input *is* (a text's attention mask):
            a start takes it from the input being inverted, and the model reads it without a
            gradient, so no step changes it.
    """

    low: float | None = 0.0
    high: float | None = 1.0
    scale: float = 1.0
    centre: float = 0.0
    fixed_last: bool = False

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clamped to the box, in place (returned)."""
        if self.low is None and self.high is None:
            return x
        return x.clamp_(self.low, self.high)

    def start(self, x0: torch.Tensor, x_true: torch.Tensor, kind: str) -> torch.Tensor:
        """The start of an inversion of ``x_true`` from the drawn ``x0`` (a new tensor when changed)."""
        if kind != "mixed" and (self.scale != 1.0 or self.centre != 0.0):
            x0 = x0 * self.scale + self.centre
        if self.fixed_last:
            x0 = x0.clone()
            x0[..., -1] = x_true[..., -1].to(x0)
        return x0

    def describe(self) -> dict[str, Any]:
        return asdict(self)


#: Images: pixels in [0, 1], steps in pixel units.
PIXELS = InputDomain()
