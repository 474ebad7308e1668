"""Prototypical networks (Snell et al. 2017): logits are negative squared distances to class means.

Evaluating on fixed episodes, each distinct input of a chunk of tasks is embedded once (an in-memory
:class:`~fewshot.models.embedding_cache.EmbeddingCache` under a fingerprint of the weights, dropped when the evaluation
ends), when the backbone embeds each input alone in eval mode (:func:`~fewshot.models.base.embeds_alone`: batch norm
with running statistics); otherwise, and in training, every task runs the backbone on its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.hashing import fingerprint
from fewshot.methods.base import Adapted, Method, accuracy, restored
from fewshot.methods.heads import prototypes, squared_distance_logits
from fewshot.models.base import embeds_alone
from fewshot.models.embedding_cache import EmbeddingCache

EMBED_BATCH = 64
"""Inputs per backbone pass when an evaluation embeds a chunk of tasks' distinct inputs."""


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
        self._cache: EmbeddingCache | None = None

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

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``; each distinct input of the episode's tasks embedded once (through the cache of
        these weights) where the backbone embeds each input alone, else task by task."""
        if self.model.training or not embeds_alone(self.model) or not isinstance(episode.support_x, torch.Tensor):
            return super().predict(episode)
        tasks, ns, nq = episode.num_tasks, episode.support_y.shape[1], episode.query_y.shape[1]
        inputs = torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)])
        with torch.no_grad():
            z = self._embeddings().lookup(self.model, inputs, EMBED_BATCH).to(self.device)
        support, query = z[: tasks * ns].view(tasks, ns, -1), z[tasks * ns :].view(tasks, nq, -1)
        return squared_distance_logits(query, prototypes(support, episode.support_y, episode.way))

    def _embeddings(self) -> EmbeddingCache:
        """The cache of the current weights (and autocast setting); a new one, dropping the old, when they changed."""
        kind = self.device.type
        autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else "off"
        key = f"{fingerprint(self.model)}:{autocast}"
        if self._cache is None or self._cache.key != key:
            self._cache = EmbeddingCache(key)
        return self._cache

    def end_evaluation(self) -> None:
        self._cache = None

    def forget_caches(self) -> None:
        self._cache = None
