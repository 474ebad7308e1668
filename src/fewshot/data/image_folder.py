"""Your own images as a class data set: ``root/<class_name>/*.png|jpg|jpeg|bmp|gif|webp``.

Every image is decoded once, converted to greyscale (``channels: 1``) or RGB (``channels: 3``), resized to
``size`` x ``size`` and kept in one uint8 tensor; episodes come out as float in [0, 1]. Classes may have different
numbers of images. Optionally ``root/train``, ``root/val``, ``root/test`` hold separate class folders (then
``split`` picks one); otherwise the whole folder is the ``test`` split (what few-shot evaluation of a new data set
needs).

Errors name the problem: a missing root, files where class folders should be, an empty or too small class, a file
that is not a readable image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewshot.data.base import ImageInput, LabelledTensorDataset
from fewshot.errors import FewShotError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")


class ImageFolderDataset(LabelledTensorDataset):
    """Images of ragged classes in one tensor ``[N, C, size, size]`` (uint8), gathered as float in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 paths: list[str] | None = None) -> None:
        super().__init__(images, labels, class_names, divisor=255)
        self.paths = paths or []


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 ``[channels, size, size]``; a clear error if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FewShotError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from exc
    resized = converted.resize((size, size), resample=Image.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def image_folder(root: str | os.PathLike, size: int = 84, channels: int = 3, min_per_class: int = 2,
                 invert: bool = False) -> ImageFolderDataset:
    """Load ``root/<class_name>/<images>`` (class folders sorted by name)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FewShotError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise FewShotError(f"{root} is not a folder; expected root/<class_name>/<images>")
    if channels not in (1, 3):
        raise FewShotError(f"channels must be 1 or 3, got {channels}")
    loose = sorted(p.name for p in root.iterdir() if _is_image(p))
    if loose:
        raise FewShotError(f"{root} has {len(loose)} images directly inside it (e.g. {loose[0]}); put each class "
                           f"in its own sub-folder: {root}/<class_name>/{loose[0]}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise FewShotError(f"{root} has {len(class_dirs)} class folder(s); need at least 2 "
                           f"(layout: {root}/<class_name>/<images>)")
    images, labels, names, paths = [], [], [], []
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if _is_image(p))
        nested = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not files:
            hint = f" (it holds folders {nested[:3]}: one level of class folders only)" if nested else ""
            raise FewShotError(f"class folder {folder} has no images ({', '.join(EXTENSIONS)}){hint}")
        if len(files) < min_per_class:
            raise FewShotError(f"class {folder.name!r} has {len(files)} image(s) but at least {min_per_class} are "
                               f"needed per class")
        for path in files:
            images.append(load_image(path, size, channels))
            labels.append(label)
            paths.append(str(path))
        names.append(folder.name)
    data = torch.from_numpy(np.stack(images))
    if invert:
        data = 255 - data
    return ImageFolderDataset(data, torch.tensor(labels, dtype=torch.long), names, paths)


@dataclass
class ImageFolderConfig:
    path: str = ""
    """The folder (absolute, or relative to the data root)."""
    size: int = 84
    channels: int = 3
    min_per_class: int = 2
    invert: bool = False
    """Store 255 - pixel (e.g. dark strokes on white -> white on black, like the Omniglot tensors)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise FewShotError("data.path must name the image folder (root/<class_name>/<images>)")
        if not 8 <= self.size <= 1024 or self.channels not in (1, 3) or self.min_per_class < 1:
            raise FewShotError(f"data.size must be in 8 .. 1024, data.channels 1 or 3, data.min_per_class >= 1; "
                               f"got {self.size}, {self.channels}, {self.min_per_class}")

    def image_input(self) -> ImageInput:
        return ImageInput(self.size, self.channels, squeeze=False, bright_on_dark=self.invert)


def build(split: str, root: str | None, options: ImageFolderConfig) -> ImageFolderDataset:
    """Registry builder: ``<path>/<split>`` if the folder has split sub-folders, else the whole folder as ``test``."""
    base = Path(options.path).expanduser()
    if not base.is_absolute() and root:
        base = Path(root) / base
    if all((base / s).is_dir() for s in SPLITS):
        folder = base / split
        if split not in SPLITS:
            raise FewShotError(f"unknown split {split!r}; {base} has {', '.join(SPLITS)}")
    elif split in ("test", "all"):
        folder = base
    else:
        raise FewShotError(f"{base} has no train/val/test sub-folders, so only the 'test' split exists "
                           f"(asked for {split!r})")
    return image_folder(folder, options.size, options.channels, options.min_per_class, options.invert)
