"""Corrupted test sets for the per-epoch robustness columns of ``metrics.csv``.

For each configured corruption and severity, :func:`ftlens.data.corruptions.corrupted_dataset_for`
gives the corrupted test split: the official CIFAR-10-C / CIFAR-100-C files when they are in
``corruption_dir`` (or ``<data_dir>/CIFAR-10-C``), otherwise generated with CIFAR-10-C's
constants and cached. ``corruption_size`` images per severity (the paper: 1000), the same
images at every severity, chosen with the run's seed. Text runs corrupt their test texts with
:mod:`ftlens.data.text_corruptions` (``char_noise``, ``word_dropout``, ``case_change``, ``typos``).
"""

from __future__ import annotations

from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.loop import DataSource


def corrupted_test_sets(cfg: FinetuneConfig, test: DataSource, image_size: tuple[int, int]) -> dict[str, DataSource]:
    """``{"<corruption>_s<severity>": DataSource}`` in config order (column ``acc_<key>``)."""
    from ftlens.data.corruptions import corrupted_dataset_for

    total = len(test.dataset) if test.dataset is not None else len(test)
    n = None if cfg.corruption_size is None else min(cfg.corruption_size, total)
    out: dict[str, DataSource] = {}
    for corruption in cfg.corruptions:
        for severity in cfg.severities:
            ds = corrupted_dataset_for(
                cfg.data,
                image_size,
                corruption,
                severity,
                n=n,
                seed=cfg.seed,
                data_dir=cfg.data_dir,
                download=cfg.download,
                corrupted_dir=cfg.corruption_dir,
            )
            out[f"{corruption}_s{severity}"] = DataSource(ds)
    return out


def corrupted_text_sets(cfg: FinetuneConfig, test: DataSource) -> dict[str, DataSource]:
    """Text runs: the test texts corrupted by :mod:`ftlens.data.text_corruptions` (seeded by the
    run's seed), tokenised as the clean ones; ``corruption_size`` texts, the same at every severity."""
    import torch

    from ftlens.data.text_corruptions import corrupt_texts

    ds = test.dataset
    idx = test.indices
    if cfg.corruption_size is not None and cfg.corruption_size < len(idx):
        g = torch.Generator().manual_seed(int(cfg.seed))
        idx = idx[torch.randperm(len(idx), generator=g)[: cfg.corruption_size].sort().values]
    texts = [ds.texts[int(i)] for i in idx]
    labels = ds.labels[idx]
    out: dict[str, DataSource] = {}
    for corruption in cfg.corruptions:
        for severity in cfg.severities:
            tokens = ds.tokenize(corrupt_texts(texts, corruption, severity, seed=cfg.seed))
            out[f"{corruption}_s{severity}"] = DataSource.from_tensors(tokens, labels, name=f"{ds.name}-{corruption}",
                                                                       num_classes=ds.num_classes)
    return out


def corrupted_sources(cfg: FinetuneConfig, test: DataSource, image_size: tuple[int, int]) -> dict[str, DataSource]:
    """:func:`corrupted_test_sets` (texts: :func:`corrupted_text_sets`), or ``{}`` when no
    corruption is configured."""
    if not cfg.corruptions:
        return {}
    if hasattr(getattr(test, "dataset", None), "tokenize"):
        return corrupted_text_sets(cfg, test)
    return corrupted_test_sets(cfg, test, image_size)
