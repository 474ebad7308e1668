"""Omniglot (Lake et al. 2015): the official zips, preprocessed once to 28x28, with fixed class splits.

Images are stored inverted (strokes = 255) in one uint8 tensor, so sampling never touches PIL. The zips are checked
before anything is inflated (:func:`fewshot.data.guards.check_zip`: each member's declared size and compression ratio
against stated limits, no absolute or ``..`` member paths), then by content (the expected layout and counts).

Two resize modes, named for what they do:

* ``"nearest"`` — what Finn et al.'s MAML code actually produced: ``Image.resize((28, 28), LANCZOS)`` on the 1-bit
  PNGs, which Pillow carries out with nearest-neighbour sampling for mode ``"1"`` images whatever filter is asked.
  Binary images. Used by the MAML / Reptile recipes.
* ``"lanczos"`` — true Lanczos: convert to greyscale first, then resize. Grey anti-aliased strokes.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewshot.data.base import ImageInput, TensorClassDataset, shipped_split
from fewshot.data.download import data_root, download, file_digest
from fewshot.data.guards import open_zip
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, atomic_write, cache_dir, read_json

BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
ZIPS = {
    "background": ("images_background.zip", "68d2efa1b9178cc56df9314c21c6e718", 30, 964),
    "evaluation": ("images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811", 20, 659),
}
DRAWERS = 20
CHARACTERS = sum(chars for *_, chars in ZIPS.values())  # 1623
RESIZE_MODES = ("nearest", "lanczos")
SPLIT_SCHEMES = ("maml", "vinyals")
SPLITS = ("train", "val", "test")
ROTATIONS = (0, 90, 180, 270)


def omniglot_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/omniglot`` if it exists, else ``<root>`` itself."""
    base = data_root(root)
    return base / "omniglot" if (base / "omniglot").is_dir() else base


def ensure_zips(root: str | os.PathLike | None = None, allow_download: bool = True) -> dict[str, Path]:
    """Paths of the two official zips, downloaded (md5-checked) when missing."""
    folder = omniglot_dir(root)
    paths = {}
    for part, (name, md5, _, _) in ZIPS.items():
        path = folder / name
        if not path.exists():
            if not allow_download:
                raise FewShotError(f"Omniglot file {path} is missing (set --data-root or FEWSHOT_DATA)")
            download(f"{BASE_URL}/{name}", path, md5=md5)
        paths[part] = path
    return paths


def _read_zip(path: Path, part: str, resize: str, size: int) -> tuple[np.ndarray, list[str]]:
    """Decode one zip into ``[characters, 20, size, size]`` uint8, checking its content on the way."""
    _, _, want_alphabets, want_chars = ZIPS[part]
    with open_zip(path) as zf:  # members' declared sizes checked before anything is inflated
        groups: dict[str, list[str]] = {}
        for entry in zf.namelist():
            if not entry.endswith(".png"):
                continue
            parts = entry.split("/")
            if len(parts) != 4 or parts[0] != f"images_{part}":
                raise FewShotError(f"{path}: unexpected entry {entry!r}; expected "
                                   f"images_{part}/<Alphabet>/characterNN/XXXX_YY.png")
            groups.setdefault("/".join(parts[:3]), []).append(entry)
        alphabets = {c.split("/")[1] for c in groups}
        if len(alphabets) != want_alphabets or len(groups) != want_chars:
            raise FewShotError(f"{path} has {len(alphabets)} alphabets and {len(groups)} characters; "
                               f"Omniglot's {part} set has {want_alphabets} and {want_chars}")
        names = sorted(groups)
        out = np.empty((len(names), DRAWERS, size, size), dtype=np.uint8)
        for i, name in enumerate(names):
            files = sorted(groups[name])
            if len(files) != DRAWERS:
                raise FewShotError(f"{path}: {name} has {len(files)} images, expected {DRAWERS}")
            for j, entry in enumerate(files):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error", Image.DecompressionBombWarning)
                        image = Image.open(io.BytesIO(zf.read(entry)))
                        image.load()
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                    raise FewShotError(f"{path}: {entry} is too large an image to decode safely ({exc})") from exc
                except (UnidentifiedImageError, OSError, zipfile.BadZipFile, zlib.error, EOFError, SyntaxError,
                        ValueError, RuntimeError, NotImplementedError) as exc:  # corrupt, encrypted, unknown method
                    raise FewShotError(f"{path}: {entry} is not a readable image ({exc})") from exc
                out[i, j] = _resize(image, resize, size)
    return out, names


def _resize(image: Image.Image, mode: str, size: int) -> np.ndarray:
    if mode == "nearest":
        small = image.resize((size, size), resample=Image.LANCZOS)  # mode "1": Pillow samples nearest
    else:
        small = image.convert("L").resize((size, size), resample=Image.LANCZOS)
    return 255 - np.asarray(small.convert("L"), dtype=np.uint8)


