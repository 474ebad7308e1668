"""A user's own CSV of labelled text as a class data set.

The CSV has a header; one column holds the text and one the label (names configurable). ``path`` may contain
``{split}`` (``mydata_{split}.csv``) so that train / val / test come from different files; without it every split
reads the same file (fine for a quick look, not for honest evaluation).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.data.text import TextClassDataset
from fewshot.errors import FewShotError


def load_csv_text(
    path: str | os.PathLike, text_column: str = "text", label_column: str = "label", min_per_class: int = 1,
    delimiter: str = ",",
) -> TextClassDataset:
    """Read ``path`` into classes of sentences (classes sorted by name; empty texts skipped).

    ``min_per_class``: every class needs at least this many examples (e.g. K + Q of the episodes to sample).
    """
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"CSV file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames
        if not header:
            raise FewShotError(f"{path} is empty: expected a header row with columns {text_column!r} and "
                               f"{label_column!r}")
        for role, column in (("text", text_column), ("label", label_column)):
            if column not in header:
                raise FewShotError(f"{path} has no {role} column {column!r}; its columns are "
                                   f"{', '.join(repr(h) for h in header)}")
        pairs = []
        for row in reader:
            text, label = row.get(text_column), row.get(label_column)
            if text is None or label is None or not text.strip():
                continue
            pairs.append((text.strip(), label.strip()))
    if not pairs:
        raise FewShotError(f"{path} has a header but no rows with text in column {text_column!r}")
    data = TextClassDataset.from_pairs(pairs)
    sizes = data.class_sizes.tolist()
    small = [(name, n) for name, n in zip(data.class_names, sizes, strict=True) if n < min_per_class]
    if small:
        listed = ", ".join(f"{name!r} ({n})" for name, n in small[:5])
        raise FewShotError(f"{path}: {len(small)} of {len(sizes)} classes have fewer than {min_per_class} examples "
                           f"(shot + query), e.g. {listed}")
    return data


@dataclass
class CsvTextConfig:
    path: str = ""
    """CSV file; ``{split}`` in it is replaced by train / val / test. Relative paths are under the data root."""
    text_column: str = "text"
    label_column: str = "label"
    min_per_class: int = 1
    """Fail early, naming the classes, if any class has fewer examples (set it to shot + query)."""
    delimiter: str = ","

    def __post_init__(self) -> None:
        if not self.path:
            raise FewShotError("data.options.path must name the CSV file")
        if self.min_per_class < 1:
            raise FewShotError(f"min_per_class must be >= 1, got {self.min_per_class}")


def build(split: str, root: str | None, options: CsvTextConfig) -> TextClassDataset:
    """Registry builder (see :mod:`fewshot.registry`)."""
    path = Path(options.path.replace("{split}", split)).expanduser()
    if not path.is_absolute():
        from fewshot.data.download import data_root

        candidate = data_root(root) / path
        path = candidate if candidate.exists() or not path.exists() else path
    return load_csv_text(path, options.text_column, options.label_column, options.min_per_class, options.delimiter)
