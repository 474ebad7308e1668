"""Intent-detection text data sets as class data sets: CLINC150, BANKING77, HWU64.

Files are read from ``<data root>/<name>/`` (``--data-root`` / ``$FEWSHOT_DATA``); when missing they are downloaded
from the official repositories at a pinned commit and checked against their sha256. Local copies are checked too
(``verify=False`` skips it).

Two settings:

* ``"episodic"`` — meta-learning over disjoint intents. The intents are split into train / val / test by the files
  ``splits/text_<name>_<split>.txt`` (made by ``scripts/make_text_splits.py``); every utterance of an intent (official
  train + val + test pooled) belongs to it. Episodes are sampled by :class:`fewshot.data.tasks.TaskSampler`.
* ``"all_classes"`` — the intent-detection papers' K-shot setting: ``train`` = K utterances per intent drawn (seeded)
  from the official training set (HWU64 with K in {5, 10}: the published ``train_5`` / ``train_10`` files),
  ``val`` / ``test`` = the official validation / test sets. CLINC150's out-of-scope utterances are left out unless
  ``include_oos``.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.data.base import shipped_split
from fewshot.data.download import data_root, download, file_digest
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, read_json

Pairs = list[tuple[str, str]]

_CLINC = "https://raw.githubusercontent.com/clinc/oos-eval/828f8093932c8fe6ca7936c3d2e52903b1c523de/data"
_BANKING = ("https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/"
            "57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data")
_HWU = ("https://raw.githubusercontent.com/jianguoz/Few-Shot-Intent-Detection/"
        "fa9553312b1dba54b1be0aae2d30b13171f898e5/Datasets/HWU64")

FILES: dict[str, dict[str, tuple[str, str]]] = {
    "clinc150": {
        "data_full.json": (f"{_CLINC}/data_full.json",
                           "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),
    },
    "banking77": {
        "train.csv": (f"{_BANKING}/train.csv", "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b"),
        "test.csv": (f"{_BANKING}/test.csv", "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d"),
    },
    "hwu64": {
        "train/seq.in": (f"{_HWU}/train/seq.in", "6f37991e7920711e3c5024f5f5ac535882b9da1df84e837d889c5a53ef91cd4f"),
        "train/label": (f"{_HWU}/train/label", "90e21d2f25cba02dd332b6cdb7d09d4fe178680b91a4469adf1790f753f7df2c"),
        "valid/seq.in": (f"{_HWU}/valid/seq.in", "fa939bc5394f708691c3d4d5c03bb59fc8301af4cc72a73e9e32fcedafd4e3c2"),
        "valid/label": (f"{_HWU}/valid/label", "aec9b5c05528709ec48202dddd7ee1789536a5562866d91feef102d5d9476815"),
        "test/seq.in": (f"{_HWU}/test/seq.in", "c0129df86114872dd58ac48448fd5559ed6679895b1938f469cf360f7c85ba79"),
        "test/label": (f"{_HWU}/test/label", "aec9b5c05528709ec48202dddd7ee1789536a5562866d91feef102d5d9476815"),
        "train_5/seq.in": (f"{_HWU}/train_5/seq.in",
                           "d85338c0020f11922d52c478000595b424ce0752465abc9e6b8d4231bad4807a"),
        "train_5/label": (f"{_HWU}/train_5/label", "f5806f5225c3d84e2cff3ff1209d5865b36230d7b47d63b2bc10cc8a01c48155"),
        "train_10/seq.in": (f"{_HWU}/train_10/seq.in",
                            "285193d07bb7fc7e26346924a55a991c581ad6445c2762b4beaf5ecd35df612a"),
        "train_10/label": (f"{_HWU}/train_10/label",
                           "c40a013fa9b98df59c4a58e069cc543d003e89e2426633ab6e964f84f3773454"),
    },
}
NAMES = tuple(FILES)
SETTINGS = ("episodic", "all_classes")
SPLITS = ("train", "val", "test")
NUM_INTENTS = {"clinc150": 150, "banking77": 77, "hwu64": 64}


class TextClassDataset:
    """Classes of sentences (any number per class): ``gather`` returns a list of strings."""

    def __init__(self, texts: Sequence[Sequence[str]], class_names: Sequence[str]) -> None:
        if len(texts) != len(class_names):
            raise FewShotError(f"{len(texts)} lists of texts but {len(class_names)} class names")
        self.texts = [list(t) for t in texts]
        self.class_names = list(class_names)
        self._sizes = torch.tensor([len(t) for t in self.texts], dtype=torch.long)

    @classmethod
    def from_pairs(cls, pairs: Pairs, class_names: Sequence[str] | None = None) -> TextClassDataset:
        """From ``(text, label)`` pairs; ``class_names`` fixes the classes and their order (others are dropped)."""
        names = sorted({label for _, label in pairs}) if class_names is None else list(class_names)
        index = {name: i for i, name in enumerate(names)}
        texts: list[list[str]] = [[] for _ in names]
        for text, label in pairs:
            if label in index:
                texts[index[label]].append(text)
        return cls(texts, names)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_examples(self) -> int:
        return int(self._sizes.sum())

    @property
    def class_sizes(self) -> torch.Tensor:
        return self._sizes

    def gather(self, classes: torch.Tensor, examples: torch.Tensor) -> list[str]:
        return [self.texts[c][e] for c, e in zip(classes.tolist(), examples.tolist(), strict=True)]

    def flat(self) -> tuple[list[str], torch.Tensor]:
        """All sentences and their class indices."""
        texts = [t for cls in self.texts for t in cls]
        labels = torch.repeat_interleave(torch.arange(len(self.texts)), self._sizes)
        return texts, labels

    def subset(self, classes: Sequence[int]) -> TextClassDataset:
        return TextClassDataset([self.texts[c] for c in classes], [self.class_names[c] for c in classes])

    def sample_per_class(self, k: int, seed: int = 0) -> tuple[TextClassDataset, TextClassDataset]:
        """``k`` random sentences of every class (seeded), and the rest."""
        rng = random.Random(seed)
        chosen, rest = [], []
        for name, texts in zip(self.class_names, self.texts, strict=True):
            if len(texts) < k:
                raise FewShotError(f"class {name!r} has {len(texts)} examples, fewer than the {k} asked for")
            order = list(range(len(texts)))
            rng.shuffle(order)
            chosen.append([texts[i] for i in sorted(order[:k])])
            rest.append([texts[i] for i in sorted(order[k:])])
        return TextClassDataset(chosen, self.class_names), TextClassDataset(rest, self.class_names)


def text_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<name>`` if it exists, else ``<root>`` itself when it holds the data set's files."""
    base = data_root(root)
    if (base / name).is_dir() or not (base / next(iter(FILES[name]))).exists():
        return base / name
    return base