def load_characters(
    root: str | os.PathLike | None = None, resize: str = "nearest", size: int = 28, allow_download: bool = True
) -> tuple[torch.Tensor, list[str]]:
    """All 1623 characters as ``uint8 [1623, 20, size, size]`` (strokes = 255) and their names.

    Names are ``images_background/<Alphabet>/characterNN``. Decoded once, then read from the cache.
    Zips whose md5 differs from the official ones (e.g. pixel-exact rebuilds) pass a content check instead:
    30 + 20 alphabets, 964 + 659 characters, 20 readable images each.
    """
    if resize not in RESIZE_MODES:
        raise FewShotError(f"unknown Omniglot resize mode {resize!r}; choose one of {RESIZE_MODES}")
    paths = ensure_zips(root, allow_download)
    digests = {part: file_digest(path) for part, path in paths.items()}
    key = f"omniglot_{resize}_{size}_{digests['background'][:8]}_{digests['evaluation'][:8]}"
    cached, index = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.json"
    if (hit := _read_cache(cached, index, size)) is not None:
        return hit
    arrays, names = [], []
    for part, path in paths.items():
        array, part_names = _read_zip(path, part, resize, size)
        arrays.append(array)
        names += part_names
    images = np.concatenate(arrays)
    atomic_write(cached, lambda f: np.save(f, images, allow_pickle=False))
    atomic_write(index, json.dumps(names))
    return torch.from_numpy(images), names


def _read_cache(cached: Path, index: Path, size: int) -> tuple[torch.Tensor, list[str]] | None:
    """The decoded characters from the cache, or ``None`` when either file is missing, damaged, or does not match the
    other (a half-written or truncated cache is rebuilt from the zips, not read)."""
    if not (cached.exists() and index.exists()):
        return None
    try:
        names = read_json(index)
        images = np.load(cached, allow_pickle=False)
    except (JSONReadError, OSError, ValueError, EOFError):
        return None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and images.dtype == np.uint8
            and images.shape == (CHARACTERS, DRAWERS, size, size) and len(names) == CHARACTERS):
        return None
    return torch.from_numpy(images), names


def split_characters(scheme: str, split: str) -> list[str]:
    """The characters of a shipped split file (``scheme`` in maml/vinyals, ``split`` in train/val/test)."""
    if scheme not in SPLIT_SCHEMES:
        raise FewShotError(f"unknown Omniglot split scheme {scheme!r}; choose one of {SPLIT_SCHEMES}")
    if split not in SPLITS:
        raise FewShotError(f"unknown split {split!r}; choose one of {SPLITS}")
    return shipped_split(f"omniglot_{scheme}_{split}.txt")


@dataclass
class OmniglotConfig:
    """Which Omniglot: split scheme, resize mode, image size, and whether rotations are extra classes."""

    scheme: str = "maml"
    resize: str = "nearest"
    size: int = 28
    rotations: bool = True
    trainval: bool = False
    """Meta-train on the train and validation characters together, as Snell et al.'s final models (trained for the
    iterations a train-only run chose on validation); the validation split is then refused (it would be in-sample)."""

    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("trainval",)
    """Options that change only the training split: runs that differ in them were tested on the same tasks."""

    def __post_init__(self) -> None:
        if self.scheme not in SPLIT_SCHEMES:
            raise FewShotError(f"unknown Omniglot split scheme {self.scheme!r}; choose one of {SPLIT_SCHEMES}")
        if self.resize not in RESIZE_MODES:
            raise FewShotError(f"unknown Omniglot resize mode {self.resize!r}; choose one of {RESIZE_MODES}")
        if not 8 <= self.size <= 105:
            raise FewShotError(f"data.size must be in 8 .. 105 (Omniglot's images are 105x105 pixels), got "
                               f"{self.size}")

    def image_input(self) -> ImageInput:
        # "nearest": the 1-bit PNGs sampled nearest (see _resize); "lanczos": greyscale, then Lanczos
        return ImageInput(self.size, channels=1, squeeze=True, bright_on_dark=True, resize=self.resize)


def omniglot(
    split: str, root: str | os.PathLike | None = None, scheme: str = "maml", resize: str = "nearest",
    size: int = 28, rotations: bool = True, allow_download: bool = True, trainval: bool = False,
) -> TensorClassDataset:
    """One split as a class data set; with ``rotations`` each character gives 4 classes (0/90/180/270 degrees);
    with ``trainval`` the train split holds the validation characters too."""
    if trainval and split == "val":
        raise FewShotError("data.options.trainval meta-trains on the validation characters, so they cannot "
                           "validate: set train.val_episodes=0 (the run keeps its last weights)")
    wanted = split_characters(scheme, split)
    if trainval and split == "train":
        wanted = wanted + split_characters(scheme, "val")
    images, names = load_characters(root, resize, size, allow_download)
    position = {name: i for i, name in enumerate(names)}
    missing = [c for c in wanted if c not in position]
    if missing:
        raise FewShotError(f"{len(missing)} characters of the {scheme}/{split} split are not in the zips, "
                           f"e.g. {missing[0]}")
    chars = images[torch.tensor([position[c] for c in wanted])]
    if not rotations:
        return TensorClassDataset(chars, wanted, divisor=255)
    data = torch.stack([torch.rot90(chars, k=r // 90, dims=(-2, -1)) for r in ROTATIONS], dim=1)
    class_names = [f"{c}/rot{r:03d}" for c in wanted for r in ROTATIONS]
    return TensorClassDataset(data.reshape(-1, *chars.shape[1:]).contiguous(), class_names, divisor=255)



def build(split: str, root: str | None, options: OmniglotConfig) -> TensorClassDataset:
    """Registry builder (see :mod:`fewshot.registry`)."""
    return omniglot(split, root, options.scheme, options.resize, options.size, options.rotations,
                    trainval=options.trainval)
