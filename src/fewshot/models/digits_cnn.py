"""The DANN paper's MNIST feature extractor (Ganin & Lempitsky 2015): conv 5x5x32, max-pool, conv 5x5x48, max-pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError


class DigitsCNN(nn.Module):
    """The paper's MNIST feature extractor (conv 5x5x32, max-pool, conv 5x5x48, max-pool), for 16x16 or 28x28."""

    embeds_alone = True
    """No batch norm: each input's output is independent of its batch."""

    def __init__(self, image_size: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 48, 5, padding=2)
        side = image_size // 4
        self.feature_dim = 48 * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return x.flatten(1)


@dataclass
class DigitsCNNConfig:
    image_size: int = 16
    in_channels: int = 1

    def __post_init__(self) -> None:
        if not 4 <= self.image_size <= 256 or self.image_size % 4:
            raise FewShotError(f"model.image_size must be a multiple of 4 in 4 .. 256, got {self.image_size}")
        if self.in_channels not in (1, 3):
            raise FewShotError(f"model.in_channels must be 1 or 3, got {self.in_channels}")


def build(options: DigitsCNNConfig, out_features: int | None) -> DigitsCNN:
    """Registry builder (no output layer: the method puts its own classifiers on top)."""
    return DigitsCNN(options.image_size, options.in_channels)
