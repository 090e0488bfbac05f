"""Labelled texts: :class:`TextDataset` and loaders for the usual formats.

A text dataset holds strings and integer labels; text models tokenise the strings themselves
(:meth:`ftlens.models.text_wrapper.TextWrapper.tokenize`), so one dataset serves every model.
Formats (``get_dataset`` names in brackets):

- a CSV file with a text and a label column (``csv:PATH``; ``PATH`` may hold ``train.csv`` and
  ``test.csv``);
- a folder with one sub-folder of ``.txt`` files per class (``textfolder:PATH``; ``PATH/train``
  and ``PATH/test`` when present), one text per file;
- a Hugging Face ``datasets`` dataset (``hf-text:NAME_OR_DIR``): a hub name, a
  ``save_to_disk`` directory, or a folder of ``.csv`` / ``.json(l)`` / ``.parquet`` files that
  ``datasets.load_dataset`` reads; needs ``pip install 'ftlens[text]'``.

Where a source has no train/test split, :func:`hashed_split` makes one that depends on each
text alone (a text never changes side when others are added or removed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ftlens.errors import DatasetError, MissingDependencyError

__all__ = ["TEST_PERCENT", "TextDataset", "TokenizedTexts", "hashed_split", "load_csv", "load_hf_text", "load_text_folder"]

#: Share of the texts (in percent) that a hashed split puts in the test split.
TEST_PERCENT = 20
#: Column names looked for when none are given (first match wins).
TEXT_COLUMNS = ("text", "sentence", "content", "document", "review")
LABEL_COLUMNS = ("label", "labels", "topic", "class", "category")


class TextDataset(Dataset):
    """``(text, label)`` items.

    Attributes: ``texts`` (list of str), ``labels`` (int64 ``(n,)``), ``classes`` (class names,
    label ``i`` is ``classes[i]``), ``num_classes``, ``name``, ``split``, ``targets`` (a list).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | torch.Tensor, classes: Sequence[str], *,
                 name: str, split: str) -> None:
        self.texts = [str(t) for t in texts]
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(self.texts) != len(self.labels):
            raise DatasetError(f"{name}: {len(self.texts)} texts but {len(self.labels)} labels")
        self.classes = [str(c) for c in classes]
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DatasetError(f"{name}: labels must be in [0, {len(self.classes)})")
        self.name, self.split = name, split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> TextDataset:
        idx = [int(i) for i in indices]
        return TextDataset([self.texts[i] for i in idx], self.labels[idx], self.classes, name=self.name,
                           split=self.split)

    def __repr__(self) -> str:
        return f"TextDataset({self.name!r}, split={self.split!r}, {len(self)} texts, {self.num_classes} classes)"

    def tokenized(self, tokenize: Callable[[list[str]], torch.Tensor]) -> TokenizedTexts:
        """The texts tokenised once by ``tokenize`` (a text model's :meth:`tokenize`), held in memory."""
        return TokenizedTexts(self, tokenize)


class TokenizedTexts(Dataset):
    """A :class:`TextDataset` with its texts tokenised by one model: ``(tokens (T, 2), label)``
    items and ``tensors()`` -> ``(tokens (n, T, 2), labels (n,))``, as the finetuning loop reads
    in-memory datasets. ``texts``, ``classes``, ``name``, ``split`` and ``tokenize`` are kept
    (corrupted copies are tokenised the same way)."""

    def __init__(self, texts: TextDataset, tokenize: Callable[[list[str]], torch.Tensor]) -> None:
        self.source, self.tokenize = texts, tokenize
        self.texts, self.labels, self.classes = texts.texts, texts.labels, texts.classes
        self.name, self.split = texts.name, texts.split
        self.tokens = tokenize(texts.texts) if len(texts) else torch.zeros((0, 1, 2), dtype=torch.long)

    num_classes = TextDataset.num_classes
    targets = TextDataset.targets

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tokens[i], int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens, self.labels


