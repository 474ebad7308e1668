"""Feature extraction: a frozen backbone, a new classifier per task on its embeddings.

Classifiers: multinomial logistic regression (scikit-learn, on L2-normalised embeddings by default) and cosine
nearest class mean. The backbone is any ``nn.Module`` mapping a batch of inputs to a ``[B, D]`` feature tensor — an
image CNN (tensor inputs) or a sentence encoder (inputs are Python lists of strings); nothing here assumes tensors.

Embeddings are cached by content (a hash of each input) under a fingerprint of the backbone's weights, so each
distinct image or sentence of an evaluation split is embedded once however many episodes, ways and shots use it;
with ``cache: disk`` the cache persists in ``$FEWSHOT_CACHE/embeddings`` across runs and recipes.

This module also holds :class:`TransferMethod`, the base of the transfer methods (features, fine-tuning): they share
the supervised pre-training step used by the ``supervised`` kind (Chen et al. 2019's "Baseline": a linear classifier
over all meta-training classes on top of the backbone).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, Predictor, accuracy, module_device, to_device

CLASSIFIERS = ("logreg", "ncm")
CACHE_MODES = ("off", "memory", "disk")


def take(x: Any, index: torch.Tensor | Sequence[int]) -> Any:
    """Rows ``index`` of a batch: a tensor (``x[index]``) or a Python list (strings, say)."""
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(index, dtype=torch.long)]
    items = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    return [x[i] for i in items]


def batch_len(x: Any) -> int:
    return x.shape[0] if isinstance(x, torch.Tensor) else len(x)


def concat(parts: list[Any]) -> Any:
    """Concatenate batches (tensors or lists)."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [item for part in parts for item in part]


def embed(backbone: nn.Module, x: Any, batch_size: int = 64) -> torch.Tensor:
    """``backbone`` over ``x`` in chunks, without gradients; ``[B, D]`` float32 on the backbone's device."""
    n = batch_len(x)
    if n == 0:
        raise FewShotError("nothing to embed: the batch is empty")
    device = module_device(backbone)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = backbone(to_device(take(x, range(start, min(n, start + batch_size))), device))
            if not isinstance(z, torch.Tensor) or z.dim() != 2:
                raise FewShotError(f"the backbone must return a [batch, features] tensor, got "
                                   f"{getattr(z, 'shape', type(z).__name__)}")
            out.append(z.float())
    return torch.cat(out)


def item_keys(x: Any) -> list[bytes]:
    """A content hash per input (tensor rows or strings), the key of the embedding cache."""
    if isinstance(x, torch.Tensor):
        rows = x.detach().cpu().contiguous()
        shape = str(tuple(rows.shape[1:])).encode() + str(rows.dtype).encode()
        flat = rows.reshape(rows.shape[0], -1).numpy()
        return [hashlib.blake2b(shape + row.tobytes(), digest_size=16).digest() for row in flat]
    keys = []
    for item in x:
        if not isinstance(item, str):
            raise FewShotError(f"inputs must be tensors or strings to be cached, got {type(item).__name__}")
        keys.append(hashlib.blake2b(b"str:" + item.encode("utf-8"), digest_size=16).digest())
    return keys


