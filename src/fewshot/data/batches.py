"""Training batches other than episodes (:class:`~fewshot.data.tasks.Episode`), and the seeded generator that makes
every batch a function of its iteration number (so a resumed run replays the same batches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The random generator of batch ``iteration`` of a run seeded ``seed`` (independent of every other batch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


@dataclass
class LabelledBatch:
    """Examples and their labels over all of a data set's classes (ordinary supervised training)."""

    x: Any
    y: torch.Tensor


@dataclass
class DomainBatch:
    """One domain-adaptation step: labelled source, unlabelled target, labelled target (may be empty)."""

    source_x: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor
    labelled_x: torch.Tensor
    labelled_y: torch.Tensor
    progress: float
    """Training progress p in [0, 1] (drives DANN's schedules)."""
