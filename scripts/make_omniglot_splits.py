"""Regenerate the Omniglot class-split files shipped in ``src/fewshot/data/splits/``.

Both splits list characters as ``images_background/<Alphabet>/characterNN`` (or ``images_evaluation/...``),
one per line; rotations are added as classes at load time.

* ``vinyals``: Vinyals et al. (2016), as shipped by Snell et al. (prototypical networks) and torchmeta.
  Validation = the background alphabets Armenian, Bengali, Early_Aramaic, Hebrew, Mkhedruli_(Georgian) (172);
  test = Gurmukhi characters 42-45 plus 12 evaluation alphabets (423); train = the remaining 1028.
* ``maml``: Finn et al. (2017) shuffle all 1623 characters with ``random.seed(1)`` and take 1100 train,
  100 validation, the remaining 423 test. Their list order came from ``os.listdir`` and is not reproducible,
  so we fix the order first: all 1623 paths sorted as strings, then ``random.Random(1).shuffle``.

Run: ``python scripts/make_omniglot_splits.py /path/to/omniglot``
"""

from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

VINYALS_VAL = {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
VINYALS_TEST = {
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
}


def all_characters(root: Path) -> list[str]:
    chars: set[str] = set()
    for part in ("background", "evaluation"):
        with zipfile.ZipFile(root / f"images_{part}.zip") as zf:
            chars |= {"/".join(n.split("/")[:3]) for n in zf.namelist() if n.endswith(".png")}
    return sorted(chars)


def vinyals(chars: list[str]) -> dict[str, list[str]]:
    def alphabet(c: str) -> str:
        return c.split("/")[1]

    test = [c for c in chars if alphabet(c) in VINYALS_TEST or (alphabet(c) == "Gurmukhi" and int(c[-2:]) >= 42)]
    val = [c for c in chars if alphabet(c) in VINYALS_VAL]
    taken = set(test) | set(val)
    return {"train": [c for c in chars if c not in taken], "val": val, "test": test}


def maml(chars: list[str]) -> dict[str, list[str]]:
    shuffled = list(chars)
    random.Random(1).shuffle(shuffled)
    return {"train": sorted(shuffled[:1100]), "val": sorted(shuffled[1100:1200]), "test": sorted(shuffled[1200:])}


def main(root: str) -> None:
    chars = all_characters(Path(root))
    assert len(chars) == 1623, len(chars)
    out = Path(__file__).resolve().parents[1] / "src" / "fewshot" / "data" / "splits"
    for scheme, splits in (("vinyals", vinyals(chars)), ("maml", maml(chars))):
        for name, items in splits.items():
            (out / f"omniglot_{scheme}_{name}.txt").write_text("\n".join(items) + "\n")
            print(scheme, name, len(items))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/omniglot")
