"""A user's labelled text saved as a Hugging Face ``datasets`` data set (``Dataset.save_to_disk``), as a class data set.

The folder is read with ``datasets.load_from_disk``. A ``DatasetDict`` gives its ``train`` split (or its only split;
``split`` picks another). One column holds the text and one the label (names configurable, as for CSV files); a
``ClassLabel`` label column gives its class names, any other its values as text. Errors name the problem: the
``datasets`` package missing, a folder that is not a saved data set, a missing column, a text that is not a string,
fewer than two classes; rows whose text is empty are skipped, a text without a label is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from fewshot.data.text import TextClassDataset
from fewshot.errors import FewShotError

MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
"""Files ``save_to_disk`` writes at a data set folder's top (``DatasetDict``: the first; ``Dataset``: the others)."""


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (not a folder of image class folders)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def load_hf_text(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                 split: str | None = None) -> TextClassDataset:
    """The saved data set at ``path`` as classes of sentences (classes sorted by name)."""
    path = Path(path)
    try:
        import datasets
    except ImportError as exc:
        raise FewShotError(f"{path} is a Hugging Face data set folder; reading it needs the 'datasets' package "
                           "(pip install 'fewshot[text]')") from exc
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise FewShotError(f"{path} is not a readable Hugging Face data set saved with save_to_disk: {exc}") from exc
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        chosen = split or ("train" if "train" in data else names[0] if len(names) == 1 else None)
        if chosen not in data:
            raise FewShotError(f"{path} holds splits {', '.join(names)}; "
                               + (f"it has no split {split!r}" if split else "none is called 'train': pick one"))
        data = data[chosen]
    columns = list(data.column_names)
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in columns:
            raise FewShotError(f"{path} has no {role} column {column!r}; its columns are "
                               f"{', '.join(repr(c) for c in columns)} (set --{role}-column)")
    feature = data.features[label_column]
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    pairs = []
    for row, (text, label) in enumerate(zip(data[text_column], data[label_column], strict=True)):
        if text is not None and not isinstance(text, str):
            raise FewShotError(f"{path}: row {row} of column {text_column!r} is a {type(text).__name__}, not text")
        if not text or not text.strip():
            continue
        if label is None or (isinstance(label, str) and not label.strip()):
            raise FewShotError(f"{path}: row {row} has text but no label {label_column!r}; give each text its class")
        if label_names is not None:
            if not isinstance(label, int) or not 0 <= label < len(label_names):
                raise FewShotError(f"{path}: row {row} has label {label!r}, not one of the {len(label_names)} "
                                   f"classes of its ClassLabel column")
            label = label_names[label]
        pairs.append((text.strip(), str(label).strip()))
    if not pairs:
        raise FewShotError(f"{path} has no rows with text in column {text_column!r}")
    data_set = TextClassDataset.from_pairs(pairs)
    if len(data_set.class_names) < 2:
        raise FewShotError(f"{path} has {len(data_set.class_names)} class(es); a classifier needs at least 2")
    return data_set
