"""MAML (Finn et al. 2017): second-order, first-order, and Meta-SGD's learned per-parameter inner rates.

The inner loop is plain SGD on the support loss from the shared initialisation; the meta-loss is the query loss of
the adapted weights. Tasks are processed one at a time and each task's graph is freed by its own backward, so memory
is that of one task (times the inner steps), not of the meta-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, Predictor, accuracy


@dataclass
class MAMLConfig:
    inner_steps: int = 1
    """SGD steps on the support set during meta-training."""
    inner_lr: float = 0.4
    test_inner_steps: int = 10
    """Steps at evaluation (the paper uses more than at training)."""
    first_order: bool = False
    """Drop the second-order terms (FOMAML)."""
    learn_inner_lr: bool = False
    """Meta-SGD: learn one inner learning rate per parameter element, initialised to ``inner_lr``."""

    def __post_init__(self) -> None:
        if self.inner_steps < 1 or self.test_inner_steps < 1:
            raise FewShotError(f"inner_steps and test_inner_steps must be >= 1, got {self.inner_steps}, "
                               f"{self.test_inner_steps}")
        if not self.inner_lr > 0:
            raise FewShotError(f"inner_lr must be > 0, got {self.inner_lr}")


def inner_loop(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lrs: Sequence[torch.Tensor | float],
    create_graph: bool,
) -> list[torch.Tensor]:
    """``steps`` of SGD on ``cross_entropy(model(x, params), y)``; returns the adapted parameters."""
    fast = list(params)
    for _ in range(steps):
        loss = F.cross_entropy(model(x, fast), y)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, lr, g in zip(fast, lrs, grads)]
    return fast


class MAML(Method):
    name = "maml"

    def __init__(self, model: nn.Module, config: MAMLConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config or MAMLConfig()
        self.inner_lrs: nn.ParameterList | None = None
        if self.config.learn_inner_lr:
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full_like(p, self.config.inner_lr)) for p in model.meta_parameters()]
            )

    def _lrs(self) -> Sequence[torch.Tensor | float]:
        if self.inner_lrs is not None:
            return list(self.inner_lrs)
        return [self.config.inner_lr] * len(self.model.meta_parameters())

    def meta_gradient(self, episode: Episode) -> dict[str, float]:
        params = self.model.meta_parameters()
        lrs = self._lrs()
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            fast = inner_loop(self.model, params, episode.support_x[t], episode.support_y[t],
                              self.config.inner_steps, lrs, create_graph=not self.config.first_order)
            logits = self.model(episode.query_x[t], fast)
            loss = F.cross_entropy(logits, episode.query_y[t])
            (loss / tasks).backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, episode.query_y[t])
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        with torch.enable_grad():
            fast = inner_loop(self.model, params, support_x, support_y, self.config.test_inner_steps, lrs, False)
        fast = [p.detach() for p in fast]
        return lambda query_x: self.model(query_x, fast)
