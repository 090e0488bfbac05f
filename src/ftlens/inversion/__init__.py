"""Representation inversion: images ``X'`` that a reference layer cannot tell from ``X``.

Given a model ``m``, a layer ``j`` and images ``X`` (values in [0, 1]), :func:`invert` finds
``X'`` with ``m^[j](X') ~= m^[j](X)`` by normalised gradient descent on the input only
(ALGORITHMS.md §2):

- start ``X'_0``: ``"noise"`` N(0, 1) of the image's shape, one draw per image (the STIR
  "super-noise" default), ``"uniform"`` U(0, 1) noise, or ``"mixed"`` (image ``i`` starts from
  another image of the set, a seeded derangement, so no image starts from itself);
- loss per image: ``r_i = ||m^[j](x'_i) - m^[j](x_i)||_2 / ||m^[j](x_i)||_2`` (the relative
  residual; flattened representation, float32);
- step per image: ``x' <- clamp(x' - s_i * g / ||g||_2, 0, 1)`` with ``g`` the gradient of
  ``r_i`` w.r.t. ``x'_i`` and the norm over all pixels of that image; no epsilon ball; the step
  length ``s_i`` is ``step_size`` (fixed schedule) or adapted per image (see Schedules);
- the iterate with the lowest residual seen is kept per image ("use best"), the start and the
  last iterate included (``steps`` gradient steps, ``steps + 1`` evaluated iterates).

Schedules (:class:`InversionSettings`, rules in :mod:`ftlens.inversion.rules`).
``schedule="fixed"`` is the paper's loop above, every image taking every step. The default
``"adam"`` keeps the method's objective, start, clamp and "use best" and changes the step: Adam on
the pixels (per-pixel moment estimates, step ``lr`` = 0.05 in [0, 1] pixel units), up to ``steps``
= 150 steps, an image stopping once its best residual is at most ``stop_residual`` =
:data:`STOP_RESIDUAL` or fell by less than 1% over its last ``patience`` = 20 evaluations.
``"adaptive"`` (the default before Adam) keeps the normalised-gradient direction with a per-image
step length (times ``grow`` = 1.5 after a step that lowered the image's best residual, times
``decay`` = 0.5 after one that did not) and stops an image after ``patience`` evaluations in a row
without a 1% improvement. The batch shrinks to the images still running. Why Adam: the
normalised gradient of a deep layer is concentrated in few pixels, so a step of fixed L2 length
moves those and starves the rest, and the adaptive schedule's stop ends images that are still
improving slowly; Adam scales each pixel by its own gradient history. Measured in
BENCHMARKS.md ("Which inversion converges"): the residual it reaches in 50 passes the old
default does not reach in 150, and STIR does not depend on the optimizer once converged
(``tests/test_convergence.py``).

Start noise is *not* clamped: ``X'_0`` is raw N(0, 1) as in §2. The model's forward clamps
pixels to [0, 1] before normalising, so the representation of ``X'_0`` is that of
``clamp(X'_0, 0, 1)``; out-of-range pixels get no gradient in the first step and the first
step's clamp brings every pixel into range. Returned images are always in [0, 1] (if the start
itself is the best iterate, its clamped version, which has the same representation, is returned).

The step clamps to ``[0, 1]`` exactly. The wrapper's clamp before normalising is
straight-through when the input requires a gradient (``torch.clamp`` itself has a zero gradient
*at* 0 and 1, which would freeze every pixel that reaches a bound: with the N(0, 1) start most
pixels do after the first step, and the residual would stall).

Only the input requires a gradient (``torch.autograd.grad`` w.r.t. the input); the forward
stops right after layer ``j`` (:meth:`ModelWrapper.forward_layers`); the model runs in
``eval()`` mode. The best-iterate bookkeeping and NaN detection stay on the device, checked
once per batch; the fixed schedule's loop has no other host synchronisation, early stopping
one per step (whether any image stopped, to shrink the batch).

Determinism: the start of image ``i`` depends only on ``(seed, i)`` (its own generator), never
on the batch size; two runs with the same seed and batch size give identical results.

GPU path (same code as the CPU path; the knobs change speed, and results only by rounding):

- ``autocast="bf16"``: the model forward (the representation, and its backward) runs under
  bfloat16 autocast on CUDA; the residual, its norm, the step and the best-iterate bookkeeping
  stay float32, and CKA/HSIC (:mod:`ftlens.similarity`) stay float64. Tolerance against the
  float32 path: STIR within 0.02 (absolute; measured on the CPU with CPU autocast as a proxy,
  ``tests/test_gpu_path.py``, where the largest difference was far smaller). bf16 results get
  their own cache entries (``autocast`` is part of the key).
- :func:`set_tf32` / :func:`tf32`: TF32 for float32 matmuls on CUDA
  (``torch.set_float32_matmul_precision("high")``), set explicitly, never at import.
- :class:`Runtime` / :func:`runtime` (``compile``, ``memory_fraction``, ``max_batch_size``):
  ``compile`` runs the block stack of a timm ViT through ``torch.compile``: every block is
  compiled once per model and all blocks share the compiled code (one compilation serves all
  layers; the forward to layer ``j`` is a Python loop over the first ``j`` compiled blocks).
  Off by default. Models other than timm ViTs, and non-block layers, use the eager hook path.
- ``batch_size=None`` on CUDA: :func:`auto_batch_size` runs a one-step probe at two small batch
  sizes, measures the peak memory per image (``torch.cuda.max_memory_allocated``; the probe
  resets the peak statistics) and takes the largest batch that fits ``memory_fraction`` of the
  free memory (``torch.cuda.mem_get_info``), balanced so that every batch has about the same
  size. An explicit ``batch_size`` overrides it. On the CPU the default stays 256.
- :attr:`Runtime.batch_layers` (``runtime(batch_layers=True)``, ``compare(batch_layers=True)``,
  ``--batch-layers``): the inversions of all layers and seeds of one model run in one staged
  forward and backward per step (:mod:`ftlens.inversion.batched`: the batch shrinks with depth;
  per-image state as in the per-layer path, so the same results up to rounding); only the
  inversions missing from the cache are batched; models whose layers are not a sequence of
  stages fall back to the per-layer path. Off by default.
- CPU threads: the inner loop uses ``torch.get_num_threads()`` intra-op threads (set them with
  ``torch.set_num_threads`` or ``--threads``); processes started by ``--processes N`` get
  ``cpu_count // N`` each (:mod:`ftlens.distributed`).

The package, in the order data flows: :mod:`~ftlens.inversion.settings` (:class:`InversionSettings`,
the schedules), :mod:`~ftlens.inversion.starts` (``X'_0``), :mod:`~ftlens.inversion.loop` (one
batch: the fixed and the adaptive loop), :mod:`~ftlens.inversion.execution` (:class:`Runtime`,
TF32, compile, channels-last, the batch size from memory), :mod:`~ftlens.inversion.api`
(:func:`invert`, :func:`invert_many`), :mod:`~ftlens.inversion.batched` (several layers and seeds
in one staged batch), :mod:`~ftlens.inversion.cached` (cache keys and the cached inversion);
:mod:`~ftlens.inversion.result` holds the :class:`Inversion` they return.
"""

