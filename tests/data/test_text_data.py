"""Text data: CLINC150 / BANKING77 / HWU64 loaders, intent splits, the all-classes setting, user CSVs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from fewshot.data.csv_text import CsvTextConfig, load_csv_text
from fewshot.data.csv_text import build as build_csv
from fewshot.data.tasks import TaskSampler
from fewshot.data.text import NUM_INTENTS, ensure_files, load_official, split_intents, text_dataset
from fewshot.errors import FewShotError

NAMES = ("clinc150", "banking77", "hwu64")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text_root(data_root) -> Path:
    return data_root


@pytest.mark.parametrize("name", NAMES)
def test_intent_splits_disjoint_and_complete(text_root, name):
    splits = {s: split_intents(name, s) for s in ("train", "val", "test")}
    union = set().union(*splits.values())
    assert sum(len(v) for v in splits.values()) == len(union) == NUM_INTENTS[name]
    official = load_official(name, text_root)
    assert union == {label for _, label in official["train"]} - {"oos"}
    for split, wanted in splits.items():
        data = text_dataset(name, split, text_root)
        assert data.class_names == wanted
        assert int(data.class_sizes.min()) >= 20  # enough for 5-shot + 15 queries


def test_split_files_match_the_script(text_root):
    spec = importlib.util.spec_from_file_location("make_text_splits", REPO / "scripts" / "make_text_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in NAMES:
        assert module.make_splits(name, str(text_root)) == {s: split_intents(name, s) for s in ("train", "val", "test")}


def test_official_sizes(text_root):
    clinc = load_official("clinc150", text_root)
    assert (len(clinc["train"]), len(clinc["val"]), len(clinc["test"]), len(clinc["oos_test"])) == (15000, 3000,
                                                                                                     4500, 1000)
    banking = load_official("banking77", text_root)
    assert (len(banking["train"]), len(banking["test"])) == (10003, 3080)
    hwu = load_official("hwu64", text_root)
    assert (len(hwu["train"]), len(hwu["test"]), len(hwu["train_10"])) == (8954, 1076, 640)


@pytest.mark.parametrize("name,test_size", [("clinc150", 4500), ("banking77", 3080), ("hwu64", 1076)])
def test_all_classes_setting(text_root, name, test_size):
    train = text_dataset(name, "train", text_root, setting="all_classes", shot=10)
    test = text_dataset(name, "test", text_root, setting="all_classes")
    assert len(train) == len(test) == NUM_INTENTS[name] and train.class_names == test.class_names
    assert train.class_sizes.tolist() == [10] * NUM_INTENTS[name]
    assert test.num_examples == test_size
    official = load_official(name, text_root)
    pool = {(t, label) for t, label in official["train"]}
    texts, labels = train.flat()
    assert all((t, train.class_names[c]) in pool for t, c in zip(texts, labels.tolist(), strict=True))
    other = text_dataset(name, "train", text_root, setting="all_classes", shot=10, sample_seed=1)
    assert other.flat()[0] != texts  # a different draw
    assert text_dataset(name, "train", text_root, setting="all_classes", shot=10).flat()[0] == texts  # seeded


def test_hwu64_published_10_shot_file(text_root):
    train = text_dataset("hwu64", "train", text_root, setting="all_classes", shot=10)
    official = load_official("hwu64", text_root)
    assert sorted(train.flat()[0]) == sorted(t for t, _ in official["train_10"])


def test_clinc_oos_only_when_asked(text_root):
    plain = text_dataset("clinc150", "test", text_root, setting="all_classes")
    with_oos = text_dataset("clinc150", "test", text_root, setting="all_classes", include_oos=True)
    assert "oos" not in plain.class_names and with_oos.class_names[-1] == "oos"
    assert with_oos.num_examples == plain.num_examples + 1000


def test_text_episodes_are_lists_of_strings_with_right_labels(text_root):
    data = text_dataset("banking77", "test", text_root)
    episode = TaskSampler(data, 5, 2, 3, seed=4).sample(3, 7)
    assert len(episode.support_x) == 3 and all(len(task) == 10 for task in episode.support_x)
    assert all(isinstance(x, str) for task in episode.query_x for x in task)
    for t in range(3):
        for x, y in zip(episode.support_x[t], episode.support_y[t].tolist(), strict=True):
            assert x in data.texts[int(episode.classes[t, y])]
    again = TaskSampler(data, 5, 2, 3, seed=4).sample(3, 7)
    assert again.support_x == episode.support_x and torch.equal(again.classes, episode.classes)


def test_checksum_mismatch_and_missing_files(tmp_path, text_root):
    folder = tmp_path / "banking77"
    shutil.copytree(text_root / "banking77", folder)
    (folder / "test.csv").chmod(0o644)
    ensure_files("banking77", tmp_path)  # byte-exact copies pass
    with open(folder / "test.csv", "a") as f:
        f.write("extra row,card_arrival\n")
    with pytest.raises(FewShotError, match="sha256"):
        ensure_files("banking77", tmp_path)
    (folder / "train.csv").chmod(0o644)
    (folder / "train.csv").unlink()
    with pytest.raises(FewShotError, match="missing"):
        ensure_files("banking77", tmp_path, allow_download=False)
    with pytest.raises(FewShotError, match="unknown text data set"):
        ensure_files("snips", tmp_path)



@pytest.mark.parametrize(("name", "file", "content", "message"), [
    ("clinc150", "data_full.json", '{"train": [["book a flight", "book_fli', "not JSON"),
    ("clinc150", "data_full.json", '[["book a flight", "book_flight"]]', "not CLINC150's layout"),
    ("clinc150", "data_full.json", '{"train": [["book a flight"]]}', "not CLINC150's layout"),
    ("banking77", "train.csv", "utterance,intent\nhi,card_arrival\n", "no 'text' and 'category' columns"),
])
def test_unchecked_files_of_the_wrong_layout_are_named(tmp_path, text_root, name, file, content, message):
    folder = tmp_path / name
    shutil.copytree(text_root / name, folder)
    (folder / file).chmod(0o644)
    (folder / file).write_text(content)
    with pytest.raises(FewShotError, match=message):
        load_official(name, tmp_path, allow_download=False, verify=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_text_loads(tmp_path):
    rows = "\n".join(f'"how do I {v} my card",{label}' for label, v in (("a", "x"), ("b", "y")) for _ in range(3))
    path = _write(tmp_path / "mine.csv", "utterance,intent\n" + rows + "\n")
    data = load_csv_text(path, "utterance", "intent", min_per_class=3)
    assert data.class_names == ["a", "b"] and data.class_sizes.tolist() == [3, 3]
    split_path = _write(tmp_path / "mine_test.csv", "utterance,intent\n" + rows + "\n")
    built = build_csv("test", None, CsvTextConfig(path=str(tmp_path / "mine_{split}.csv"), text_column="utterance",
                                                  label_column="intent"))
    assert built.num_examples == 6 and split_path.exists()


def test_csv_text_errors(tmp_path):
    with pytest.raises(FewShotError, match="empty"):
        load_csv_text(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(FewShotError, match="no rows"):
        load_csv_text(_write(tmp_path / "header.csv", "text,label\n"))
    with pytest.raises(FewShotError, match=r"no label column 'intent'.*'text', 'label'"):
        load_csv_text(_write(tmp_path / "cols.csv", "text,label\nhi,a\n"), label_column="intent")
    with pytest.raises(FewShotError, match="no text column"):
        load_csv_text(_write(tmp_path / "cols2.csv", "sentence,label\nhi,a\n"))
    small = _write(tmp_path / "small.csv", "text,label\n" + "hi,a\n" * 6 + "yo,b\nhey,b\n")
    with pytest.raises(FewShotError, match=r"fewer than 6 examples.*'b' \(2\)"):
        load_csv_text(small, min_per_class=6)
    with pytest.raises(FewShotError, match="does not exist"):
        load_csv_text(tmp_path / "nope.csv")
    with pytest.raises(FewShotError, match="need 6 examples per class"):  # the sampler's own check
        TaskSampler(load_csv_text(small), 2, 1, 5)