def ensure_files(name: str, root: str | os.PathLike | None = None, allow_download: bool = True,
                 verify: bool = True) -> Path:
    """The data set's folder, with every file present (downloaded when missing) and sha256-checked."""
    if name not in FILES:
        raise FewShotError(f"unknown text data set {name!r}; choose one of {NAMES}")
    folder = text_dir(name, root)
    for rel, (url, sha256) in FILES[name].items():
        path = folder / rel
        if not path.exists():
            if not allow_download:
                raise FewShotError(f"{name} file {path} is missing (set --data-root or FEWSHOT_DATA)")
            download(url, path)
            verify_now = True
        else:
            verify_now = verify
        if verify_now and (got := file_digest(path, "sha256")) != sha256:
            raise FewShotError(f"{path} has sha256 {got}, expected {sha256} (the official file at {url}); "
                               "replace it, or pass verify=False to use it anyway")
    return folder


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def load_official(name: str, root: str | os.PathLike | None = None, allow_download: bool = True,
                  verify: bool = True) -> dict[str, Pairs]:
    """The official splits as ``(text, label)`` pairs.

    Keys: clinc150 ``train/val/test/oos_train/oos_val/oos_test``; banking77 ``train/test``;
    hwu64 ``train/val/test/train_5/train_10``.
    """
    folder = ensure_files(name, root, allow_download, verify)
    if name == "clinc150":
        path = folder / "data_full.json"
        try:
            raw = read_json(path)
            return {key: [(str(t), str(label)) for t, label in rows] for key, rows in raw.items()}
        except JSONReadError as exc:
            raise FewShotError(f"{path}: {exc}") from exc
        except (AttributeError, TypeError, ValueError) as exc:  # not {split: [[text, intent], ...]}
            raise FewShotError(f"{path} is not CLINC150's layout {{split: [[text, intent], ...]}}") from exc
    if name == "banking77":
        out = {}
        for split in ("train", "test"):
            with open(folder / f"{split}.csv", newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not {"text", "category"} <= set(reader.fieldnames or ()):
                    raise FewShotError(f"{folder / f'{split}.csv'} has no 'text' and 'category' columns")
                out[split] = [(row["text"], row["category"]) for row in reader]
        return out
    out = {}
    for key, sub in (("train", "train"), ("val", "valid"), ("test", "test"), ("train_5", "train_5"),
                     ("train_10", "train_10")):
        texts, labels = _read_lines(folder / sub / "seq.in"), _read_lines(folder / sub / "label")
        if len(texts) != len(labels):
            raise FewShotError(f"{folder / sub}: {len(texts)} utterances but {len(labels)} labels")
        out[key] = list(zip(texts, labels, strict=True))
    return out


def intents(official: dict[str, Pairs], include_oos: bool = False) -> list[str]:
    """Sorted intent names of the training set (``oos`` only with ``include_oos``)."""
    names = sorted({label for _, label in official["train"]} - {"oos"})
    return names + ["oos"] if include_oos and "oos_train" in official else names


def split_intents(name: str, split: str) -> list[str]:
    """The intents of a shipped meta-learning class split."""
    if split not in SPLITS:
        raise FewShotError(f"unknown split {split!r}; choose one of {SPLITS}")
    if name not in FILES:
        raise FewShotError(f"unknown text data set {name!r}; choose one of {NAMES}")
    return shipped_split(f"text_{name}_{split}.txt")


def _with_oos(official: dict[str, Pairs], key: str) -> Pairs:
    return official.get(key, []) + official.get(f"oos_{key}", [])


def text_dataset(
    name: str, split: str, root: str | os.PathLike | None = None, setting: str = "episodic", shot: int = 10,
    sample_seed: int = 0, include_oos: bool = False, allow_download: bool = True, verify: bool = True,
) -> TextClassDataset:
    """One split of a text data set in the given setting (see the module docstring)."""
    if setting not in SETTINGS:
        raise FewShotError(f"unknown text setting {setting!r}; choose one of {SETTINGS}")
    if split not in SPLITS:
        raise FewShotError(f"unknown split {split!r}; choose one of {SPLITS}")
    official = load_official(name, root, allow_download, verify)
    if setting == "episodic":
        wanted = split_intents(name, split)
        pooled = [pair for key in ("train", "val", "test") for pair in official.get(key, [])]
        data = TextClassDataset.from_pairs(pooled, wanted)
        empty = [c for c, n in zip(data.class_names, data.class_sizes.tolist(), strict=True) if n == 0]
        if empty:
            raise FewShotError(f"{len(empty)} intents of the {name}/{split} split are not in the data, e.g. "
                               f"{empty[0]!r}")
        return data
    names = intents(official, include_oos)
    if split == "train":
        if name == "hwu64" and f"train_{shot}" in official and sample_seed == 0:
            return TextClassDataset.from_pairs(official[f"train_{shot}"], names)
        full = TextClassDataset.from_pairs(_with_oos(official, "train") if include_oos else official["train"],
                                           names)
        return full.sample_per_class(shot, sample_seed)[0]
    if split == "val" and "val" not in official:  # BANKING77: training utterances not in the K-shot sample
        full = TextClassDataset.from_pairs(official["train"], names)
        rest = full.sample_per_class(shot, sample_seed)[1]
        return TextClassDataset([t[:20] for t in rest.texts], rest.class_names)
    pairs = _with_oos(official, split) if include_oos else official[split]
    return TextClassDataset.from_pairs(pairs, names)


@dataclass
class TextDataConfig:
    """Which setting; for ``all_classes``: K per class and the seed of the K-shot draw."""

    setting: str = "episodic"
    shot: int = 10
    """``all_classes``: training utterances per intent."""
    sample_seed: int = 0
    """``all_classes``: seed of the K-shot draw (HWU64 seed 0 with K in {5, 10} = the published files)."""
    include_oos: bool = False
    """CLINC150: add out-of-scope as a class (``all_classes`` only)."""
    verify: bool = True
    """Check local files against the official sha256."""

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise FewShotError(f"unknown text setting {self.setting!r}; choose one of {SETTINGS}")
        if self.shot < 1:
            raise FewShotError(f"shot must be >= 1, got {self.shot}")


def _builder(name: str):
    def build(split: str, root: str | None, options: TextDataConfig) -> TextClassDataset:
        return text_dataset(name, split, root, options.setting, options.shot, options.sample_seed,
                            options.include_oos, verify=options.verify)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"Registry builder for {name} (see :mod:`fewshot.registry`)."
    return build


build_clinc150 = _builder("clinc150")
build_banking77 = _builder("banking77")
build_hwu64 = _builder("hwu64")
