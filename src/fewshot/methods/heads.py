"""Classifiers put on top of features for one task: class means (cosine or squared-distance prototypes), a
prototype-initialised linear layer, and logistic regression. Shared by the methods that need one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError

CLASSIFIERS = ("logreg", "ncm")


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Class means ``[..., way, dim]`` of ``embeddings [..., n, dim]`` by ``labels [..., n]``."""
    onehot = F.one_hot(labels, way).to(embeddings.dtype)
    return (onehot.transpose(-1, -2) @ embeddings) / onehot.sum(-2).unsqueeze(-1)


def squared_distance_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``-||q - p||^2`` for every query and prototype: ``[..., q, dim] x [..., way, dim] -> [..., q, way]``."""
    return -(queries.unsqueeze(-2) - protos.unsqueeze(-3)).pow(2).sum(-1)


def cosine_class_means(z: torch.Tensor, labels: torch.Tensor, way: int, normalized: bool = False) -> torch.Tensor:
    """L2-normalised means ``[way, dim]`` of the L2-normalised features ``z`` of each class (``normalized``: ``z``
    already is); every class needs an example."""
    if not normalized:
        z = F.normalize(z, dim=-1)
    onehot = F.one_hot(labels.to(z.device), way).to(z.dtype)
    counts = onehot.sum(0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise FewShotError(f"every one of the {way} classes needs a support example; classes {missing} have none")
    return F.normalize(onehot.T @ z / counts.unsqueeze(-1), dim=-1)


def cosine_logits(queries: torch.Tensor, means: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature`` times the cosine of each query with each class mean (``[q, way]``)."""
    return temperature * F.normalize(queries, dim=-1) @ means.T


def prototype_head(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, way: int) -> None:
    """Set ``head`` to the nearest-class-mean classifier: logits = −‖f − mean_k‖² + ‖f‖² (the last term is the same
    for every class, so the arg-max is the nearest mean)."""
    missing = sorted(set(range(way)) - set(labels.tolist()))
    if missing:
        raise FewShotError(f"head_init=prototypes needs an example of every class; classes {missing} have none")
    means = prototypes(feats, labels, way).to(head.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(2 * means)
        head.bias.copy_(-(means**2).sum(1))


@dataclass
class ClassifierConfig:
    """A classifier fitted on one task's support features."""

    classifier: str = "logreg"
    """``logreg`` (multinomial logistic regression, scikit-learn) or ``ncm`` (cosine nearest class mean)."""
    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression."""
    normalize: bool = True
    """L2-normalise embeddings before the logistic regression (``ncm`` always uses cosine)."""
    max_iter: int = 1000
    temperature: float = 10.0
    """Multiplies the cosine logits of ``ncm`` (argmax, hence accuracy, does not depend on it)."""


def fit_classifier(support: torch.Tensor, labels: torch.Tensor, way: int,
                   config: ClassifierConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier on support embeddings; returns ``query embeddings -> logits [Q, way]``. Runs on the CPU (a few
    dozen rows: moving them is cheaper than launching GPU kernels); the logits are CPU tensors."""
    support, labels = support.detach().float().cpu(), labels.cpu()
    if config.classifier == "ncm":
        means = cosine_class_means(support, labels, way)
        return lambda q: cosine_logits(q.float().cpu(), means, config.temperature)
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