def hashed_split(text: str, label: Any = "") -> str:
    """``"test"`` for :data:`TEST_PERCENT` percent of texts, by the sha256 of the label and the text;
    ``"train"`` otherwise."""
    digest = hashlib.sha256(f"{label}\x00{text}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    return split


def from_records(texts: Sequence[str], labels: Sequence[Any], *, name: str, split: str,
                 classes: Sequence[str] | None = None, presplit: bool = False) -> TextDataset:
    """Texts with labels (names or ints) -> the ``split`` of a :class:`TextDataset`; the hashed split
    unless ``presplit`` (the records are that split already). Class names: sorted label values."""
    _check_split(split)
    texts = [str(t) for t in texts]
    if not texts:
        raise DatasetError(f"{name}: no texts")
    names = sorted({str(lab) for lab in labels}, key=_natural) if classes is None else [str(c) for c in classes]
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({str(lab) for lab in labels} - set(index))
    if unknown:
        raise DatasetError(f"{name}: labels {unknown[:5]} are not among the classes {names[:10]}")
    keep = [i for i, t in enumerate(texts) if presplit or hashed_split(t, labels[i]) == split]
    return TextDataset([texts[i] for i in keep], [index[str(labels[i])] for i in keep], names, name=name, split=split)


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    if given is not None:
        if given not in columns:
            raise DatasetError(f"{where} has no {what} column {given!r}; columns: {list(columns)}")
        return given
    for c in candidates:
        if c in columns:
            return c
    raise DatasetError(f"{where} has no {what} column (looked for {', '.join(candidates)}); columns: {list(columns)}; "
                       f"name it with {what}_column=...")


def load_csv(path: str | os.PathLike, split: str = "train", *, text_column: str | None = None,
             label_column: str | None = None) -> TextDataset:
    """A CSV file with a text and a label column, or a folder with ``train.csv`` and ``test.csv``."""
    import pandas as pd

    root = Path(path).expanduser()
    files = {"train": root / "train.csv", "test": root / "test.csv"} if root.is_dir() else {}
    presplit = bool(files) and all(f.is_file() for f in files.values())
    if root.is_dir() and not presplit:
        raise DatasetError(f"{root} is a folder without train.csv and test.csv; give a CSV file or such a folder")
    if not root.exists():
        raise DatasetError(f"CSV file {root} does not exist")
    frames = {s: pd.read_csv(f) for s, f in files.items()} if presplit else {"all": pd.read_csv(root)}
    first = next(iter(frames.values()))
    tcol = _pick(list(first.columns), text_column, TEXT_COLUMNS, "text", str(root))
    lcol = _pick(list(first.columns), label_column, LABEL_COLUMNS, "label", str(root))
    classes = sorted({str(v) for f in frames.values() for v in f[lcol].tolist()}, key=_natural)
    frame = frames[_check_split(split)] if presplit else frames["all"]
    frame = frame.dropna(subset=[tcol, lcol])
    return from_records(frame[tcol].astype(str).tolist(), frame[lcol].astype(str).tolist(), name=f"csv:{path}",
                        split=split, classes=classes, presplit=presplit)


def load_text_folder(path: str | os.PathLike, split: str = "train") -> TextDataset:
    """A folder with one sub-folder of ``.txt`` files (UTF-8, one text each) per class; with
    ``train/`` and ``test/`` sub-folders, those are the splits."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"text folder {root} does not exist")
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / _check_split(split) if presplit else root
    classes = sorted({p.name for d in ([root / "train", root / "test"] if presplit else [root])
                      for p in d.iterdir() if p.is_dir()}, key=_natural)
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders (one folder of .txt files per class)")
    texts, labels = [], []
    for c in classes:
        folder = base / c
        for f in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            texts.append(f.read_text(encoding="utf-8").strip())
            labels.append(c)
    return from_records(texts, labels, name=f"textfolder:{path}", split=split, classes=classes, presplit=presplit)


def load_hf_text(name: str, split: str = "train", *, text_column: str | None = None,
                 label_column: str | None = None, **load_kwargs: Any) -> TextDataset:
    """A Hugging Face ``datasets`` dataset: a ``save_to_disk`` directory, a folder of data files
    or a hub name (with a ``train`` and a ``test`` split; a single split is split by hash)."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("hf-text: datasets need the package 'datasets'; install it with "
                                     "`pip install 'ftlens[text]'` (or `pip install datasets`)") from exc
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path) if path.is_dir() else name, **load_kwargs)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise DatasetError(f"cannot load the Hugging Face dataset {name!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"all": ds})
    presplit = "train" in ds and "test" in ds
    parts = {s: ds[s] for s in ("train", "test")} if presplit else {"all": ds[next(iter(ds))]}
    first = next(iter(parts.values()))
    tcol = _pick(first.column_names, text_column, TEXT_COLUMNS, "text", name)
    lcol = _pick(first.column_names, label_column, LABEL_COLUMNS, "label", name)
    feature = first.features.get(lcol)
    names = getattr(feature, "names", None)  # a ClassLabel: its names, in label order
    part = parts[_check_split(split)] if presplit else parts["all"]
    labels = part[lcol]
    if names is not None:
        labels, classes = [names[int(v)] for v in labels], list(names)
    else:
        classes = sorted({str(v) for p in parts.values() for v in p[lcol]}, key=_natural)
    return from_records(part[tcol], [str(v) for v in labels], name=f"hf-text:{name}", split=split, classes=classes,
                        presplit=presplit)
