"""A user's labelled data saved as a Hugging Face ``datasets`` data set (``Dataset.save_to_disk``), as classes.

The folder is read with ``datasets.load_from_disk``. A ``DatasetDict`` gives its ``train`` split (or its only split;
``split`` picks another). One column holds the label and one the inputs: text (:func:`load_hf_text`; column names
configurable, as for CSV files) or images (:func:`load_hf_images`: a column of the ``Image`` feature type, kept
encoded until a model says how to decode them). A ``ClassLabel`` label column gives its class names, any other its
values as text. Errors name the problem: the ``datasets`` package missing, a folder that is not a saved data set, a
missing column, a text that is not a string, an image without bytes, fewer than two classes; rows whose text is
empty are skipped, an input without a label is refused.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.data.text import TextClassDataset
from fewshot.errors import FewShotError

MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
"""Files ``save_to_disk`` writes at a data set folder's top (``DatasetDict``: the first; ``Dataset``: the others)."""


@dataclass
class EncodedImages:
    """Images as their files' bytes, by class (classes sorted by name): ``images[c]`` holds ``(name, bytes)`` pairs,
    the name saying where the image came from in messages."""

    class_names: list[str]
    images: list[list[tuple[str, bytes]]]

    @property
    def class_sizes(self) -> list[int]:
        return [len(c) for c in self.images]

    def decode(self, size: int, channels: int, resize: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image as uint8 ``[N, channels, size, size]`` (decoded with the same checks as files:
        :func:`~fewshot.data.guards.decode_image`) and its class index ``[N]``."""
        from fewshot.data.guards import decode_image
        from fewshot.data.image_folder import resize_image

        arrays, labels = [], []
        for label, items in enumerate(self.images):
            for name, blob in items:
                image = decode_image(name, channels, opener=lambda blob=blob: io.BytesIO(blob))
                arrays.append(torch.from_numpy(resize_image(image, size, channels, resize).copy()))
                labels.append(label)
        return torch.stack(arrays), torch.tensor(labels, dtype=torch.long)


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (not a folder of image class folders)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def open_saved(path: str | os.PathLike, split: str | None = None) -> Any:
    """The saved ``datasets.Dataset`` at ``path`` (a ``DatasetDict``'s ``train``, only, or ``split`` split)."""
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
    return data


def image_columns(data: Any) -> list[str]:
    """The columns of ``data`` whose feature type is ``datasets.Image``."""
    import datasets

    return [name for name, feature in data.features.items() if isinstance(feature, datasets.Image)]


def _require_columns(path: Path, data: Any, wanted: tuple[tuple[str, str], ...]) -> None:
    columns = list(data.column_names)
    for role, column in wanted:
        if column not in columns:
            raise FewShotError(f"{path} has no {role} column {column!r}; its columns are "
                               f"{', '.join(repr(c) for c in columns)} (set --{role}-column)")


def _labels(path: Path, data: Any, label_column: str) -> list[str | None]:
    """Each row's class name (``None`` where the row has no label)."""
    import datasets

    feature = data.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    out: list[str | None] = []
    for row, label in enumerate(data[label_column]):
        if label is None or (isinstance(label, str) and not label.strip()):
            out.append(None)
            continue
        if names is not None:
            if not isinstance(label, int) or not 0 <= label < len(names):
                raise FewShotError(f"{path}: row {row} has label {label!r}, not one of the {len(names)} "
                                   f"classes of its ClassLabel column")
            label = names[label]
        out.append(str(label).strip())
    return out


def load_hf_text(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                 split: str | None = None) -> TextClassDataset:
    """The saved data set at ``path`` as classes of sentences (classes sorted by name)."""
    path = Path(path)
    data = open_saved(path, split)
    _require_columns(path, data, (("text", text_column), ("label", label_column)))
    pairs = []
    for row, (text, label) in enumerate(zip(data[text_column], _labels(path, data, label_column), strict=True)):
        if text is not None and not isinstance(text, str):
            raise FewShotError(f"{path}: row {row} of column {text_column!r} is a {type(text).__name__}, not text")
        if not text or not text.strip():
            continue
        if label is None:
            raise FewShotError(f"{path}: row {row} has text but no label {label_column!r}; give each text its class")
        pairs.append((text.strip(), label))
    if not pairs:
        raise FewShotError(f"{path} has no rows with text in column {text_column!r}")
    data_set = TextClassDataset.from_pairs(pairs)
    if len(data_set.class_names) < 2:
        raise FewShotError(f"{path} has {len(data_set.class_names)} class(es); a classifier needs at least 2")
    return data_set


def load_hf_images(path: str | os.PathLike, image_column: str | None = None, label_column: str = "label",
                   split: str | None = None) -> EncodedImages:
    """The saved data set at ``path`` as classes of encoded images (``image_column``: default the data set's one
    column of the ``Image`` type). Nothing is decoded here: :func:`fewshot.data.guards.decode_image` does it, with its
    checks, when the model's input size is known."""
    import datasets

    path = Path(path)
    data = open_saved(path, split)
    found = image_columns(data)
    if image_column is None:
        if len(found) != 1:
            raise FewShotError(f"{path} has {len(found)} image columns ({', '.join(map(repr, found)) or 'none'}); "
                               "name one with --image-column")
        image_column = found[0]
    _require_columns(path, data, (("image", image_column), ("label", label_column)))
    if image_column not in found:
        raise FewShotError(f"{path}: column {image_column!r} is not of the Image type (its image columns: "
                           f"{', '.join(map(repr, found)) or 'none'})")
    labels = _labels(path, data, label_column)
    raw = data.cast_column(image_column, datasets.Image(decode=False))[image_column]
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    for row, (value, label) in enumerate(zip(raw, labels, strict=True)):
        if value is None:
            continue
        if label is None:
            raise FewShotError(f"{path}: row {row} has an image but no label {label_column!r}; give each image its "
                               "class")
        blob = value.get("bytes")
        if blob is None and value.get("path") and Path(value["path"]).is_file():
            blob = Path(value["path"]).read_bytes()
        if not blob:
            raise FewShotError(f"{path}: row {row}'s image has no bytes (its file {value.get('path')!r} is not "
                               "there); save the data set with the images embedded")
        by_class.setdefault(label, []).append((f"{path.name}[row {row}]", bytes(blob)))
    if len(by_class) < 2:
        raise FewShotError(f"{path} has {len(by_class)} class(es) with images; a classifier needs at least 2")
    names = sorted(by_class)
    return EncodedImages(names, [by_class[n] for n in names])
