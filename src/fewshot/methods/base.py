"""The small interface every method shares: adapt on a support set, predict on a query set.

Meta-training is the same for all of them: :meth:`Method.meta_gradient` fills the ``.grad`` of the
meta-parameters from a batch of tasks and returns metrics; the engine's optimizer then takes the step.
Methods know nothing about files, logging or the command line.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fewshot.data.tasks import Episode

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps query inputs to logits ``[queries, way]`` for the task it was adapted to."""


class Method(nn.Module, ABC):
    """A few-shot learner: ``adapt(support) -> predictor``, and ``meta_gradient(tasks)`` to meta-train it."""

    name: str = "method"
    needs_head: bool = True
    """Whether the model needs an N-way output layer (False for metric methods that use embeddings)."""

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """Adapt to one task from its support set; returns a function from query inputs to logits."""

    @abstractmethod
    def meta_gradient(self, episode: Episode) -> dict[str, float]:
        """Accumulate meta-gradients for a batch of tasks into ``.grad``; return ``loss`` and ``accuracy``."""

    @property
    def device(self) -> torch.device:
        """Where the method's weights are (the first parameter or buffer; CPU if it has none)."""
        return module_device(self)

    def meta_parameters(self) -> list[nn.Parameter]:
        """What the outer optimizer updates (all trainable parameters unless a method says otherwise)."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``: each task adapted on its own support set."""
        out = []
        for t in range(episode.num_tasks):
            predictor = self.adapt(episode.support_x[t], episode.support_y[t], episode.way)
            with torch.no_grad():
                out.append(predictor(episode.query_x[t]))
        return torch.stack(out)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor moved to ``device``; anything else (a list of strings, say) as it is."""
    return x.to(device) if isinstance(x, torch.Tensor) else x


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