def fingerprint(module: nn.Module) -> str:
    """A hash of a module's class, weights and buffers (or its own ``fingerprint()`` if it has one)."""
    own = getattr(module, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.blake2b(digest_size=12)
    digest.update(type(module).__qualname__.encode())
    precision = getattr(module, "precision", "fp32")  # a bf16 model embeds differently from the same weights
    if precision != "fp32":
        digest.update(str(precision).encode())
    hash_tensors(digest, module.state_dict())
    return digest.hexdigest()


def hash_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed each tensor's name and raw bytes, in the mapping's order, to a ``hashlib`` object (any dtype)."""
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


class EmbeddingCache:
    """Embeddings by input content, for one backbone fingerprint; optionally persisted to ``path``."""

    def __init__(self, key: str, path: Path | None = None) -> None:
        self.key, self.path = key, path
        self.index: dict[bytes, int] = {}
        self.rows: list[torch.Tensor] = []
        self._stored: torch.Tensor | None = None
        self._dirty = False
        if path is not None and path.exists():
            data = torch.load(path, map_location="cpu", weights_only=True)
            self._stored = data["embeddings"]
            self.index = {bytes(k): i for i, k in enumerate(data["keys"].numpy())}

    def __len__(self) -> int:
        return len(self.index)

    def _matrix(self) -> torch.Tensor:
        if self.rows:
            parts = ([self._stored] if self._stored is not None else []) + self.rows
            self._stored, self.rows = torch.cat(parts), []
        if self._stored is None:
            raise FewShotError("the embedding cache is empty")
        return self._stored

    def lookup(self, backbone: nn.Module, x: Any, batch_size: int) -> torch.Tensor:
        """Embeddings of ``x`` (``[B, D]``), computing only the inputs not seen before."""
        keys = item_keys(x)
        missing: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self.index and k not in missing:
                missing[k] = i
        if missing:
            new = embed(backbone, take(x, list(missing.values())), batch_size).cpu()  # the cache lives in RAM
            base = len(self.index)
            for j, k in enumerate(missing):
                self.index[k] = base + j
            self.rows.append(new)
            self._dirty = True
        matrix = self._matrix()
        return matrix[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        matrix = self._matrix()
        keys = np.frombuffer(b"".join(sorted(self.index, key=self.index.get)), dtype=np.uint8).reshape(-1, 16)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save({"embeddings": matrix, "keys": torch.from_numpy(keys.copy())}, tmp)
        os.replace(tmp, self.path)
        self._dirty = False


def embedding_cache_dir() -> Path:
    from fewshot.data.download import cache_dir

    return cache_dir() / "embeddings"


class TransferMethod(Method):
    """Base of the transfer methods: a backbone (inputs -> features) and a per-task classifier.

    ``meta_gradient`` is supervised pre-training over all training classes (needs :meth:`set_pretraining_classes`,
    which the ``supervised`` kind calls); a ``pretrained`` kind run passes ``None`` batches: nothing is trained.
    """

    needs_head = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model
        self.pretrain_head: nn.Linear | None = None

    def feature_dim(self) -> int:
        dim = getattr(self.backbone, "feature_dim", None)
        if dim is None:
            raise FewShotError(f"{type(self.backbone).__name__} has no feature_dim attribute")
        return int(dim)

    def set_pretraining_classes(self, num_classes: int) -> None:
        """Add the linear classifier over all ``num_classes`` training classes (Baseline pre-training)."""
        if num_classes < 2:
            raise FewShotError(f"supervised pre-training needs at least 2 classes, got {num_classes}")
        self.pretrain_head = nn.Linear(self.feature_dim(), num_classes)

    def meta_gradient(self, batch: Any) -> dict[str, float]:
        if batch is None:  # the ``pretrained`` kind: the backbone is used as it comes
            return {"loss": 0.0, "accuracy": float("nan")}
        if self.pretrain_head is None:
            raise FewShotError(f"{self.name} is a transfer method: train it with kind 'supervised' (ordinary "
                               "training over all training classes) or use a pretrained backbone (kind 'pretrained')")
        if isinstance(batch, Episode):
            raise FewShotError(f"{self.name} does not meta-train on episodes; use kind 'supervised'")
        x, y = batch
        logits = self.pretrain_head(self.backbone(x))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return {"loss": loss.item(), "accuracy": accuracy(logits, y)}


@dataclass
class FeaturesConfig:
    classifier: str = "logreg"
    """``logreg`` (multinomial logistic regression, scikit-learn) or ``ncm`` (cosine nearest class mean)."""
    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression."""
    normalize: bool = True
    """L2-normalise embeddings before the logistic regression (``ncm`` always uses cosine)."""
    max_iter: int = 1000
    scale: float = 10.0
    """Temperature of the cosine logits of ``ncm`` (argmax, hence accuracy, does not depend on it)."""
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


def fit_classifier(support: torch.Tensor, labels: torch.Tensor, way: int, config: FeaturesConfig) -> Predictor:
    """A classifier on support embeddings; returns ``query embeddings -> logits [Q, way]``. Runs on the CPU (a few
    dozen rows: moving them is cheaper than launching GPU kernels); the logits are CPU tensors."""
    support, labels = support.detach().float().cpu(), labels.cpu()
    if config.classifier == "ncm":
        z = F.normalize(support, dim=-1)
        onehot = F.one_hot(labels, way).to(z.dtype)
        counts = onehot.sum(0)
        if (counts == 0).any():
            raise FewShotError(f"every one of the {way} classes needs a support example")
        means = F.normalize(onehot.T @ z / counts.unsqueeze(-1), dim=-1)
        return lambda q: config.scale * F.normalize(q.float().cpu(), dim=-1) @ means.T
    from sklearn.linear_model import LogisticRegression

    def prep(z: torch.Tensor) -> np.ndarray:
        z = z.detach().cpu()
        return (F.normalize(z, dim=-1) if config.normalize else z).double().numpy()

    present = sorted(set(labels.tolist()))
    if len(present) == 1:  # one class only: it wins everywhere
        return lambda q: F.one_hot(torch.full((q.shape[0],), present[0]), way).float()
    clf = LogisticRegression(C=config.C, max_iter=config.max_iter)
    clf.fit(prep(support), labels.numpy())

    def predict(q: torch.Tensor) -> torch.Tensor:
        scores = torch.from_numpy(clf.decision_function(prep(q))).float()
        if scores.dim() == 1:  # binary: sklearn returns the score of classes_[1]
            scores = torch.stack([-scores, scores], dim=-1)
        out = torch.full((q.shape[0], way), -1e9)
        out[:, torch.as_tensor(clf.classes_, dtype=torch.long)] = scores
        return out

    return predict


class FeatureExtraction(TransferMethod):
    """Frozen backbone + a new classifier per task (logistic regression or cosine nearest class mean)."""

    name = "features"

    def __init__(self, model: nn.Module, config: FeaturesConfig | None = None) -> None:
        super().__init__(model)
        self.config = config or FeaturesConfig()
        self._caches: dict[str, EmbeddingCache] = {}

    def cache(self) -> EmbeddingCache | None:
        """The embedding cache of the backbone's current weights (None when caching is off or while training)."""
        if self.config.cache == "off" or self.backbone.training:
            return None
        key = fingerprint(self.backbone)
        if key not in self._caches:
            path = embedding_cache_dir() / f"{key}.pt" if self.config.cache == "disk" else None
            self._caches = {key: EmbeddingCache(key, path)}  # weights changed: older entries are stale
        return self._caches[key]

    def embed(self, x: Any, cache: EmbeddingCache | None = None) -> torch.Tensor:
        if cache is None:
            return embed(self.backbone, x, self.config.batch_size)
        return cache.lookup(self.backbone, x, self.config.batch_size)

    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> Predictor:
        cache = self.cache()
        classify = fit_classifier(self.embed(support_x, cache), support_y, way, self.config)
        return lambda query_x: classify(self.embed(query_x, cache))

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
