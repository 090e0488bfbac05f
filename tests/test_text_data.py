"""Text datasets (fortunes topics, CSV, text folders, Hugging Face datasets) and the seeded text
corruptions, on small local files in each format."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ftlens.data import get_dataset, is_text_dataset, sample_images
from ftlens.data.fortunes import DEBIAN_DIR, TOPICS, load_fortunes, read_fortune_file
from ftlens.data.text import TEST_PERCENT, hashed_split
from ftlens.data.text_corruptions import RATES, TEXT_CORRUPTIONS, corrupt_text, corrupt_texts
from ftlens.errors import ConfigError, DatasetError

ROWS = [(f"text number {i} about {topic} things", topic) for i in range(30) for topic in ("cats", "dogs", "birds")]


def _both(name: str, **kw):
    return get_dataset(name, "train", **kw), get_dataset(name, "test", **kw)


def _check_split(train, test, rows):
    """Disjoint, complete, labelled as in ``rows``, and the test side is the hashed one."""
    got = {(t, train.classes[y]) for t, y in train} | {(t, test.classes[y]) for t, y in test}
    assert got == set(rows) and len(train) + len(test) == len(rows)
    assert not set(train.texts) & set(test.texts)
    assert all(hashed_split(t, test.classes[y]) == "test" for t, y in test)


# ----------------------------------------------------------------------------- fortunes


def test_fortune_files_are_parsed_and_ambiguous_texts_dropped(tmp_path):
    (tmp_path / "a").write_bytes(b"First text of topic a, long enough.\n%\nB\x08Bold and _\x08u_\x08nderlined words here.\n"
                                 b"%\nshort\n%\nShared between the two topics, dropped.\n%\n"
                                 b"First text of topic a, long enough.\n")
    (tmp_path / "b").write_text("Shared between the two topics, dropped.\n%\nA text of topic b\nover two lines.\n%\n")
    assert read_fortune_file(tmp_path / "a")[1] == "Bold and underlined words here."
    data = [load_fortunes(s, ["a", "b"], root=tmp_path) for s in ("train", "test")]
    texts = sorted(t for d in data for t in d.texts)
    assert texts == ["A text of topic b\nover two lines.", "Bold and underlined words here.",
                     "First text of topic a, long enough."]
    with pytest.raises(DatasetError, match="no topic 'c'.*topics: a, b"):
        load_fortunes("train", ["a", "c"], root=tmp_path)
    with pytest.raises(DatasetError, match="apt-get install fortunes"):
        load_fortunes("train", root=tmp_path / "absent")


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's fortunes package (apt-get install fortunes)")
def test_fortunes_topic_task_is_real_and_split_by_hash():
    train, test = _both("fortunes-topics")
    assert train.classes == list(TOPICS) and test.classes == list(TOPICS)
    assert len(train) > 2000 and len(test) > 400
    assert not set(train.texts) & set(test.texts)
    share = len(test) / (len(train) + len(test))
    assert abs(share - TEST_PERCENT / 100) < 0.03
    for k in range(len(TOPICS)):  # every topic has enough examples on both sides
        assert int((test.labels == k).sum()) >= 100 and int((train.labels == k).sum()) >= 400
    again = get_dataset("fortunes-topics", "test")
    assert again.texts == test.texts and torch.equal(again.labels, test.labels)
    two = get_dataset("fortunes:computers,science", "test")
    assert two.classes == ["computers", "science"] and set(two.texts) < set(test.texts)


# ----------------------------------------------------------------------------- online formats on local files


def test_csv_file_and_csv_folder(tmp_path):
    import pandas as pd

    pd.DataFrame({"id": range(len(ROWS)), "sentence": [r[0] for r in ROWS], "topic": [r[1] for r in ROWS]}) \
        .to_csv(tmp_path / "all.csv", index=False)
    train, test = _both(f"csv:{tmp_path / 'all.csv'}")
    assert train.classes == ["birds", "cats", "dogs"]
    _check_split(train, test, ROWS)
    folder = tmp_path / "split"
    folder.mkdir()
    pd.DataFrame({"text": [r[0] for r in ROWS[:60]], "label": [r[1] for r in ROWS[:60]]}).to_csv(folder / "train.csv")
    pd.DataFrame({"text": [r[0] for r in ROWS[60:]], "label": [r[1] for r in ROWS[60:]]}).to_csv(folder / "test.csv")
    train, test = _both(f"csv:{folder}")
    assert train.texts == [r[0] for r in ROWS[:60]] and test.texts == [r[0] for r in ROWS[60:]]
    with pytest.raises(DatasetError, match="no label column"):
        from ftlens.data.text import load_csv

        load_csv(tmp_path / "all.csv", label_column="missing")


def test_text_folder_with_and_without_splits(tmp_path):
    for i, (text, label) in enumerate(ROWS):
        (tmp_path / "flat" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "flat" / label / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
        split = "train" if i % 3 else "test"
        (tmp_path / "split" / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "split" / split / label / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    train, test = _both(f"textfolder:{tmp_path / 'flat'}")
    _check_split(train, test, ROWS)
    train, test = _both(f"textfolder:{tmp_path / 'split'}")
    assert len(test) == sum(1 for i in range(len(ROWS)) if i % 3 == 0) and set(test.texts) == \
        {ROWS[i][0] for i in range(len(ROWS)) if i % 3 == 0}


def test_hugging_face_datasets_on_disk_and_data_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["dogs", "cats", "birds"])})
    names = features["label"].names
    part = {"train": ROWS[:60], "test": ROWS[60:]}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [r[0] for r in rows],
                                                              "label": [names.index(r[1]) for r in rows]}, features=features)
                               for s, rows in part.items()})
    dd.save_to_disk(str(tmp_path / "disk"))
    train, test = _both(f"hf-text:{tmp_path / 'disk'}")
    assert train.classes == names  # the ClassLabel's order
    assert [(t, train.classes[y]) for t, y in train] == ROWS[:60]
    files = tmp_path / "files"
    files.mkdir()
    for s, rows in part.items():
        (files / f"{s}.jsonl").write_text("".join(json.dumps({"content": t, "category": c}) + "\n" for t, c in rows))
    train, test = _both(f"hf-text:{files}")
    assert [(t, test.classes[y]) for t, y in test] == ROWS[60:]
    with pytest.raises(DatasetError, match="cannot load"):
        get_dataset(f"hf-text:{tmp_path / 'nothing-here'}", "train")


def test_text_datasets_are_sampled_as_texts(tmp_path):
    assert is_text_dataset("fortunes-topics") and is_text_dataset("csv:x.csv") and not is_text_dataset("digits")
    import pandas as pd

    pd.DataFrame({"text": [r[0] for r in ROWS], "label": [r[1] for r in ROWS]}).to_csv(tmp_path / "d.csv")
    ds = get_dataset(f"csv:{tmp_path / 'd.csv'}", "train")
    texts, labels = sample_images(ds, 10, seed=3)
    assert len(texts) == 10 and all(isinstance(t, str) for t in texts)
    assert [ds.texts.index(t) for t in texts] and all(ds.classes[int(y)] in t for t, y in zip(texts, labels, strict=True))


def test_cka_command_reads_a_text_dataset(tmp_path):
    pytest.importorskip("transformers")
    import _text_models as tm
    import pandas as pd

    from ftlens.cli import app

    words = tm.WORDS
    rows = [(" ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 5)), f"c{i % 3}") for i in range(60)]
    pd.DataFrame({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}).to_csv(tmp_path / "d.csv")
    model = tm.save(tmp_path / "bert", "bert")
    result = CliRunner().invoke(app, ["cka", f"hf:{model}", f"hf:{model}", "--data", f"csv:{tmp_path / 'd.csv'}",
                                      "--images", "10", "--tokens", "mean", "--out", str(tmp_path / "cka")])
    assert result.exit_code == 0, result.output
    matrix = pd.read_csv(tmp_path / "cka" / "cka.csv", index_col=0).to_numpy()
    assert matrix.shape == (4, 4) and matrix.diagonal() == pytest.approx(1.0, abs=1e-9)
    result = CliRunner().invoke(app, ["cka", f"hf:{model}", f"hf:{model}", "--data", "digits", "--images", "10"])
    assert result.exit_code == 2 and "is a text model" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- corruptions


TEXTS = ["The quick brown Fox jumps over the lazy dog, twice.", "Computers are useless. They only give answers.",
         "A", "", "Hello World"]


def _distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize("name", list(TEXT_CORRUPTIONS))
def test_corruptions_are_seeded_and_per_text(name):
    out = corrupt_texts(TEXTS, name, 3, seed=0)
    assert out == corrupt_texts(TEXTS, name, 3, seed=0)
    assert [corrupt_text(t, name, 3, seed=0) for t in reversed(TEXTS)] == list(reversed(out))  # order-free
    assert any(corrupt_texts(TEXTS[:2], name, 3, seed=s) != out[:2] for s in range(1, 4))  # another seed
    assert out[3] == ""  # nothing to corrupt
    assert out[0] != TEXTS[0]


def test_corruption_amounts_follow_the_severity():
    text = TEXTS[0]
    letters = sum(c.isalpha() for c in text)
    words = text.split()
    for severity, rate in enumerate(RATES, start=1):
        k_letters = max(1, round(rate * letters))
        noisy = corrupt_text(text, "char_noise", severity)
        assert len(noisy) == len(text) and sum(a != b for a, b in zip(noisy, text, strict=True)) <= k_letters
        dropped = corrupt_text(text, "word_dropout", severity).split()
        assert len(dropped) == len(words) - max(1, round(rate * len(words)))
        assert all(w in words for w in dropped)
        cased = corrupt_text(text, "case_change", severity)
        assert cased.lower() == text.lower()
        changed = [w for w, v in zip(words, cased.split(), strict=True) if w != v]
        assert all(v == w.swapcase() for w, v in zip(words, cased.split(), strict=True) if w != v)
        assert 1 <= len(changed) <= max(1, round(rate * len(words)))
        typo = corrupt_text(text, "typos", severity)
        assert 1 <= _distance(text, typo) <= 2 * k_letters


def test_unknown_corruptions_and_severities_are_refused():
    with pytest.raises(ConfigError, match="known: char_noise"):
        corrupt_text("x", "gaussian_noise", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt_text("x", "typos", 6)
