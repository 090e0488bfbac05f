"""Real labelled text from Debian's ``fortunes`` package: short texts filed by topic.

``/usr/share/games/fortunes/TOPIC`` holds the texts of one topic (quotations, jokes, verses),
separated by lines holding ``%`` (the strfile format). ``fortunes-topics`` is the topic task of
:data:`TOPICS` (computers, politics, science, songs-poems: 1,050 / 703 / 625 / 720 texts in
``fortunes`` 1:1.99.1-7.3); ``fortunes:TOPIC,TOPIC,...`` picks other files. The reading is
plain and deterministic: overstrike sequences (``x<BS>y``) keep the printed character, texts
shorter than :data:`MIN_CHARS` are left out, a text filed under two of the chosen topics is left
out (it has no single label), repeats within a topic are kept once. The train/test split is
:func:`ftlens.data.text.hashed_split` (80/20 by the hash of topic and text).

Install the data with ``apt-get install fortunes`` (``make test`` and ``make demo`` do where
they can).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ftlens.errors import DatasetError

from .text import TextDataset, from_records

__all__ = ["DEBIAN_DIR", "TOPICS", "load_fortunes", "read_fortune_file"]

DEBIAN_DIR = Path("/usr/share/games/fortunes")
#: The topics of ``fortunes-topics``.
TOPICS = ("computers", "politics", "science", "songs-poems")
#: Shorter texts are left out (a few words carry no topic).
MIN_CHARS = 20
_OVERSTRIKE = re.compile(r".\x08")


def read_fortune_file(path: Path) -> list[str]:
    """The texts of one strfile source file, in file order."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = _OVERSTRIKE.sub("", text.replace("\r\n", "\n"))
    entries = re.split(r"\n%\n|^%\n|\n%$", text)
    return [e.strip("\n").rstrip() for e in entries if e.strip()]


def load_fortunes(split: str = "train", topics: Sequence[str] = TOPICS, root: str | Path | None = None,
                  name: str = "fortunes-topics") -> TextDataset:
    """The ``split`` of the topic task over ``topics`` (labels in the order given)."""
    base = Path(root) if root is not None else DEBIAN_DIR
    if not base.is_dir():
        raise DatasetError(f"{base} does not exist: install Debian's fortunes package (apt-get install fortunes), "
                           "or pass root=DIR with the topic files")
    topics = [str(t) for t in topics]
    if len(set(topics)) != len(topics) or len(topics) < 2:
        raise DatasetError(f"fortunes: give at least two distinct topics, got {topics}")
    per_topic: dict[str, list[str]] = {}
    for topic in topics:
        path = base / topic
        if not path.is_file():
            known = sorted(p.name for p in base.iterdir() if p.is_file() and "." not in p.name)
            raise DatasetError(f"fortunes has no topic {topic!r} in {base}; topics: {', '.join(known)}")
        seen: dict[str, None] = {}
        for t in read_fortune_file(path):
            if len(t) >= MIN_CHARS:
                seen.setdefault(t, None)
        per_topic[topic] = list(seen)
    owners: dict[str, set[str]] = {}
    for topic, texts in per_topic.items():
        for t in texts:
            owners.setdefault(t, set()).add(topic)
    texts, labels = [], []
    for topic in topics:
        for t in per_topic[topic]:
            if len(owners[t]) == 1:
                texts.append(t)
                labels.append(topic)
    return from_records(texts, labels, name=name, split=split, classes=topics)
