"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015), its source-only baseline, a target-trained oracle,
and a few-shot variant that also uses K labelled target examples per class.

Three parts: a feature extractor ``G_f`` (the model), a label classifier ``G_y`` and a domain discriminator ``G_d``
that sees the features through a gradient-reversal layer: identity forward, gradient multiplied by ``-lambda``
backward. Minimising ``L_y + L_d`` then trains ``G_d`` to tell the domains apart while ``G_f`` learns features that
fool it. The paper's schedules, with training progress ``p`` in [0, 1]:

* ``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` with ``gamma = 10`` (0 at the start, suppressing the noisy early domain
  signal, -> 1);
* ``mu_p = mu_0 / (1 + alpha p) ** beta`` with ``alpha = 10``, ``beta = 0.75``: the learning rate, which the engine
  owns. ``train.schedule: inverse`` sets the optimizer's rate to ``train.lr / (1 + train.anneal_alpha p) **
  train.anneal_beta`` before every step (:func:`fewshot.engine.train.learning_rate`, with the same ``p = iteration
  / train.iterations`` as ``lambda_p``), whatever the optimizer, so SGD with momentum (``train.momentum``; the
  paper's 0.9) follows the paper's schedule exactly. This method does not rescale the gradients.

The ``mnist_usps_*`` recipes use the paper's optimizer: SGD, momentum 0.9, ``mu_0 = 0.01``, the ``inverse`` schedule
with ``alpha = 10``, ``beta = 0.75``. This method used to scale its gradients by ``1 / (1 + alpha p) ** beta`` itself
(method options ``anneal_lr``, default on, ``alpha``, ``beta``): a config that names those options loads with them
moved to the ``train`` keys (:func:`fewshot.config.upgrade`); one that relied on the default without naming them
now trains at ``train.schedule``'s rate (``constant`` unless set): add ``train.schedule: inverse`` to anneal.

Modes (``mode``): ``dann``; ``source_only`` (same network and data, ``lambda = 0``: the discriminator still
trains on the features, as a monitor of how separable the domains are, but the reversal layer sends zero gradient
back to ``G_f``); ``target_only`` (the oracle: labels of the target training half, no source labels).
``target_shots: K`` adds K labelled target examples per class to the label loss (the few-shot variant); ``-1`` uses
every target training label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.batches import DomainBatch
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted, Method, accuracy, restored
from fewshot.methods.heads import cosine_class_means, cosine_logits
from fewshot.models.base import feature_dim

MODES = ("dann", "source_only", "target_only")


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-lambda`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


def lambda_schedule(progress: float, gamma: float = 10.0) -> float:
    """The paper's adaptation factor ``2 / (1 + exp(-gamma p)) - 1``."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


@dataclass
class DANNConfig:
    mode: str = "dann"
    target_shots: int = 0
    """Labelled target examples per class added to the label loss (0: unsupervised; -1: all target train labels)."""
    num_classes: int = 10
    hidden: int = 100
    gamma: float = 10.0
    lambda_max: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FewShotError(f"method.mode must be one of {MODES}, got {self.mode!r}")
        if self.target_shots < -1:
            raise FewShotError(f"method.target_shots must be >= -1, got {self.target_shots}")
        if self.mode == "target_only" and self.target_shots == 0:
            raise FewShotError("mode target_only needs target labels: set method.target_shots to K > 0 or -1 (all)")
        if self.num_classes < 2 or self.hidden < 1:
            raise FewShotError("method.num_classes must be >= 2 and method.hidden >= 1")


class CosineMeansPredictor(Adapted):
    """DANN adapted to an N-way task: the cosine class means (``means``) of the support features."""

    def __init__(self, method: DANN, means: torch.Tensor) -> None:
        super().__init__(method, means.shape[0])
        self.tensors(means=means)

    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.method.features(query_x.to(self.means.device)), self.means, 10.0)


class DANN(Method):
    """Feature extractor + label classifier + domain discriminator behind a gradient-reversal layer."""

    name = "dann"
    needs_head = False
    whole_batch_statistics = True
    trains_on = (DomainBatch,)

    def __init__(self, model: nn.Module, config: DANNConfig | None = None) -> None:
        super().__init__()
        self.config = config or DANNConfig()
        dim = feature_dim(model)
        h = self.config.hidden
        self.features = model
        self.classifier = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                        nn.Linear(h, self.config.num_classes))
        self.discriminator = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, 1))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def target_shots(self) -> int:
        return self.config.target_shots

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_gradient(self, batch: DomainBatch) -> dict[str, float]:
        cfg = self.config
        p = min(max(batch.progress, 0.0), 1.0)
        lambd = cfg.lambda_max * lambda_schedule(p, cfg.gamma) if cfg.mode == "dann" else 0.0
        ns, nt = batch.source_x.shape[0], batch.target_x.shape[0]
        z = self.features(torch.cat([batch.source_x, batch.target_x, batch.labelled_x]))
        zs, zt, zl = z[:ns], z[ns : ns + nt], z[ns + nt :]
        if cfg.mode == "target_only":
            label_z, label_y = zl, batch.labelled_y
        else:
            label_z, label_y = torch.cat([zs, zl]), torch.cat([batch.source_y, batch.labelled_y])
        if label_y.numel() == 0:
            raise FewShotError("the batch has no labelled examples")
        class_logits = self.classifier(label_z)
        label_loss = F.cross_entropy(class_logits, label_y)
        domain_logits = self.discriminator(grad_reverse(torch.cat([zs, zt]), lambd)).squeeze(-1)
        domain_y = torch.cat([torch.zeros(ns), torch.ones(nt)]).to(domain_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits, domain_y)
        (label_loss + domain_loss).backward()
        domain_acc = ((domain_logits > 0).float() == domain_y).float().mean().item()
        return {"loss": label_loss.item() + domain_loss.item(), "label_loss": label_loss.item(),
                "domain_loss": domain_loss.item(), "accuracy": accuracy(class_logits, label_y),
                "domain_accuracy": domain_acc, "lambda": lambd}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> CosineMeansPredictor:
        """For N-way episodes: cosine nearest class mean on the (domain-invariant) features."""
        with torch.no_grad():
            return CosineMeansPredictor(self, cosine_class_means(self.features(support_x.to(self.device)),
                                                                 support_y, way))

    def restore(self, state: dict[str, torch.Tensor], way: int) -> CosineMeansPredictor:
        return restored(lambda: CosineMeansPredictor(self, state["means"]), state, way, self.name)
