"""A labelled data set seen as classes of examples: what the episode sampler needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


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

    ``transform`` maps a gathered uint8 batch to model input (e.g. float in [0, 1]).
    """

    def __init__(self, data: torch.Tensor, class_names: Sequence[str], scale: float | None = 1 / 255) -> None:
        if data.dim() < 2 or data.shape[0] != len(class_names):
            raise ValueError(f"data has shape {tuple(data.shape)} but there are {len(class_names)} class names")
        self.data = data
        self.class_names = list(class_names)
        self.scale = scale

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def class_sizes(self) -> torch.Tensor:
        return torch.full((self.data.shape[0],), self.data.shape[1], dtype=torch.long)

    def gather(self, classes: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        batch = self.data[classes, examples]
        if self.scale is not None:
            batch = batch.float().mul_(self.scale)
        return batch

    def subset(self, classes: Sequence[int]) -> TensorClassDataset:
        index = torch.as_tensor(list(classes), dtype=torch.long)
        return TensorClassDataset(self.data[index], [self.class_names[i] for i in index], self.scale)
