"""Prototypical networks (Snell et al. 2017): logits are negative squared distances to class means."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.methods.base import Method, Predictor, accuracy
from fewshot.methods.heads import prototypes, squared_distance_logits


@dataclass
class ProtoNetConfig:
    pass



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

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        with torch.no_grad():
            protos = prototypes(self.model(support_x), support_y, way)
        return lambda query_x: squared_distance_logits(self.model(query_x), protos)
