"""The analysis settings, with the paper's defaults written once.

Every default of the inversion (steps, step size, start) and of the analysis (images per
seed, seeds, CKA estimator, first term, interval level, convergence threshold) that the API,
the CLI and the experiment configs use comes from :data:`PAPER`. This module imports nothing
from ftlens, so any module may import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["PAPER", "Settings"]


@dataclass(frozen=True)
class Settings:
    """How an analysis is run and judged.

    Attributes:
        images: images per seed (the paper: 500).
        seeds: seeds; each draws its own images and start noise (the paper: 3).
        steps: the most inversion steps an image takes (the paper's text: 50 fixed steps, which is
            ``--schedule fixed --steps 50``; the project's default: 150 Adam steps, most images
            stopping earlier).
        step_size: L2 length of each normalised inversion step, per image, in [0, 1] pixels.
        start: inversion start, ``"noise"`` (N(0, 1), the paper) | ``"mixed"`` | ``"uniform"``.
        debiased: debiased (unbiased HSIC) linear CKA instead of the paper's biased one.
        first_term: ``"measured"`` (``STIR(m^[i] | m^[i])`` from the same inversions) or
            ``"one"`` (the paper's ``1 - STIR``) in learning and forgetting.
        confidence: level of every interval (0.95: 95% intervals).
        bootstrap: bootstrap resamples of the images within a seed.
        residual_threshold: an inversion whose mean relative residual ``||m(X') - m(X)|| /
            ||m(X)||`` stays above this is *not converged*; verdicts resting on it are
            inconclusive.
        schedule: inversion schedule, ``"adam"`` (the project's default: Adam on the pixels
            with early stopping, :mod:`ftlens.inversion.rules`), ``"adaptive"`` (normalised
            steps of adapted length) or ``"fixed"`` (the paper's).
        lr: the step of ``"adam"`` in [0, 1] pixel units.
        patience: ``"adam"`` lowers the step of an image whose best residual fell by less than
            1% over the last ``patience`` evaluations (twice, halving it), and stops it at the
            next such stall.
        stop_fraction: the early-stopping schedules stop an image once its residual is at most
            ``stop_fraction * residual_threshold`` (one threshold for the gate and the stop).
        alpha: significance level of the findings' tests (after multiple-comparison correction).
        negligible: the smallest difference of STIR-based quantities (learning, forgetting, the
            flow, CKA divergence: [0, 1] units) that a finding counts as an effect. A claim of
            a positive difference whose interval lies inside ``(-negligible, negligible)`` did
            not hold: the data exclude any effect of that size (an equivalence test, two
            one-sided tests at the interval's level). 0.01 is twice what converged inversions move
            the same quantity by with the budget or the method (``bench_gate``: up to 0.005).
        min_seeds, min_epochs, min_runs: fewer than these make a finding inconclusive.
        min_images: fewer images per seed make a run smoke-sized (a pipeline check, like
            ``--quick``'s 32 images); above it the intervals say what the data decide.
    """

    images: int = 500
    seeds: int = 3
    steps: int = 150
    step_size: float = 0.5
    start: str = "noise"
    debiased: bool = False
    first_term: str = "measured"
    confidence: float = 0.95
    bootstrap: int = 200
    residual_threshold: float = 0.5
    schedule: str = "adam"
    lr: float = 0.05
    patience: int = 20
    stop_fraction: float = 0.2
    alpha: float = 0.05
    negligible: float = 0.01
    min_seeds: int = 2
    min_epochs: int = 4
    min_runs: int = 4
    min_images: int = 50

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (unknown names raise TypeError)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The paper's settings (Merlin et al. 2023) and the project's defaults for judging them.
PAPER = Settings()
