"""A labelled data set seen as classes of examples: what the episode sampler needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch

from fewshot.errors import FewShotError

RESIZE_MODES = ("nearest", "bilinear", "lanczos")


@dataclass(frozen=True)
class ImageInput:
    """How a data set's images reach the model, so that a user's own images can be prepared the same way.

    An image data set's options class offers it as ``image_input()``; a training checkpoint records it (metadata
    ``input``) and a fitted classifier's ``config.json`` too (``preprocessing``), and every entry point that reads a
    user's images (``fewshot classify``, ``fit``, ``predict``, the Python API) prepares them so
    (:func:`fewshot.data.image_folder.load_image`).
    """

    size: int
    """Side of the square images, in pixels."""
    channels: int
    """1 (greyscale) or 3 (RGB)."""
    squeeze: bool
    """The model takes ``[batch, H, W]`` (one channel, no channel axis) rather than ``[batch, C, H, W]``."""
    bright_on_dark: bool
    """Strokes are bright on a dark background (Omniglot, MNIST as stored): dark-on-light images are inverted."""
    resize: str = "bilinear"
    """How an image is brought to ``size`` x ``size`` after conversion to greyscale / RGB: ``nearest`` (Omniglot's
    binary 28x28 images, nearest-neighbour samples), ``bilinear`` or ``lanczos``."""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise FewShotError(f"unknown resize mode {self.resize!r}; choose one of {RESIZE_MODES}")
        if self.channels not in (1, 3) or not 1 <= self.size <= 4096:
            raise FewShotError(f"image input needs channels 1 or 3 and a size in 1 .. 4096, got {self.channels}, "
                               f"{self.size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "image input") -> ImageInput:
        """From :meth:`to_dict`'s mapping; a clear error for a malformed one."""
        names = {f.name: f.type for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - set(names) or not {"size", "channels"} <= set(data):
            raise FewShotError(f"{where} is malformed: expected a mapping with keys {', '.join(names)}, got {data!r}")
        for key, value in data.items():
            want = bool if key in ("squeeze", "bright_on_dark") else int if key in ("size", "channels") else str
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise FewShotError(f"{where} is malformed: {key} is {value!r}, not a {want.__name__}")
        return cls(**{"squeeze": False, "bright_on_dark": False, **data})


class ClassDataset(Protocol):
    """Anything with classes of examples: images, sentences, features.

    ``class_sizes[c]`` is how many examples class ``c`` has; ``gather`` turns (class, example) index pairs
    into a batch (a tensor for images, a list of strings for text).
    """

    class_names: Sequence[str]

    @property
    def class_sizes(self) -> torch.Tensor: ...

    def gather(self, classes: torch.Tensor, examples: torch.Tensor) -> Any: ...


class TensorClassDataset:
    """Classes of equal size held in one tensor ``[classes, per_class, ...]`` (uint8 images, say).

    ``divisor``: gathered batches become ``float / divisor`` (e.g. 255 for uint8 images); ``None`` returns them as
    stored.
    """

    def __init__(self, data: torch.Tensor, class_names: Sequence[str], divisor: float | None = None) -> None:
        if data.dim() < 2 or data.shape[0] != len(class_names):
            raise ValueError(f"data has shape {tuple(data.shape)} but there are {len(class_names)} class names")
        self.data = data
        self.class_names = list(class_names)
        self.divisor = divisor

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def class_sizes(self) -> torch.Tensor:
        return torch.full((self.data.shape[0],), self.data.shape[1], dtype=torch.long)

    def gather(self, classes: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        batch = self.data[classes, examples]
        # times the reciprocal, not a division: the two differ in the last bit, and the Omniglot models were trained so
        return batch if self.divisor is None else batch.float().mul_(1 / self.divisor)


class LabelledTensorDataset:
    """Examples ``[N, ...]`` with labels ``[N]`` (classes of any size), usable as a class data set.

    ``divisor``: gathered batches become ``float / divisor`` (e.g. 255 for uint8 images); ``None`` returns them as
    stored.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 divisor: float | None = None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise FewShotError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.class_names = images, labels, list(class_names)
        self.divisor = divisor
        self._members = [torch.nonzero(labels == c).flatten() for c in range(len(self.class_names))]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def class_sizes(self) -> torch.Tensor:
        return torch.tensor([len(m) for m in self._members], dtype=torch.long)

    def gather(self, classes: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        pairs = zip(classes.tolist(), examples.tolist(), strict=True)
        index = torch.stack([self._members[c][e] for c, e in pairs]) if classes.numel() else classes
        batch = self.images[index]
        return batch if self.divisor is None else batch.float().div_(self.divisor)


def shipped_split(filename: str) -> list[str]:
    """The non-empty lines of a class-split file shipped in ``fewshot/data/splits/``."""
    from importlib import resources

    text = resources.files("fewshot.data").joinpath("splits", filename).read_text()
    return [line for line in text.splitlines() if line]
