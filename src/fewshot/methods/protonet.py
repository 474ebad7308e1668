"""Prototypical networks (Snell et al. 2017): logits are negative squared distances to class means.

Evaluating on fixed episodes, each distinct input is embedded once per evaluation (an in-memory
:class:`~fewshot.models.embedding_cache.EmbeddingCache` under a fingerprint of the weights, dropped when the evaluation
ends), when the backbone says it embeds each input alone in eval mode (:func:`~fewshot.models.base.embeds_alone`:
batch norm with running statistics, or none); otherwise, and in training, every task runs the backbone on its own
inputs.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def _logits(self, episode: Episode, embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]`` of every task, ``embed`` run once over all tasks' support and query inputs."""
        tasks, ns, nq = episode.num_tasks, episode.support_y.shape[1], episode.query_y.shape[1]
        z = embed(torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)]))
        support, query = z[: tasks * ns].view(tasks, ns, -1), z[tasks * ns :].view(tasks, nq, -1)
        return squared_distance_logits(query, prototypes(support, episode.support_y, episode.way))

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        logits = self._logits(episode, self.model)
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
        if not self._embeds_once(episode):
            return super().predict(episode)
        cache = self._embeddings()
        with torch.no_grad():
            return self._logits(episode, lambda x: cache.lookup(self.model, x, EMBED_BATCH).to(self.device))

    def _embeds_once(self, episode: Episode) -> bool:
        """Whether :meth:`predict` may embed each distinct input once and answer as task by task: in eval mode, a
        backbone that embeds each input alone, tensor inputs, float32 weights and no autocast (the cache keeps float32
        embeddings), and this class's own prototypes (a subclass that adapts otherwise scores task by task)."""
        weights = next(self.model.parameters(), None)
        return (not self.model.training and embeds_alone(self.model) and isinstance(episode.support_x, torch.Tensor)
                and (weights is None or weights.dtype == torch.float32)
                and not torch.is_autocast_enabled(self.device.type) and type(self).adapt is ProtoNet.adapt)

    def _embeddings(self) -> EmbeddingCache:
        """The cache of the current weights; a new one, dropping the old, when they changed."""
        key = fingerprint(self.model)
        if self._cache is None or self._cache.key != key:
            self._cache = EmbeddingCache(key)
        return self._cache

    def end_evaluation(self) -> None:
        self._cache = None

    def forget_caches(self) -> None:
        self._cache = None
