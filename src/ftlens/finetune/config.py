"""The configuration of one finetuning run: a validated dataclass, loadable from YAML.

Every field has a default that follows the paper's recipe (ALGORITHMS.md §5): SGD, lr 1e-3,
momentum 0.9, weight decay 1e-4, cosine schedule with linear warm-up, gradient clipping at
1.0. Unknown keys, strategies, tasks and optimisers are errors that name the close matches.

The run directory's ``config.yaml`` holds the *resolved* configuration (warm-up steps,
``wise_from``, device ... filled in), so that reading it back reproduces the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlens.errors import ConfigError
from ftlens.finetune.registry import STRATEGIES, canonical_name, get_strategy

TASKS = ("classification", "reconstruction")
HEAD_INITS = ("random", "zero-shot")
#: Class-prompt template of zero-shot heads and FLYP (``{}`` is the class name).
DEFAULT_PROMPTS = ("a photo of a {}.",)
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")

#: C values swept by the linear probe (the reference sweeps ``logspace(-7, 2)``).
DEFAULT_LP_GRID = tuple(float(10.0**e) for e in range(-7, 3))
DEFAULT_WISE_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)
#: Warm-up when ``warmup_steps`` is None: the authors' 100 steps, capped at a tenth of a phase.
PAPER_WARMUP_STEPS = 100
#: Peak learning rate when ``lr`` is None (the paper's recipe, ALGORITHMS.md §5).
DEFAULT_LR = 1e-3


#: Peak learning rate of text models (AdamW, the usual recipe for finetuning transformers on text).
DEFAULT_TEXT_LR = 5e-5
#: Defaults of the optimisation fields left at None, for image data and for text data.
IMAGE_DEFAULTS = {"optimizer": "sgd", "weight_decay": 1e-4, "batch_size": 128}
TEXT_DEFAULTS = {"optimizer": "adamw", "weight_decay": 0.01, "batch_size": 32}


def default_lr(strategy: str, text: bool = False) -> float:
    """The peak learning rate of ``strategy`` when none is given: 1e-3 (text: 5e-5) times the
    strategy's ``lr_scale`` (a tenth for ``lp-ft``)."""
    return (DEFAULT_TEXT_LR if text else DEFAULT_LR) * get_strategy(strategy).lr_scale

#: Fields that may change between a killed run and its resumption (they do not change results
#: on the same device).
RESUME_FREE_FIELDS = frozenset({"out", "device", "num_workers", "eval_batch_size", "download", "data_dir",
                                "monitor_forgetting", "monitor_images", "monitor_steps", "monitor_keep"})
#: Test images and inversion steps of the live forgetting monitor (:mod:`ftlens.finetune.monitor`).
MONITOR_IMAGES, MONITOR_STEPS = 32, 50


