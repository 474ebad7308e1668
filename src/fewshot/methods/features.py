"""Feature extraction: a frozen backbone, a new classifier per task on its embeddings.

Classifiers (:mod:`fewshot.methods.heads`): multinomial logistic regression (scikit-learn, on L2-normalised
embeddings by default) and cosine nearest class mean. The backbone is any ``nn.Module`` mapping a batch of inputs to
a ``[B, D]`` feature tensor — an image CNN (tensor inputs) or a sentence encoder (inputs are Python lists of
strings); nothing here assumes tensors.

Embeddings are cached by content (:mod:`fewshot.models.embedding_cache`) under a fingerprint of the backbone's
weights, so each distinct image or sentence of an evaluation split is embedded once however many episodes, ways and
shots use it; with ``cache: disk`` the cache persists in ``$FEWSHOT_CACHE/embeddings`` across runs and recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.hashing import fingerprint
from fewshot.methods.base import Adapted, restored, substate
from fewshot.methods.heads import CLASSIFIERS, ClassifierConfig, FittedClassifier, classifier_from_state, fit_classifier
from fewshot.methods.transfer import TransferMethod
from fewshot.models.base import embed
from fewshot.models.embedding_cache import EmbeddingCache, embedding_cache_dir

CACHE_MODES = ("off", "memory", "disk")


@dataclass
class FeaturesConfig(ClassifierConfig):
    batch_size: int = 64
    cache: str = "memory"
    """Embedding cache: ``off``, ``memory`` (this process) or ``disk`` (``$FEWSHOT_CACHE/embeddings``)."""

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise FewShotError(f"method.classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.cache not in CACHE_MODES:
            raise FewShotError(f"method.cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if not self.C > 0 or self.batch_size < 1 or self.max_iter < 1:
            raise FewShotError("method.C must be > 0, method.batch_size and method.max_iter >= 1")


class FeaturesPredictor(Adapted):
    """Feature extraction adapted to a task: the classifier fitted on the support embeddings (``head``) over the
    method's frozen backbone (through its embedding cache)."""

    def __init__(self, method: FeatureExtraction, head: FittedClassifier) -> None:
        super().__init__(method, head.way)
        self.head = head

    def forward(self, query_x: Any) -> torch.Tensor:
        method = self.method
        return self.head(method.embed(query_x, method.cache()))


class FeatureExtraction(TransferMethod):
    """Frozen backbone + a new classifier per task (logistic regression or cosine nearest class mean)."""

    name = "features"

    def __init__(self, model: nn.Module, config: FeaturesConfig | None = None) -> None:
        super().__init__(model)
        self.config = config or FeaturesConfig()
        self._caches: dict[str, EmbeddingCache] = {}
        self._read_disk = True

    def cache(self) -> EmbeddingCache | None:
        """The embedding cache of the backbone's current weights (None when caching is off, while training, or while an
        export traces the predictor)."""
        if self.config.cache == "off" or self.backbone.training or torch.jit.is_tracing():  # an export: no lookups
            return None
        key = fingerprint(self.backbone)
        if key not in self._caches:
            path = embedding_cache_dir() / f"{key}.pt" if self.config.cache == "disk" else None
            self._caches = {key: EmbeddingCache(key, path, read=self._read_disk)}  # weights changed: older are stale
        return self._caches[key]

    def forget_caches(self) -> None:
        """Embed everything anew: drop the embeddings in memory and do not read the disk cache (it is rewritten)."""
        self._caches, self._read_disk = {}, False

    def end_evaluation(self) -> None:
        """Persist the embeddings (``cache: disk``) for later runs."""
        cache = self.cache()
        if cache is not None:
            cache.save()

    def embed(self, x: Any, cache: EmbeddingCache | None = None) -> torch.Tensor:
        if cache is None:
            return embed(self.backbone, x, self.config.batch_size)
        return cache.lookup(self.backbone, x, self.config.batch_size)

    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> FeaturesPredictor:
        return FeaturesPredictor(self, fit_classifier(self.embed(support_x, self.cache()), support_y, way,
                                                      self.config))

    def restore(self, state: dict[str, torch.Tensor], way: int) -> FeaturesPredictor:
        return restored(lambda: FeaturesPredictor(self, classifier_from_state(substate(state, "head."), way,
                                                                               self.config)), state, way, self.name)

    def predict(self, episode: Episode) -> torch.Tensor:
        """All tasks' inputs embedded in one pass (through the cache), then one classifier per task."""
        cache = self.cache()
        tasks = episode.num_tasks
        ns, nq = episode.support_y.shape[1], episode.query_y.shape[1]
        if isinstance(episode.support_x, torch.Tensor):
            inputs = torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)])
        else:
            inputs = [x for task in episode.support_x for x in task] + [x for task in episode.query_x for x in task]
        z = self.embed(inputs, cache)
        if cache is not None:
            cache.save()
        support, query = z[: tasks * ns].view(tasks, ns, -1), z[tasks * ns :].view(tasks, nq, -1)
        return torch.stack([fit_classifier(support[t], episode.support_y[t], episode.way, self.config)(query[t])
                            for t in range(tasks)])
