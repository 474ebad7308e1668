"""Regenerate the intent-split files ``src/fewshot/data/splits/text_<name>_<split>.txt`` for episodic meta-learning.

For each data set the intents of the official training set (CLINC150 without ``oos``) are sorted as strings, shuffled
with ``random.Random(0)``, and cut into train / val / test with the class counts of ProtAugment (Dopierre et al. 2021):
CLINC150 50 / 50 / 50, BANKING77 25 / 25 / 27, HWU64 23 / 16 / 25. The cut ignores domains, so a test intent may share
a domain (e.g. CLINC150 "banking") with training intents. One intent name per line.

Run: ``python scripts/make_text_splits.py /path/to/data`` (the data root holding clinc150/, banking77/, hwu64/).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from fewshot.data.text import intents, load_official

COUNTS = {"clinc150": (50, 50, 50), "banking77": (25, 25, 27), "hwu64": (23, 16, 25)}
OUT = Path(__file__).resolve().parents[1] / "src" / "fewshot" / "data" / "splits"


def make_splits(name: str, root: str) -> dict[str, list[str]]:
    """The train / val / test intents of data set ``name`` (each list sorted)."""
    n_train, n_val, n_test = COUNTS[name]
    names = sorted(intents(load_official(name, root, allow_download=False)))
    if len(names) != n_train + n_val + n_test:
        raise SystemExit(f"{name}: {len(names)} intents, expected {n_train + n_val + n_test}")
    random.Random(0).shuffle(names)
    parts = {"train": names[:n_train], "val": names[n_train : n_train + n_val], "test": names[n_train + n_val :]}
    return {split: sorted(part) for split, part in parts.items()}


def main(root: str) -> None:
    for name in COUNTS:
        for split, part in make_splits(name, root).items():
            (OUT / f"text_{name}_{split}.txt").write_text("\n".join(part) + "\n")
            print(name, split, len(part))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data")
