"""Prototypical networks (Snell et al. 2017): logits are negative squared distances to class means."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.methods.base import Adapted, Method, accuracy, restored
from fewshot.methods.heads import prototypes, squared_distance_logits


@dataclass
class ProtoNetConfig:
    pass


class Prototypes(Adapted):
    """ProtoNet adapted to a task: its class means (``prototypes [way, dim]``) in the method's embedding."""

    def __init__(self, method: ProtoNet, prototypes: torch.Tensor) -> None:
        super().__init__(method, prototypes.shape[0])
        self.tensors(prototypes=prototypes)

    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        return squared_distance_logits(self.method.model(query_x), self.prototypes)


class ProtoNet(Method):
    name = "protonet"
    needs_head = False
    whole_batch_statistics = True

    def __init__(self, model: nn.Module, config: ProtoNetConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config or ProtoNetConfig()

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        tasks, ns, nq = episode.num_tasks, episode.support_y.shape[1], episode.query_y.shape[1]
        x = torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)])
        z = self.model(x)
        support, query = z[: tasks * ns].view(tasks, ns, -1), z[tasks * ns :].view(tasks, nq, -1)
        logits = squared_distance_logits(query, prototypes(support, episode.support_y, episode.way))
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        loss.backward()
        return {"loss": loss.item(), "accuracy": accuracy(logits, episode.query_y)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Prototypes:
        with torch.no_grad():
            return Prototypes(self, prototypes(self.model(support_x), support_y, way))

    def restore(self, state: dict[str, torch.Tensor], way: int) -> Prototypes:
        return restored(lambda: Prototypes(self, state["prototypes"]), state, way, self.name)
