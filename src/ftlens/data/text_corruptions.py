"""Text corruptions for robustness: character noise, word dropout, case changes, typos.

``corrupt_texts(texts, name, severity, seed)`` applies one corruption at a severity 1..5 to each
text. Deterministic and seeded: a text's corruption depends only on ``(seed, name, severity,
the text)``, never on its position or the other texts, so a test set corrupted in pieces is the
same as one corrupted at once. Each corruption changes a share :data:`RATES` ``[severity - 1]``
of the characters or words it acts on (at least one where there is one), drawn without
replacement:

- ``char_noise``: letters replaced by random lower-case letters (case kept);
- ``word_dropout``: words removed (one word at least is kept);
- ``case_change``: words' letter case inverted (``Hello`` -> ``hELLO``);
- ``typos``: keyboard typos at letters: a QWERTY neighbour, a swap with the next character,
  a deletion or a doubled letter, in equal shares.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np

from ftlens.errors import ConfigError

__all__ = ["RATES", "TEXT_CORRUPTIONS", "corrupt_text", "corrupt_texts"]

#: Share of the letters / words a corruption changes, by severity 1..5.
RATES = (0.03, 0.06, 0.1, 0.15, 0.25)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_WORD = re.compile(r"\S+")


def _neighbours() -> dict[str, str]:
    """QWERTY neighbours of each letter (same row left/right, the rows above and below)."""
    pos = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():
        near = [d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1]
        out[c] = "".join(near)
    return out


_NEAR = _neighbours()


def _count(n: int, rate: float) -> int:
    return min(n, max(1, int(round(rate * n)))) if n else 0


def _letter_positions(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c.isalpha() and c.lower() in _LETTERS]


def char_noise(text: str, rate: float, rng: np.random.Generator) -> str:
    chars = list(text)
    where = _letter_positions(text)
    for i in rng.choice(where, size=_count(len(where), rate), replace=False) if where else []:
        new = _LETTERS[int(rng.integers(26))]
        chars[i] = new.upper() if chars[i].isupper() else new
    return "".join(chars)


def _words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    spans = _words(text)
    if len(spans) < 2:
        return text
    drop = set(rng.choice(len(spans), size=min(len(spans) - 1, _count(len(spans), rate)), replace=False).tolist())
    return " ".join(text[a:b] for k, (a, b) in enumerate(spans) if k not in drop)


def case_change(text: str, rate: float, rng: np.random.Generator) -> str:
    spans = [s for s in _words(text) if any(c.isalpha() for c in text[s[0]:s[1]])]
    chars = list(text)
    for k in rng.choice(len(spans), size=_count(len(spans), rate), replace=False) if spans else []:
        a, b = spans[int(k)]
        chars[a:b] = list(text[a:b].swapcase())
    return "".join(chars)


def typos(text: str, rate: float, rng: np.random.Generator) -> str:
    where = _letter_positions(text)
    picked = sorted(rng.choice(where, size=_count(len(where), rate), replace=False).tolist()) if where else []
    kinds = rng.integers(4, size=len(picked))
    chars: list[str] = list(text)
    for i, kind in sorted(zip(picked, kinds.tolist(), strict=True), reverse=True):  # right to left: indices hold
        c = chars[i]
        if kind == 0:  # a neighbouring key
            near = _NEAR[c.lower()]
            new = near[int(rng.integers(len(near)))]
            chars[i] = new.upper() if c.isupper() else new
        elif kind == 1 and i + 1 < len(chars):  # swap with the next character
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif kind == 2:  # deletion
            del chars[i]
        else:  # doubled letter
            chars.insert(i, c)
    return "".join(chars)


#: name -> ``f(text, rate, rng) -> text``.
TEXT_CORRUPTIONS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "char_noise": char_noise,
    "word_dropout": word_dropout,
    "case_change": case_change,
    "typos": typos,
}


def _rng(text: str, name: str, severity: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{name}\x00{severity}\x00{text}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed), int.from_bytes(digest[:8], "big")]))


def corrupt_text(text: str, name: str, severity: int, seed: int = 0) -> str:
    """One text with corruption ``name`` at ``severity`` (1..5)."""
    if name not in TEXT_CORRUPTIONS:
        raise ConfigError(f"unknown text corruption {name!r}; known: {', '.join(TEXT_CORRUPTIONS)}")
    if int(severity) not in range(1, len(RATES) + 1):
        raise ConfigError(f"severity must be 1..{len(RATES)}, got {severity!r}")
    return TEXT_CORRUPTIONS[name](text, RATES[int(severity) - 1], _rng(text, name, int(severity), seed))


def corrupt_texts(texts: Sequence[str], name: str, severity: int, seed: int = 0) -> list[str]:
    """:func:`corrupt_text` of each text."""
    return [corrupt_text(t, name, severity, seed) for t in texts]
