"""Reptile (Nichol, Achiam & Schulman 2018).

Each task trains a copy of the weights with Adam (beta1 = 0, as the paper) on mini-batches of its support set; the
meta-gradient is ``theta - mean(phi)``, so the outer SGD step with learning rate ``epsilon`` is exactly Reptile's
``theta += epsilon * (mean(phi) - theta)`` (anneal ``epsilon`` with the engine's linear schedule, as the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, Predictor, accuracy


@dataclass
class ReptileConfig:
    inner_steps: int = 5
    inner_lr: float = 1e-3
    inner_batch: int = 10
    """Support examples per inner step (cycling through a shuffled support set)."""
    test_inner_steps: int = 50
    test_inner_batch: int = 5
    adam_beta2: float = 0.999

    def __post_init__(self) -> None:
        for name in ("inner_steps", "inner_batch", "test_inner_steps", "test_inner_batch"):
            if getattr(self, name) < 1:
                raise FewShotError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.inner_lr > 0:
            raise FewShotError(f"inner_lr must be > 0, got {self.inner_lr}")


class Reptile(Method):
    name = "reptile"

    def __init__(self, model: nn.Module, config: ReptileConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config or ReptileConfig()

    def train_task(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> tuple[list[torch.Tensor], float]:
        """Adam (beta1 = 0) from the current weights on mini-batches of ``(x, y)``; returns the task weights."""
        fast = [p.detach().clone().requires_grad_() for p in self.model.meta_parameters()]
        optimizer = torch.optim.Adam(fast, lr=self.config.inner_lr, betas=(0.0, self.config.adam_beta2))
        order = torch.randperm(len(y))
        position, loss = 0, torch.zeros(())
        with torch.enable_grad():
            for _ in range(steps):
                if position + batch > len(order):
                    order, position = torch.randperm(len(y)), 0
                pick = order[position : position + batch]
                position += batch
                loss = F.cross_entropy(self.model(x[pick], fast), y[pick])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return [p.detach() for p in fast], float(loss.detach())

    def meta_gradient(self, episode: Episode) -> dict[str, float]:
        params = self.model.meta_parameters()
        tasks = episode.num_tasks
        deltas = [torch.zeros_like(p) for p in params]
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            x, y = episode.support_x[t], episode.support_y[t]
            fast, loss = self.train_task(x, y, self.config.inner_steps, self.config.inner_batch)
            for d, p, f in zip(deltas, params, fast):
                d.add_(p.detach() - f, alpha=1 / tasks)
            total_loss += loss
            if episode.query_y.shape[1] > 0:
                with torch.no_grad():
                    total_acc += accuracy(self.model(episode.query_x[t], fast), episode.query_y[t])
        for p, d in zip(params, deltas):
            p.grad = d if p.grad is None else p.grad + d
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        batch = min(self.config.test_inner_batch, len(support_y))
        fast, _ = self.train_task(support_x, support_y, self.config.test_inner_steps, batch)
        return lambda query_x: self.model(query_x, fast)
