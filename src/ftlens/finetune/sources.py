"""The data of a run: seeded train/test subsets as :class:`DataSource` and the flip default.

Subsets are drawn with ``epoch_seed(seed, 0, stream)``: the same images for a seed, whatever
the device or the number of processes.
"""

from __future__ import annotations

import os

import torch

from ftlens.errors import ConfigError, FtlensError
from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.loop import DataSource, Runtime, epoch_seed
from ftlens.models import ModelWrapper

#: Random streams of the train and test subsets (``epoch_seed``'s third argument).
SEED_TRAIN_SUBSET, SEED_TEST_SUBSET = 11, 12

#: Datasets whose classes change when mirrored: no random horizontal flip by default.
NO_FLIP_DATASETS = ("digits", "sklearn-digits", "mnist-5k", "mnist5k", "mnist_5k")


def default_flip(data: str) -> bool:
    return data.strip().lower() not in NO_FLIP_DATASETS


def subset(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded random subset of ``size`` of ``range(n)`` (None: all of them)."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def text_tokenizer(cfg: FinetuneConfig, wrapper: ModelWrapper):
    """The tokenizer of a text run (``wrapper.tokenize``), None for images; a ConfigError when the
    model and the data do not fit (a text model on images or the other way round)."""
    from ftlens.data import is_text_dataset

    text_model, text_data = hasattr(wrapper, "tokenize"), is_text_dataset(cfg.data)
    if text_model != text_data:
        what = "a text model" if text_model else "an image model"
        raise ConfigError(f"{wrapper.name} is {what} but data {cfg.data!r} holds {'texts' if text_data else 'images'}; "
                          "give a dataset of the model's kind (texts: fortunes-topics, csv:PATH, textfolder:PATH, "
                          "hf-text:NAME)")
    return wrapper.tokenize if text_model else None


def load_sources(cfg: FinetuneConfig, wrapper: ModelWrapper) -> tuple[DataSource, DataSource, int]:
    """Train and test sources at the model's input size (seeded subsets when asked)."""
    from ftlens.data import get_dataset

    size = tuple(wrapper.input_size[1:])
    common = dict(image_size=size, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    tokenize = text_tokenizer(cfg, wrapper)
    train = get_dataset(cfg.data, split="train", **common)
    test = get_dataset(cfg.data, split="test", **common)
    if tokenize is not None:  # texts: tokenised once by the model's own tokenizer
        train, test = train.tokenized(tokenize), test.tokenized(tokenize)
    workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
    train_src = DataSource(train, subset(len(train), cfg.train_size, epoch_seed(cfg.seed, 0, SEED_TRAIN_SUBSET)),
                           num_workers=workers)
    test_src = DataSource(test, subset(len(test), cfg.test_size, epoch_seed(cfg.seed, 0, SEED_TEST_SUBSET)),
                          num_workers=workers)
    if len(train_src) == 0 or len(test_src) == 0:
        raise FtlensError(f"dataset {cfg.data!r} has an empty train or test split")
    return train_src, test_src, int(train.num_classes)


def load_test_source(cfg: FinetuneConfig, image_size: tuple[int, int], runtime: Runtime,
                     wrapper: ModelWrapper | None = None):
    """The test split alone (the same seeded subset as :func:`load_sources`), on the run's device,
    and its dataset (for the class names). Texts are tokenised by ``wrapper``."""
    from ftlens.data import get_dataset

    test = get_dataset(cfg.data, split="test", image_size=image_size, data_dir=cfg.data_dir, download=cfg.download,
                       seed=cfg.seed)
    tokenize = text_tokenizer(cfg, wrapper) if wrapper is not None else None
    if tokenize is not None:
        test = test.tokenized(tokenize)
    source = DataSource(test, subset(len(test), cfg.test_size, epoch_seed(cfg.seed, 0, SEED_TEST_SUBSET)),
                        num_workers=cfg.num_workers or 0).to(runtime.device)
    return source, test