@dataclass
class FinetuneConfig:
    """Everything that defines a finetuning run.

    Model and data:
        model: a :func:`ftlens.models.load_model` spec (``"timm:vit_base_patch32_224"``,
            ``"ftlens:vit-tiny-16"`` ...). May be omitted when ``pretrained_from`` is given.
        pretrained: for ``timm:`` models, fetch the hub's weights (ignored for ``ftlens:``
            presets, which have none, and for checkpoints).
        pretrained_from: start from these weights instead: ``"RUN_DIR@last"``,
            ``"RUN_DIR@3"`` or a checkpoint file (architecture read from it; the classification
            head is reset when its number of classes differs from the new task's).
        image_size: input resolution ``H`` (or ``[H, W]``) the model is run at (None: the
            model's own, or the one its checkpoint records); a ViT's position embedding is
            resampled. Recorded in every checkpoint.
        max_length: text models: the fixed number of tokens texts are padded or truncated to
            (None: the model's own, 128 for ``ftlens:minilm-l6``). Recorded in every checkpoint.
        data: a :func:`ftlens.data.get_dataset` name (``digits``, ``cifar10``, ``folder:PATH``).
        data_dir, download: where torchvision datasets live and whether to fetch them.
        train_size, test_size: use a seeded subset of this many images (None: all).
    Task and strategy:
        task: ``classification`` (timm's own head, cross-entropy) or ``reconstruction``
            (decoder from the ViT patch tokens, L1 loss).
        strategy: a name of :data:`ftlens.finetune.strategies.STRATEGIES`: ``scratch``, ``ft``,
            ``lp``, ``lp-ft``, ``hp-ft``, ``l2-sp``, ``surgical``, ``wise-ft`` or ``flyp``
            (image-text models only; ALGORITHMS.md §7).
        head_init: ``random`` (a fresh head) or ``zero-shot`` (image-text models: the head from
            the class-prompt text embeddings, so that epoch 0 is the zero-shot classifier, the
            WiSE-FT starting point, and FT starts from a good head as in LP-FT).
        prompts: class-prompt templates of zero-shot heads and FLYP, averaged (``{}`` is the
            class name).
        epochs: epochs of (full) finetuning. ``hp-ft`` adds ``hp_epochs`` of head probing
            before them; ``lp`` (classification) is one closed-form epoch.
        hp_epochs, hp_lr, hp_label_smoothing: head probing of ``hp-ft`` (backbone frozen).
        l2sp_weight: ``w`` of the L2-SP penalty ``w * sum ||theta - theta_0||^2`` (backbone).
        surgical_blocks: which ViT blocks train for ``surgical`` (``"0-3"``, ``"0,2"``, a list);
            the task head always trains.
        surgical_layers: for ``surgical`` on any model: module-name patterns of the backbone whose
            parameters train (``"layer1,layer2"``, ``"stages.0*"``, ``"blocks.[0-3]"``; fnmatch,
            a pattern also selects everything under the module it names).
        freeze_bn: BatchNorm layers keep their running statistics and affine weights during FT
            (eval mode, not trained); default off (BN trains as usual). LP and head probing
            never touch the backbone, BN statistics included.
        lp_grid, lp_val_fraction, lp_max_iter: linear probe: C values swept, fraction of the
            train split held out to choose C, iterations of L-BFGS.
        wise_alphas, wise_from, wise_to: WiSE-FT: interpolation weights ``a`` in
            ``(1 - a) * theta_from + a * theta_to``; the two endpoints (``RUN@EPOCH`` or files).
            ``wise_from`` defaults to epoch 0 of ``wise_to``'s run.
    Optimisation:
        optimizer (``sgd``/``adam``/``adamw``; None: ``sgd``, text data ``adamw``), lr (None:
        :func:`default_lr`, 1e-3 and 1e-4 for ``lp-ft``, text 5e-5 and 5e-6; resolved when the run
        starts), momentum, weight_decay (None: 1e-4, text 0.01), betas,
        warmup_steps (None: 100 as in the paper, capped at a tenth of each phase's steps),
        grad_clip (max global L2 norm; None: off), label_smoothing (FT), batch_size (None: 128,
        text 32),
        augment (random crop with ``crop_padding`` pixels of zero padding (None: an eighth of
        the image side) + a random horizontal ``flip`` (None: on, except for ``digits``, whose
        classes are not mirror-symmetric)), seed.
    Robustness:
        corruptions, severities: accuracy per corruption and severity on the test split
            (``acc_<corruption>_s<severity>`` and ``corrupted_acc_mean`` in ``metrics.csv``;
            reconstruction: the L1 of reconstructing the corrupted images, ``l1_<c>_s<s>`` and
            ``corrupted_l1_mean``).
        corruption_size: test images per severity (the paper uses 1000; None: all).
        corruption_dir: where official ``<corruption>.npy`` files live (CIFAR-10-C layout);
            without them the corruptions are generated from the test split.
    Execution:
        device (``auto``/``cpu``/``cuda``), num_workers (DataLoader workers for datasets that
        are not held in memory; None: up to 8, by the CPU count), eval_batch_size, out (the run
        directory), tensorboard (event files in ``RUN_DIR/tensorboard``), wandb (a Weights &
        Biases project; see :mod:`ftlens.tracking`).
    Monitor (:mod:`ftlens.finetune.monitor`; changes nothing in the training):
        monitor_forgetting: after every epoch, learning and forgetting per layer against epoch 0
            on ``monitor_images`` test images with ``monitor_steps`` inversion steps, and the
            signal ``forgetting_spread`` (std of forgetting over layers 2..L) beside accuracy.
        monitor_keep: keep the checkpoint of the epoch the signal prefers (its largest value)
            as ``RUN_DIR/preferred.safetensors``.
    """

    # model and data
    model: str | None = None
    pretrained: bool = True
    pretrained_from: str | None = None
    image_size: list[int] | None = None
    max_length: int | None = None
    data: str = "digits"
    data_dir: str | None = None
    download: bool | None = None
    train_size: int | None = None
    test_size: int | None = None
    # task and strategy
    task: str = "classification"
    strategy: str = "ft"
    epochs: int = 10
    hp_epochs: int = 1
    hp_lr: float | None = None
    hp_label_smoothing: float = 0.0
    l2sp_weight: float = 0.01
    surgical_blocks: list[int] | None = None
    surgical_layers: list[str] | None = None
    freeze_bn: bool = False
    head_init: str = "random"
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    lp_grid: list[float] = field(default_factory=lambda: list(DEFAULT_LP_GRID))
    lp_val_fraction: float = 0.2
    lp_max_iter: int = 1000
    wise_alphas: list[float] = field(default_factory=lambda: list(DEFAULT_WISE_ALPHAS))
    wise_from: str | None = None
    wise_to: str | None = None
    # optimisation
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int | None = None
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    batch_size: int | None = None
    augment: bool = True
    crop_padding: int | None = None
    flip: bool | None = None
    seed: int = 0
    # robustness
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=lambda: list(DEFAULT_SEVERITIES))
    corruption_size: int | None = 1000
    corruption_dir: str | None = None
    # execution
    device: str = "auto"
    num_workers: int | None = None
    eval_batch_size: int = 512
    out: str | None = None
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard (ftlens.tracking)
    wandb: str | None = None  # a Weights & Biases project to log to (needs wandb)
    # monitor
    monitor_forgetting: bool = False
    monitor_images: int = MONITOR_IMAGES
    monitor_steps: int = MONITOR_STEPS
    monitor_keep: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Build from a mapping; keys may use ``-`` or ``_``; unknown keys are errors."""
        names = cls.field_names()
        clean: dict[str, Any] = {}
        for key, value in dict(values).items():
            k = str(key).replace("-", "_")
            if k not in names:
                close = difflib.get_close_matches(k, names, n=3, cutoff=0.6)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown finetuning option {key!r}.{hint} Options: {', '.join(names)}")
            clean[k] = value
        return cls(**clean)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> FinetuneConfig:
        """Read a YAML mapping (flat, or under a top-level ``finetune:`` key)."""
        return cls.from_dict(read_yaml_mapping(path))

    @classmethod
    def coerce(cls, config: Any = None, **overrides: Any) -> FinetuneConfig:
        """A config from a :class:`FinetuneConfig`, a mapping, a YAML path or nothing, plus overrides."""
        if config is None:
            base: dict[str, Any] = {}
        elif isinstance(config, FinetuneConfig):
            base = config.to_dict()
        elif isinstance(config, Mapping):
            base = dict(config)
        elif isinstance(config, (str, os.PathLike)):
            base = read_yaml_mapping(config)
        else:
            raise ConfigError(
                f"finetune() takes a FinetuneConfig, a dict or a YAML path, got {type(config).__name__}"
            )
        base.update({k: v for k, v in overrides.items()})
        return cls.from_dict(base)

    def replace(self, **changes: Any) -> FinetuneConfig:
        return FinetuneConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Normalise spellings and check every field; :class:`ConfigError` names the problem."""
        from ftlens.data import is_text_dataset

        for name, value in (TEXT_DEFAULTS if is_text_dataset(str(self.data)) else IMAGE_DEFAULTS).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.task = _choice("task", self.task, TASKS)
        self.strategy = _choice("strategy", self.strategy, tuple(STRATEGIES))
        self.optimizer = _choice("optimizer", self.optimizer, OPTIMIZERS)
        self.head_init = _choice("head_init", self.head_init, HEAD_INITS)
        self.prompts = [str(p) for p in (self.prompts if isinstance(self.prompts, (list, tuple)) else [self.prompts])]
        bad = [p for p in self.prompts if "{}" not in p and "{c}" not in p]
        if not self.prompts or bad:
            raise ConfigError(f"prompts must be templates with {{}} where the class name goes, e.g. 'a photo of a {{}}.'; "
                              f"got {bad or self.prompts}")
        self.device = str(self.device).lower()
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if self.num_workers is not None:
            self.num_workers = _int("num_workers", self.num_workers, minimum=0)
        for name in ("epochs", "hp_epochs", "seed", "lp_max_iter"):
            setattr(self, name, _int(name, getattr(self, name), minimum=0 if name != "lp_max_iter" else 1))
        for name in ("batch_size", "eval_batch_size"):
            setattr(self, name, _int(name, getattr(self, name), minimum=1))
        for name in ("train_size", "test_size", "corruption_size", "warmup_steps", "crop_padding"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _int(name, value, minimum=0 if name in ("warmup_steps", "crop_padding") else 1))
        if self.lr is not None:
            self.lr = _float("lr", self.lr, minimum=0.0)
            if self.lr <= 0:
                raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "l2sp_weight", "label_smoothing", "hp_label_smoothing"):
            setattr(self, name, _float(name, getattr(self, name), minimum=0.0))
        if self.hp_lr is not None:
            self.hp_lr = _float("hp_lr", self.hp_lr, minimum=0.0)
        if self.grad_clip is not None:
            self.grad_clip = _float("grad_clip", self.grad_clip, minimum=0.0)
            if self.grad_clip == 0:
                self.grad_clip = None
        for name in ("label_smoothing", "hp_label_smoothing"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        self.lp_val_fraction = _float("lp_val_fraction", self.lp_val_fraction, minimum=0.0)
        if not 0 < self.lp_val_fraction < 1:
            raise ConfigError(f"lp_val_fraction must be in (0, 1), got {self.lp_val_fraction}")
        self.lp_grid = [_float("lp_grid", c, minimum=0.0) for c in _as_list(self.lp_grid)]
        if not self.lp_grid or min(self.lp_grid) <= 0:
            raise ConfigError("lp_grid must be a non-empty list of positive C values, e.g. [1e-3, 1e-2, 0.1, 1]")
        self.betas = [_float("betas", b, minimum=0.0) for b in _as_list(self.betas)]
        if len(self.betas) != 2 or not all(b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.wise_alphas = [_float("wise_alphas", a) for a in _as_list(self.wise_alphas)]
        if not self.wise_alphas:
            raise ConfigError("wise_alphas must hold at least one interpolation weight, e.g. 0,0.5,1")
        self.surgical_blocks = parse_blocks(self.surgical_blocks)
        self.surgical_layers = [str(p).strip() for p in _as_list(self.surgical_layers) if str(p).strip()] or None
        self.freeze_bn = bool(self.freeze_bn)
        self.monitor_forgetting, self.monitor_keep = bool(self.monitor_forgetting), bool(self.monitor_keep)
        self.monitor_images = _int("monitor_images", self.monitor_images, minimum=4)
        self.monitor_steps = _int("monitor_steps", self.monitor_steps, minimum=1)
        if self.monitor_keep and not self.monitor_forgetting:
            raise ConfigError("monitor_keep (--monitor-keep) keeps the checkpoint the forgetting monitor prefers; "
                              "turn the monitor on with monitor_forgetting (--monitor-forgetting)")
        self.image_size = parse_image_size(self.image_size)
        if self.max_length is not None:
            self.max_length = _int("max_length", self.max_length, minimum=2)
        self.corruptions = [str(c).strip() for c in _as_list(self.corruptions) if str(c).strip()]
        self.severities = [_int("severities", s, minimum=1) for s in _as_list(self.severities)]
        if self.corruptions and (not self.severities or max(self.severities) > 5):
            raise ConfigError(f"severities must be in 1..5, got {self.severities}")
        for name in ("model", "pretrained_from", "wise_from", "wise_to", "data_dir", "corruption_dir", "out"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        self.data = str(self.data)
        self.pretrained = bool(self.pretrained)
        self.augment = bool(self.augment)
        if self.flip is not None:
            self.flip = bool(self.flip)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Checks across options; then the strategy checks its own (:meth:`Strategy.check`)."""
        strategy = get_strategy(self.strategy)
        if not strategy.needs_model:
            strategy.check(self)
            return
        if self.model is None and self.pretrained_from is None:
            raise ConfigError("give a model (--model timm:NAME | ftlens:PRESET) or --pretrained-from RUN@last")
        if self.surgical_blocks and self.surgical_layers:
            raise ConfigError("give surgical_blocks or surgical_layers, not both")
        if self.head_init == "zero-shot" and self.task != "classification":
            raise ConfigError("head_init zero-shot is for classification (class prompts); use --task classification")
        if self.head_init == "zero-shot" and not strategy.zero_shot_head:
            fits = [name for name in STRATEGIES if get_strategy(name).zero_shot_head and get_strategy(name).needs_model]
            raise ConfigError(f"head_init zero-shot does not apply to {self.strategy} (its head is fitted by "
                              f"logistic regression or the backbone is random); use strategy {', '.join(fits)}")
        strategy.check(self)


# --------------------------------------------------------------------------- helpers


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(data, dict) and isinstance(data.get("finetune"), dict):
        data = data["finetune"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of options, got {type(data).__name__}")
    return data


def parse_image_size(value: Any) -> list[int] | None:
    """``224`` / ``"224"`` / ``"224,160"`` / ``[224, 160]`` -> ``[H, W]``; None -> None."""
    if value is None or value == "" or value == []:
        return None
    items = _as_list(value)
    if len(items) == 1:
        items = items * 2
    if len(items) != 2:
        raise ConfigError(f"image_size must be H or [H, W], got {value!r}")
    return [_int("image_size", v, minimum=1) for v in items]


def parse_blocks(value: Any) -> list[int] | None:
    """``"0-3"`` -> [0, 1, 2, 3]; ``"0,2,5-6"``; a list of ints; None/"" -> None."""
    if value is None or value == "" or value == []:
        return None
    items: list[Any] = value.split(",") if isinstance(value, str) else list(_as_list(value))
    blocks: list[int] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            if "-" in text.lstrip("-"):
                lo, hi = (int(t) for t in text.split("-", 1))
                if hi < lo:
                    raise ValueError
                blocks.extend(range(lo, hi + 1))
            else:
                blocks.append(int(text))
        except ValueError:
            raise ConfigError(
                f"surgical_blocks: cannot read {text!r}; use block indices and ranges such as 0-3 or 0,2,5-6"
            ) from None
    if any(b < 0 for b in blocks):
        raise ConfigError(f"surgical_blocks must be >= 0, got {blocks}")
    return sorted(set(blocks))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (s.strip() for s in value.split(",")) if v]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    text = str(value).strip().lower().replace("_", "-")
    if name == "strategy":
        text = canonical_name(text)
    if name == "head_init":
        text = {"zeroshot": "zero-shot", "zs": "zero-shot"}.get(text, text)
    if text in options:
        return text
    close = difflib.get_close_matches(text, options, n=2, cutoff=0.4)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"unknown {name} {value!r}.{hint} Choose one of: {', '.join(options)}")


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = int(value)
        if isinstance(value, float) and out != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {out}")
    return out


def _float(name: str, value: Any, minimum: float | None = None) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if minimum is not None and out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {out}")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