from ftlens.inversion.api import _invert, _progress_callback, invert, invert_many  # noqa: F401
from ftlens.inversion.cached import (  # noqa: F401
    CODE_VERSION,
    _entry_problem,
    _inversion_from_entry,
    _inversion_to_entry,
    cached_inversion,
    cached_inversions,
    inversion_key,
)
from ftlens.inversion.execution import (  # noqa: F401
    DEFAULT_BATCH_SIZE,
    Runtime,
    auto_batch_size,
    batch_size_from_memory,
    current_runtime,
    runtime,
    set_tf32,
    tf32,
)
from ftlens.inversion.loop import (  # noqa: F401  (private names that tests and benchmarks use)
    _TINY,
    ProgressFn,
    _amp,
    _invert_batch,
    _invert_batch_adaptive,
    _loop_state,
    _target,
)
from ftlens.inversion.result import Inversion
from ftlens.inversion.settings import (
    SCHEDULE_PRESETS,
    SCHEDULES,
    STOP_RESIDUAL,
    InversionSettings,
    schedule_fields,
)
from ftlens.inversion.starts import STARTS, start_images

__all__ = [
    "STOP_RESIDUAL",
    "SCHEDULES",
    "SCHEDULE_PRESETS",
    "STARTS",
    "Inversion",
    "InversionSettings",
    "Runtime",
    "auto_batch_size",
    "batch_size_from_memory",
    "current_runtime",
    "invert",
    "invert_many",
    "runtime",
    "schedule_fields",
    "set_tf32",
    "start_images",
    "tf32",
]
