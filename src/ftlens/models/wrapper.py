""":class:`ModelWrapper`: a model with its preprocessing, its ordered layers and the one way to
read them.

Layer capture is one mechanism for every family: forward hooks on named modules, installed for
one forward and removed in ``finally``, always inside :meth:`ModelWrapper.session` (``eval()``
mode: BatchNorm uses its running statistics, dropout is off; parameter gradients off;
channels-last CNN weights; the model's own state restored afterwards). Outputs become
``(n, features)`` by the wrapper's token mode (:mod:`ftlens.models.capture`), and the forward
stops right after the deepest requested layer. Images are given in [0, 1] pixel space;
normalisation happens inside, after a clamp. The execution trace (module order, shapes, when
each module runs) is taken once per input size as a frozen
:class:`~ftlens.models.trace.ExecutionTrace`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlens.errors import ImageError, ImageSizeError, LayerError, NumericalError
from ftlens.models.capture import capture, check_token_mode, reduce_output
from ftlens.models.domain import PIXELS, InputDomain
from ftlens.models.families import family_named
from ftlens.models.families.base import INPUT_OF, PRE_LOGITS, Defaults, Source
from ftlens.models.fingerprint import WeightDigests, combine, module_tensors
from ftlens.models.session import has_depthwise, is_cnn, one_thread, working_state
from ftlens.models.trace import ExecutionTrace, trace_module
from ftlens.progress import track

_Source = Source  # the name older code and pickles use


def channels_last_if_cnn(module: nn.Module) -> nn.Module:
    """Store a convolutional network's weights channels-last (in place; values unchanged); other
    models are left as they are (:func:`ftlens.models.session.is_cnn`)."""
    return module.to(memory_format=torch.channels_last) if is_cnn(module) else module


class ModelWrapper:
    """An ``nn.Module`` with its preprocessing and its ordered layers.

    ftlens's own work on the model (every forward, trace and inversion) runs inside
    :meth:`session`: eval mode, parameter gradients off, channels-last CNN weights and the
    wrapper's device, all restored afterwards. A wrapper that ``owned`` its module (built from a
    spec, a file or a copy) keeps that state permanently; a user's module (``owned=False``) is
    left exactly as it was between calls, and its current weights are what every result is of
    (:attr:`fingerprint` is checked against the weights at use time).

    Attributes:
        module: the model.
        owned: whether the wrapper's module is its own (eval, ``requires_grad=False``, channels-last
            kept), or a user's object that is changed only for the duration of ftlens's work.
        spec: the spec it was loaded from (a string; ``"<module>"`` for objects).
        mean, std: per-channel normalisation applied inside every forward.
        input_size: ``(C, H, W)`` the model expects (None until the first images for a plain
            module loaded without one).
        layers: default analysis layers in execution order (ViT: ``blocks.0`` ...).
        tokens: token / feature-map handling: ``"all"`` (flattened, the default), ``"cls"`` or
            ``"mean"`` (see :mod:`ftlens.models.capture`).
        family: the model family (``"timm"``, ``"hf"``, ...; :mod:`ftlens.models.families`).
        random_init: True when the weights are a random initialisation, not pretrained ones.
        info: notes for reports, e.g. ``{"lora": {...}}`` for a merged LoRA finetune.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        spec: str,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        input_size: Sequence[int] | None,
        layers: Sequence[str] | None = None,
        source: Source | None = None,
        extra_state: dict[str, torch.Tensor] | None = None,
        name: str | None = None,
        random_init: bool = False,
        tokens: str = "all",
        family: str | None = None,
        info: dict[str, Any] | None = None,
        owned: bool = True,
    ) -> None:
        self.owned = bool(owned)
        if self.owned:
            channels_last_if_cnn(module).eval().requires_grad_(False)
        self.module = module
        self._work_device: torch.device | None = None
        self._depth = 0  # nesting of session()
        self._channels_last = True  # a CNN's sessions store its weights channels-last
        self._checked = False  # inside a session(check=True): the digests are current
        self._digests = WeightDigests()
        self.spec = spec
        self.name = name or short_name(spec)
        self.source = source or Source("module", {})
        self.family = family or "module"
        self.random_init = bool(random_init)
        self.tokens = check_token_mode(tokens)
        self.info = dict(info or {})
        self.extra_state = dict(extra_state or {})
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.input_size = None
        self._trace: ExecutionTrace | None = None
        self._fingerprint: str | None = None
        self._layer_fps: dict[tuple[str, str], str] = {}
        self._requested = list(layers) if layers else None
        self._layers: list[str] | None = None
        self.refresh_modules(fingerprint=False)
        if input_size is not None:
            self._set_input_size(input_size)
            self._layers = self.resolve_layers(self._requested or self._default_layers())

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        n = len(self._layers) if self._layers is not None else "?"
        return f"ModelWrapper({self.name!r}, input_size={self.input_size}, layers={n}, device={self.device})"

    @property
    def device(self) -> torch.device:
        """Where ftlens runs the model (a user's module: where it is, unless :meth:`to` chose)."""
        if self._work_device is not None:
            return self._work_device
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelWrapper:
        """Run on ``device``: an owned module moves there; a user's module is moved there for the
        duration of each :meth:`session` and put back after."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.owned:
            self.module.to(device)
        else:
            here = next(iter(self.module.parameters()), None)
            self._work_device = None if here is not None and here.device == device else device
        return self

    @contextlib.contextmanager
    def session(self, check: bool = False, channels_last: bool = True, place: bool = True) -> Iterator[None]:
        """ftlens's working state for the duration: every submodule in ``eval()`` (BatchNorm uses
        its running statistics, dropout is off), parameters without gradients, the wrapper's
        device, channels-last weights for a CNN; all put back afterwards, exactly (the same
        storage, each module's own mode, each parameter's own flag), so a model in the middle of
        training goes on training. Sessions nest; only the outermost one does anything.

        On entry the module tree is re-read if submodules were replaced. ``check``: also compare
        every weight's values with the ones last hashed (a moved weight is hashed again: :attr:`fingerprint`), which catches even
        writes through ``.data``; the entry points whose results are cached by fingerprint
        (``compare``, ``stir``) check. Without it the fingerprint still follows every change that
        moves a version counter. ``channels_last=False``: leave a user's CNN in its own memory
        format (no channels-last copy of its weights: for a session that runs it little).
        ``place=False``: neither device nor memory format (only the modes and flags), for a forward
        whose backward may come after the session (autograd reads the weights then)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._check_structure()
        if check:
            self._sync_weights(probe=True)
        elif self._digests:  # keep digests current (cheap: version counters) so that they can follow the move
            self._sync_weights()
        keep = bool(self._digests)
        try:
            with working_state(self.module, device=self._work_device if place else None,
                               channels_last=place and self._cnn and self._channels_last and channels_last):
                if keep:  # the digests are of these values: record where ftlens put them
                    self._digests.adopt(self._modules)
                self._depth, self._checked = 1, check
                try:
                    yield
                finally:
                    self._depth, self._checked = 0, False
        finally:
            if keep:
                self._digests.adopt(self._modules)

    def _check_structure(self) -> None:
        """Re-read the module tree if submodules were added, removed or replaced since."""
        current = dict(self.module.named_modules())
        if current.keys() != self._modules.keys() or any(current[k] is not self._modules[k] for k in current):
            self.refresh_modules(fingerprint=False)

    def _sync_weights(self, probe: bool = False) -> None:
        """Hash again every tensor that moved since the digests were taken (``probe``: also
        compare values, which catches writes through ``.data``); forget fingerprints if any did."""
        if self._digests.sync(self._modules, probe=probe):
            self._fingerprint = None
            self._layer_fps = {}

    @property
    def is_vit(self) -> bool:
        return hasattr(self.module, "blocks") and hasattr(self.module, "patch_embed")

    @property
    def defaults(self) -> Defaults:
        """What the model's family says about it (cached until :meth:`refresh_modules`)."""
        return self._defaults

    @property
    def domain(self) -> InputDomain:
        """Where this model's inputs live for an inversion: pixels in [0, 1]
        (:data:`~ftlens.models.domain.PIXELS`)."""
        return PIXELS

    @property
    def num_features(self) -> int:
        """Width of the pre-logit features (what a classification head sees)."""
        n = getattr(self.module, "num_features", None)
        if n is None:
            n = int(torch.tensor(self.layer_shapes([PRE_LOGITS])[PRE_LOGITS]).prod())
        return int(n)

    def options(self) -> dict[str, Any]:
        """Constructor arguments besides module, spec, preprocessing and layers (for copies in other processes)."""
        return {"random_init": self.random_init, "tokens": self.tokens, "family": self.family, "info": dict(self.info)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for result files and reports."""
        return {"name": self.name, "spec": self.spec, "family": self.family, "tokens": self.tokens,
                "input_size": list(self.input_size or ()), "random_init": self.random_init, **self.info}

    # ------------------------------------------------------------------ fingerprints
    @property
    def fingerprint(self) -> str:
        """sha256 of the weights as they are now (names, dtypes, shapes, values) and the
        preprocessing (:func:`ftlens.models.weights_fingerprint` of the module, same value).

        Kept current: each access compares every tensor's version counter, storage and shape with
        the ones last hashed and hashes again the ones that moved (training steps,
        ``load_state_dict``); each :meth:`session` also compares their values, which catches
        writes through ``.data``. Results and cache keys computed after a change are of the new
        weights."""
        if not self._checked:
            if not self._depth:
                self._check_structure()
            self._sync_weights()
        if self._fingerprint is None:
            extra = (self.mean, self.std, self.input_size)
            if self.tokens != "all":
                extra = (*extra, self.tokens)
            if not self._digests:
                self._sync_weights()
            named = ((f"{m}.{p}" if m else p, t, self._digests.digest((m, p)))
                     for (m, p), t in module_tensors(self._modules, persistent_only=True))
            self._fingerprint = combine(type(self.module).__name__, named, extra)
        return self._fingerprint

    def layer_fingerprint(self, layer: str) -> str:
        """sha256 of what determines the output of ``layer``: the preprocessing, the token mode,
        and the weights and buffers of every module that starts before ``layer`` has finished
        (plus the root module's own parameters, e.g. a ViT's position embedding and CLS token).

        Weights that only run after ``layer`` (later blocks, the head) are left out, so a
        finetuning run's epoch 0 (pretrained backbone, new head) shares the pretrained model's
        inversions, and a model changed only in its last blocks shares its early-layer ones.
        Architecture arguments (the source spec and kwargs, less ``num_classes``) are included.
        """
        (layer,) = self.resolve_layers([layer])
        key = (self.fingerprint, layer)  # synced: the digests below are current
        if key in self._layer_fps:
            return self._layer_fps[key]
        trace = self.trace
        name, read_input = self._target(layer)
        # a module's output depends on everything that started before it finished; its input
        # (pre_logits = what the classifier receives) on everything that started before it started
        end = trace.starts[name] - 1 if read_input else trace.ends[name]
        h = hashlib.sha256()
        kwargs = {k: v for k, v in self.source.kwargs.items() if k != "num_classes"}
        head = (type(self.module).__name__, self.source.spec, sorted(kwargs.items()), self.mean, self.std,
                self.input_size, layer)
        if self.tokens != "all":
            head = (*head, self.tokens)
        h.update(repr(head).encode())
        for name, module in self._modules.items():
            if name and trace.starts.get(name, end + 1) > end:
                continue  # runs only after the layer (or never): cannot change it
            h.update(f"<{name}:{type(module).__name__}>".encode())
            for pname, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is None:
                    continue
                h.update(f"{pname}|{t.dtype}|{tuple(t.shape)}|{self._digests.digest((name, pname))}".encode())
        self._layer_fps[key] = h.hexdigest()
        return self._layer_fps[key]

    def refresh_modules(self, fingerprint: bool = True) -> None:
        """Re-read the module tree after submodules were replaced (e.g. ``reset_classifier``,
        which rebuilds a timm CNN's ``global_pool``); the execution trace is taken again."""
        self._modules = dict(self.module.named_modules())
        family = family_named(self.family)
        self._defaults = family.defaults(self.module)
        self._aliases = dict(self._defaults.aliases)
        self._cnn = is_cnn(self.module)
        self._any_size = family.takes_any_size(self.module)
        self._trace = None
        self._fingerprint = None
        self._layer_fps = {}
        if fingerprint:
            self.refresh_fingerprint()

    def refresh_fingerprint(self) -> str:
        """Hash every weight again and recompute :attr:`fingerprint` (changes are found without
        it; this is for certainty, e.g. after writing weights through ``.data``)."""
        self._digests.clear()
        self._fingerprint = None
        self._layer_fps = {}
        return self.fingerprint

    def copy(self) -> ModelWrapper:
        """A deep copy with weights of its own (owned: eval mode, no gradients, channels-last CNN)."""
        with self.session(channels_last=False):  # the copy is taken of the weights as they are, in eval mode
            module = copy.deepcopy(self.module)
        new = self._owning(module)
        new._trace = self._trace  # the same module tree
        return new

    def folded(self, example: torch.Tensor) -> ModelWrapper:
        """A copy for inference only, each BatchNorm folded into the convolution that feeds it
        (:func:`ftlens.models.inference.fold_batchnorm`, found in a forward of ``example``, images
        ``(n, C, H, W)``); the same layer outputs up to float rounding. ``self`` if nothing folds.
        The copy is channels-last only with depthwise convolutions
        (:func:`ftlens.models.session.has_depthwise`); else it shares every tensor but the folded
        ones with this model (no copy of the weights)."""
        from ftlens.models.inference import channels_last_pools, fold_batchnorm

        channels_last = has_depthwise(self.module)  # converted: then its tensors must be copies
        with self.session(channels_last=False), torch.no_grad(), one_thread():
            module, folds = fold_batchnorm(self.module, self._normalize(example[:1].to(self.device)),
                                           share=not channels_last)
        if not folds:
            return self
        if not channels_last:
            channels_last_pools(module)  # NCHW max pooling is slow on a CPU: pool channels-last
        new = self._owning(module, channels_last=channels_last, freeze=channels_last)
        new._trace = self._trace  # the same modules run in the same order (an Identity where a BatchNorm was)
        return new

    def _owning(self, module: nn.Module, channels_last: bool = True, freeze: bool = True) -> ModelWrapper:
        """A wrapper like this one around ``module`` (a copy it owns), channels-last if a CNN and
        asked; ``freeze=False`` for a module tree of its own that shares tensors with the
        original (their ``requires_grad`` is left to the sessions, which restore it)."""
        new = copy.copy(self)
        new.module = module
        new.owned = True
        new._work_device = None
        new._depth = 0
        new._checked = False
        new._digests = WeightDigests()
        (channels_last_if_cnn(new.module) if channels_last else new.module).eval()
        if freeze:
            new.module.requires_grad_(False)
        if self._work_device is not None:
            new.module.to(self._work_device)
        new._channels_last = channels_last  # its sessions keep the memory format chosen here
        new.refresh_modules(fingerprint=False)
        new._layers = self._layers
        new.extra_state = {k: v.clone() for k, v in self.extra_state.items()}
        new.info = copy.deepcopy(self.info)
        return new

    def eval_mode(self) -> contextlib.AbstractContextManager[None]:
        """The same as :meth:`session` (the name earlier versions used)."""
        return self.session()

    # ------------------------------------------------------------------ input size
    def _set_input_size(self, input_size: Sequence[int]) -> None:
        size = tuple(int(s) for s in input_size)
        if len(size) != 3:
            raise ImageSizeError(f"input_size must be (C, H, W), got {size}")
        channels = size[0]
        if self.mean is None:
            self.mean, self.std = (0.0,) * channels, (1.0,) * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise ImageSizeError(
                f"mean/std need one value per channel ({channels}), got {self.mean} / {self.std}"
            )
        self._adopt_input_size(size)

    def _adopt_input_size(self, size: tuple[int, ...]) -> None:
        """Use ``size`` from now on: traced layers and fingerprints of another size are dropped."""
        if size != self.input_size:
            self.input_size = size
            self._trace = None
            self._layers = None
            self._fingerprint = None
            self._layer_fps = {}

    def adopt_input_size(self, images: torch.Tensor) -> None:
        """Take the input size from images ``(n, C, H, W)``: a model loaded without one takes the
        first images' size; a model that runs on any size (a CNN) takes the size of the images
        it is given, each time (its trace, layer shapes and fingerprints follow). Models tied to
        one size (ViTs) keep theirs: :meth:`check_images` then says to pass ``image_size``."""
        if not (isinstance(images, torch.Tensor) and images.dim() == 4):
            return
        size = tuple(int(s) for s in images.shape[1:])
        if self.input_size is None:
            self._set_input_size(size)
        elif size != self.input_size and self._any_size and size[0] == self.input_size[0]:
            before = self.input_size
            self._set_input_size(size)
            try:
                self.trace  # noqa: B018 - a model that does not run at this size keeps its own
            except ImageSizeError:
                self._set_input_size(before)
                raise

    def size_error(self, size: Sequence[int]) -> ImageSizeError:
        """The error for images of ``size`` ``(C, H, W)`` that this model does not take, naming the fix."""
        size = tuple(int(s) for s in size)
        want = self._need_size()
        if size[0] != want[0]:
            return ImageSizeError(
                f"images have {size[0]} channel(s) but {self.name} takes {want[0]}; convert them "
                f"(e.g. grayscale to RGB: x.expand(-1, 3, -1, -1))")
        h, w = size[1:]
        arg = str(h) if h == w else f"({h}, {w})"
        return ImageSizeError(
            f"images of shape (n, {', '.join(map(str, size))}) are {h}x{w} but {self.name} takes {want[1]}x{want[2]} "
            "(its position embedding fixes the "
            f"size); pass image_size={arg} (ftlens.load_model, ftlens.CKA, ftlens.compare; --image-size "
            f"{h if h == w else f'{h},{w}'} on the command line) to resample it to your images, or resize them")

    def _need_size(self) -> tuple[int, ...]:
        if self.input_size is None:
            raise ImageSizeError(
                f"{self.name} has no input size yet: pass input_size=(C, H, W) to load_model, or give it "
                "images first (representations / compare take the size from them)"
            )
        return self.input_size

    @property
    def trace(self) -> ExecutionTrace:
        """The frozen execution trace at the current input size (one forward of one image)."""
        if self._trace is None:
            size = self._need_size()
            x = torch.full((1, *size), 0.5, device=self.device)
            try:
                # one image: no channels-last copy; one thread unless the image is large
                small = x.numel() <= 3 * 64 * 64
                with self.session(channels_last=False), (one_thread() if small else contextlib.nullcontext()):
                    self._trace = trace_module(self.module, self._normalize(x))
            except Exception as exc:
                raise ImageSizeError(
                    f"{self.name} cannot run one forward on a (1, {', '.join(map(str, size))}) image batch, so its "
                    f"layers cannot be traced ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "give images of a size the architecture takes, or pass image_size=... / --image-size (its default, "
                    "or a multiple of its patch size / total stride), or, for a model that needs other inputs, wrap it in an nn.Module whose "
                    "forward takes an image batch"
                ) from exc
        return self._trace

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> list[str]:
        """Default analysis layers, in execution order."""
        if self._layers is None:
            requested = self._requested or self._default_layers()
            self._layers = self.resolve_layers(requested)
        return list(self._layers)

    @layers.setter
    def layers(self, value: Sequence[str]) -> None:
        self._requested = list(value)
        self._layers = None if self.input_size is None else self.resolve_layers(list(value))

    @property
    def default_layers(self) -> list[str]:
        """The family's default analysis layers, all of them, in execution order (``layers``
        may be a subset of them, or other modules); layer numbers count in this list."""
        return self.resolve_layers(self._default_layers())

    def _default_layers(self) -> list[str]:
        if self._defaults.layers:
            return list(self._defaults.layers)
        trace = self.trace
        tops = [n for n, _ in self.module.named_children() if n in trace.shapes and trace.calls.get(n, 1) == 1]
        if not tops:
            raise LayerError(
                f"{self.name} has no default layers; pass layers=[...] (module names or glob patterns, "
                f"e.g. {[n for n, _ in self.module.named_children()][:6]})"
            )
        return tops

    @property
    def available_layers(self) -> list[str]:
        """Every hookable module name, plus pseudo-layers such as ``pre_logits``."""
        return [n for n in self._modules if n] + list(self._aliases)

    def _target(self, layer: str) -> tuple[str, bool]:
        """``(module name, read its input)`` of a layer or pseudo-layer."""
        name = self._aliases.get(layer, layer)
        if name.startswith(INPUT_OF):
            return name[len(INPUT_OF):], True
        return name, False

    def resolve_layers(self, layers: None | str | Sequence[str]) -> list[str]:
        """Expand globs, validate names and sort them in execution order.

        ``None`` means the default layers. An unknown name is a :class:`LayerError`
        that lists close matches.
        """
        if layers is None:
            return self.layers
        return self._sort_by_execution(self._expand(layers))

    def _expand(self, layers: str | Sequence[str]) -> list[str]:
        """Globs expanded and names checked (a :class:`LayerError` with close matches), in the given order."""
        if isinstance(layers, str):
            layers = [layers]
        available = self.available_layers
        resolved: list[str] = []
        for pattern in layers:
            if any(ch in pattern for ch in "*?["):
                matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
                if not matches:
                    raise LayerError(
                        f"layer pattern {pattern!r} matches no module of {self.name}. "
                        f"Try `ftlens layers {self.spec}` to list them."
                    )
                resolved.extend(m for m in matches if m not in resolved)
            elif pattern in self._modules and pattern or pattern in self._aliases:
                if pattern not in resolved:
                    resolved.append(pattern)
            else:
                close = difflib.get_close_matches(pattern, available, n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise LayerError(
                    f"unknown layer {pattern!r} for model {self.name}.{hint} "
                    f"(`ftlens layers {self.spec}` lists all {len(available)} layers)"
                )
        return resolved

    def _sort_by_execution(self, layers: list[str]) -> list[str]:
        trace = self.trace
        index = trace.position()
        missing = [layer for layer in layers if self._target(layer)[0] not in index]
        if missing:
            raise LayerError(
                f"layer(s) {missing} of {self.name} never run in a forward pass "
                "(or return no tensor), so they cannot be captured"
            )
        return sorted(layers, key=lambda layer: index[self._target(layer)[0]])

    def layer_shapes(self, layers: None | str | Sequence[str] = None) -> dict[str, tuple[int, ...]]:
        """Per-example output shape of each layer (before the token mode is applied)."""
        layers = self.resolve_layers(layers)
        trace = self.trace
        out = {}
        for layer in layers:
            name, read_input = self._target(layer)
            shape = (trace.in_shapes if read_input else trace.shapes)[name]
            if layer == PRE_LOGITS and self.is_vit and len(shape) == 2:
                shape = shape[1:]
            out[layer] = shape
        return out

    # ------------------------------------------------------------------ images
    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`ImageError` unless ``images`` is float ``(n, C, H, W)`` finite in [0, 1]."""
        if not isinstance(images, torch.Tensor):
            raise ImageError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise ImageError(
                f"images must be floating point in [0, 1], got dtype {images.dtype} "
                "(for uint8 pixels divide by 255)"
            )
        self.adopt_input_size(images)
        if images.dim() != 4:
            raise ImageError(f"images must be a batch (n, C, H, W), got shape {tuple(images.shape)}")
        if tuple(images.shape[1:]) != self.input_size:
            raise self.size_error(images.shape[1:])
        if images.numel() and not torch.isfinite(images).all():
            raise ImageError("images contain NaN or inf")
        if images.numel():
            lo, hi = float(images.min()), float(images.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ImageError(
                    f"images must be in [0, 1] pixel space (got min {lo:.3g}, max {hi:.3g}); "
                    "pass un-normalised pixels: ftlens normalises inside the model"
                )

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp pixels to [0, 1], then normalise with the model's mean and std.

        When ``x`` requires a gradient the clamp is straight-through (its values, the identity's
        gradient): ``torch.clamp`` has a zero gradient *at* 0 and 1, which would freeze every
        pixel of an inversion that reaches a bound.
        """
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        clamped = x.clamp(0.0, 1.0)
        if x.requires_grad:
            clamped = x + (clamped - x).detach()
        return (clamped - mean) / std

    # ------------------------------------------------------------------ forward
    def forward_layers(
        self, images: torch.Tensor, layers: None | str | Sequence[str] = None, *, clone: bool = True
    ) -> dict[str, torch.Tensor]:
        """Differentiable forward returning ``{layer: (n, features)}``.

        Pixels are clamped to [0, 1] and normalised inside; the forward stops right
        after the deepest requested layer. Gradients flow to ``images`` if it requires them.
        Called on its own it runs the module where it is (a user's model on another device than
        the wrapper's: hold ``with wrapper.session():`` around the forward and the backward)."""
        self.adopt_input_size(images)
        layers = self.resolve_layers(layers)
        # alone (not inside a session): the model where it is and as it is stored, since a backward
        # through the result runs after this call returned and reads the weights then
        with self.session(place=False):
            return self._capture(images, layers, clone=clone)

    def _reduce(self, layer: str, t: torch.Tensor) -> torch.Tensor:
        if layer == PRE_LOGITS:
            if self.is_vit and t.dim() == 3:
                t = t[:, 0]
            return t.reshape(t.shape[0], -1)
        d = self._defaults
        return reduce_output(t, self.tokens, layout=d.layout, prefix_tokens=d.prefix_tokens, layer=layer)

    def _capture(self, images: torch.Tensor, layers: list[str], *, clone: bool) -> dict[str, torch.Tensor]:
        calls = self.trace.calls
        twice = [layer for layer in layers if calls.get(self._target(layer)[0], 1) > 1]
        if twice:
            raise LayerError(
                f"layer(s) {twice} of {self.name} run more than once in one forward, so one output "
                "per image is ambiguous; choose modules that are called once"
            )
        targets = {}
        for layer in layers:
            name, read_input = self._target(layer)
            targets[layer] = (self._modules[name], read_input)
        captured = capture(self.module, self._normalize(images), targets, self._reduce, deepest=layers[-1],
                           clone=clone)
        missing = [layer for layer in layers if layer not in captured]
        if missing:
            raise LayerError(f"layer(s) {missing} of {self.name} produced no output in this forward")
        return {layer: captured[layer] for layer in layers}

    def representations(
        self,
        images: torch.Tensor,
        layers: None | str | Sequence[str] = None,
        *,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        autocast: torch.dtype | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{layer: float32 CPU tensor (n, features)}`` for images in [0, 1], without gradients.

        Batched; the forward stops after the deepest requested layer; a NaN or inf
        in a representation is a :class:`NumericalError` naming the layer.
        ``autocast`` (e.g. ``torch.bfloat16``) is used on GPUs only.
        """
        self.check_images(images)
        layers = self.resolve_layers(layers)
        device = torch.device(device) if device is not None else self.device
        if device != self.device:
            self.to(device)
        n = images.shape[0]
        out: dict[str, torch.Tensor] = {}
        batches = range(0, n, batch_size)
        if progress:
            batches = track(batches, description=f"capture {self.name}", total=len(batches))
        with torch.inference_mode(), _autocast(device, autocast), self.eval_mode():
            for start in batches:
                x = images[start : start + batch_size].to(device, non_blocking=True)
                reps = self._capture(x, layers, clone=False)
                for layer, r in reps.items():
                    if layer not in out:
                        out[layer] = torch.empty((n, r.shape[1]), dtype=torch.float32)
                    out[layer][start : start + x.shape[0]] = r.float().cpu()
        for layer, r in out.items():
            if not torch.isfinite(r).all():
                raise NumericalError(
                    f"NaN/inf in the representation of layer {layer!r} of {self.name}; "
                    "check the weights (a diverged checkpoint?) and the inputs"
                )
        return out


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None or device.type == "cpu":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def short_name(spec: str) -> str:
    """``timm:resnet50`` -> ``resnet50``; ``hf:/path/to/dir`` -> ``dir``; a path -> its file name."""
    if ":" in spec and not Path(spec).exists() and spec.split(":", 1)[0].isidentifier():
        spec = spec.split(":", 1)[1]
        return Path(spec).name if "/" in spec or os.sep in spec else spec
    return Path(spec).name or spec
