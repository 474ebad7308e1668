"""Your own images as a class data set: ``root/<class_name>/**/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff``.

Every image is decoded once (:func:`fewshot.data.guards.decode_image`: EXIF orientation applied, transparency
composited onto a background opposite to the strokes, 16-bit and CMYK images converted), converted to greyscale
(``channels: 1``) or RGB (``channels: 3``), resized to ``size`` x ``size`` and kept in one uint8 tensor; episodes come
out as float in [0, 1]. Classes may have different numbers of images. A class folder's images may sit in sub-folders
of it, at any depth: they all belong to the class (hidden files and folders, whose names start with ``.``, are
skipped; a folder reached twice through links is read once). Optionally ``root/train``, ``root/val``, ``root/test``
hold separate class folders (then ``split`` picks one); otherwise the whole folder is the ``test`` split (what
few-shot evaluation of a new data set needs).

Errors name the problem: a missing root, files where class folders should be, fewer than two classes, a class with no
images, split folders where class folders should be, a file that is not a readable image, an image too large to decode
safely, an image that is one flat colour. Files that are not images of a supported type are listed in ``ignored``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.data.base import ImageInput, LabelledTensorDataset
from fewshot.data.guards import decode_image
from fewshot.errors import FewShotError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class ImageFolderDataset(LabelledTensorDataset):
    """Images of ragged classes in one tensor ``[N, C, size, size]`` (uint8), gathered as float in [0, 1].

    ``ignored``: files under the class folders that are not images of a supported type (not read).
    ``nested``: class name -> the sub-folders its images came from (where a class folder has any).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 paths: list[str] | None = None, ignored: list[str] | None = None,
                 nested: dict[str, list[str]] | None = None) -> None:
        super().__init__(images, labels, class_names, divisor=255)
        self.paths = paths or []
        self.ignored = ignored or []
        self.nested = nested or {}


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not _hidden(path.name)


def find_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images under ``folder`` at any depth (sorted by path) and the other files (not images of a supported type).

    Hidden files and folders are skipped; linked folders are followed, each real folder once (a link loop ends), but
    never a link back to ``folder`` or a folder above it (which would pull in everything beside it).
    """
    images: list[Path] = []
    others: list[Path] = []
    seen: set[tuple[int, int]] = set()
    top = Path(os.path.realpath(folder))
    above = {top, *top.parents}

    def fail(exc: OSError) -> None:
        raise FewShotError(f"cannot read folder {exc.filename or folder}: {exc.strerror or exc}")

    for current, dirs, files in os.walk(folder, onerror=fail, followlinks=True):
        try:
            stat = os.stat(current)
        except OSError as exc:
            fail(exc)
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            dirs[:] = []
            continue
        seen.add(key)
        dirs[:] = sorted(d for d in dirs if not _hidden(d)
                         and Path(os.path.realpath(os.path.join(current, d))) not in above)
        for name in sorted(files):
            if _hidden(name):
                continue
            path = Path(current) / name
            (images if path.suffix.lower() in EXTENSIONS else others).append(path)
    return sorted(images), others


@dataclass
class ClassFolder:
    name: str
    folder: Path
    images: list[Path]
    ignored: list[Path] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)
    """Sub-folders (relative to the class folder) that held images."""


def class_folders(root: str | os.PathLike, min_per_class: int = 1) -> list[ClassFolder]:
    """The class folders of ``root`` (sorted by name) and their images, without decoding any; errors name the usual
    layout mistakes."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FewShotError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise FewShotError(f"{root} is not a folder; expected root/<class_name>/<images>")
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise FewShotError(f"cannot read folder {root}: {exc.strerror or exc}") from exc
    loose = [p.name for p in entries if _is_image(p)]
    if loose:
        raise FewShotError(f"{root} has {len(loose)} images directly inside it (e.g. {loose[0]}); put each class "
                           f"in its own sub-folder: {root}/<class_name>/{loose[0]}")
    dirs = [p for p in entries if p.is_dir() and not _hidden(p.name)]
    if dirs and {p.name for p in dirs} <= set(SPLITS):
        raise FewShotError(f"{root} holds split folders ({', '.join(p.name for p in dirs)}), not class folders; "
                           f"point at one split, e.g. {root / dirs[-1].name}")
    if len(dirs) < 2:
        inside = f" (it holds {dirs[0].name}/: point at the folder that holds the class folders)" if dirs else ""
        raise FewShotError(f"{root} has {len(dirs)} class folder(s); a classifier needs at least 2 classes "
                           f"(layout: {root}/<class_name>/<images>){inside}")
    classes = []
    owner: dict[str, str] = {}
    for folder in dirs:
        images, others = find_images(folder)
        if not images:
            what = f"; it holds {len(others)} other file(s), e.g. {others[0].name}" if others else " (it is empty)"
            raise FewShotError(f"class folder {folder} has no images ({', '.join(EXTENSIONS)}){what}")
        if len(images) < min_per_class:
            raise FewShotError(f"class {folder.name!r} has {len(images)} image(s) but at least {min_per_class} are "
                               f"needed per class")
        for path in images:
            real = os.path.realpath(path)
            if owner.setdefault(real, folder.name) != folder.name:
                raise FewShotError(f"{path} is also in class {owner[real]!r} (through a link?): an image can belong "
                                   "to one class only")
        nested = sorted({str(p.parent.relative_to(folder)) for p in images if p.parent != folder})
        classes.append(ClassFolder(folder.name, folder, images, others, nested))
    return classes


RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}


def load_image(path: Path, size: int, channels: int, resize: str = "bilinear") -> np.ndarray:
    """One image as uint8 ``[channels, size, size]``, resized ``nearest``, ``bilinear`` or ``lanczos``
    (:attr:`fewshot.data.base.ImageInput.resize`); a clear error if it cannot be decoded safely or is blank."""
    if resize not in RESAMPLE:
        raise FewShotError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESAMPLE)}")
    return resize_image(decode_image(path, channels), size, channels, resize)


def resize_image(image: Image.Image, size: int, channels: int, resize: str = "bilinear") -> np.ndarray:
    """A decoded ``L`` / ``RGB`` image (:func:`.guards.decode_image`) as uint8 ``[channels, size, size]``."""
    if resize not in RESAMPLE:
        raise FewShotError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESAMPLE)}")
    array = np.asarray(image.resize((size, size), resample=RESAMPLE[resize]), dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def image_folder(root: str | os.PathLike, size: int = 84, channels: int = 3, min_per_class: int = 2,
                 invert: bool = False, resize: str = "bilinear") -> ImageFolderDataset:
    """Load ``root/<class_name>/<images>`` (class folders sorted by name; images at any depth below them)."""
    if channels not in (1, 3):
        raise FewShotError(f"channels must be 1 or 3, got {channels}")
    classes = class_folders(root, min_per_class)
    images, labels, paths = [], [], []
    for label, cls in enumerate(classes):
        for path in cls.images:
            images.append(load_image(path, size, channels, resize))
            labels.append(label)
            paths.append(str(path))
    data = torch.from_numpy(np.stack(images))
    if invert:
        data = 255 - data
    return ImageFolderDataset(data, torch.tensor(labels, dtype=torch.long), [c.name for c in classes], paths,
                              [str(p) for c in classes for p in c.ignored],
                              {c.name: c.nested for c in classes if c.nested})


@dataclass
class ImageFolderConfig:
    path: str = ""
    """The folder (absolute, or relative to the data root)."""
    size: int = 84
    channels: int = 3
    min_per_class: int = 2
    invert: bool = False
    """Store 255 - pixel (e.g. dark strokes on white -> white on black, like the Omniglot tensors)."""
    resize: str = "bilinear"
    """``nearest``, ``bilinear`` or ``lanczos``."""

    def __post_init__(self) -> None:
        if self.resize not in RESAMPLE:
            raise FewShotError(f"data.resize must be one of {', '.join(RESAMPLE)}, got {self.resize!r}")
        if not self.path:
            raise FewShotError("data.path must name the image folder (root/<class_name>/<images>)")
        if not 8 <= self.size <= 1024 or self.channels not in (1, 3) or self.min_per_class < 1:
            raise FewShotError(f"data.size must be in 8 .. 1024, data.channels 1 or 3, data.min_per_class >= 1; "
                               f"got {self.size}, {self.channels}, {self.min_per_class}")

    def image_input(self) -> ImageInput:
        return ImageInput(self.size, self.channels, squeeze=False, bright_on_dark=self.invert, resize=self.resize)


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
    return image_folder(folder, options.size, options.channels, options.min_per_class, options.invert,
                        options.resize)
