"""SetFit (Tunstall et al. 2022): contrastive fine-tuning of a sentence encoder on pairs of support sentences, then a
logistic regression on the tuned encoder's embeddings.

Per task, a copy of the encoder learns from sentence pairs: same class -> cosine 1, different classes -> cosine 0
(``CosineSimilarityLoss``: squared error of the pair's cosine). The pairs are drawn as the ``setfit`` package
(version 1.x) draws them, in a seeded order of our own:

* ``oversampling`` (its default): every unordered pair of support sentences, a sentence with itself included (with
  dropout on, the two embeddings of one sentence differ), split into positives and negatives; the smaller side is
  repeated until both sides are as long as the larger. 5-way 1-shot: 5 positives (each sentence with itself) and 10
  negatives, so 10 + 10 pairs; 5-way 5-shot: 250 + 250.
* ``unique``: every pair once; ``undersampling``: the larger side cut to the smaller's length.
* ``iterations > 0`` (SetFit's ``num_iterations``): ``iterations x n`` positives and as many negatives instead.

Positive and negative pairs alternate, and the pairs are shuffled into batches of ``batch_size`` for ``epochs``
epochs of AdamW (weight decay 0.01, gradient norm clipped to 1) with transformers' linear warm-up (``warmup`` of
the steps) and linear decay, the encoder in train mode (dropout): SetFit 1.x's defaults.
Each batch embeds its left and right sentences in two forward passes, as sentence-transformers does.
The method's own encoder never changes; the logistic regression (scikit-learn, as SetFit's default head) is fitted on
the tuned copy's support embeddings and scores the queries with the same copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.inputs import batch_len, take, to_device
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted, restored, substate
from fewshot.methods.heads import ClassifierConfig, FittedClassifier, classifier_from_state, fit_classifier
from fewshot.methods.transfer import TransferMethod
from fewshot.models.base import embed

SAMPLING = ("oversampling", "undersampling", "unique")


@dataclass
class SetFitConfig:
    sampling: str = "oversampling"
    """How many pairs: ``oversampling`` (SetFit's default), ``undersampling`` or ``unique`` (see the module)."""
    iterations: int = 0
    """``> 0``: ``iterations x n`` positive and as many negative pairs (SetFit's ``num_iterations``); 0: use
    ``sampling``."""
    epochs: int = 1
    batch_size: int = 16
    """Pairs per step."""
    lr: float = 2e-5
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (SetFit's ``l2_weight``)."""
    max_grad_norm: float = 1.0
    """Clip each step's gradient norm to this, as transformers' Trainer does (0: off)."""
    warmup: float = 0.1
    """Fraction of the steps over which the learning rate rises linearly from 0 (then it decays linearly to 0)."""
    max_steps: int = 0
    """Stop after this many steps (0: no limit)."""
    C: float = 1.0
    """Inverse L2 regularisation of the logistic regression head."""
    seed: int = 0
    """Seeds the pair order and dropout, so a task's result does not depend on the tasks before it."""

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise FewShotError(f"method.sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.iterations < 0 or self.epochs < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise FewShotError("method.iterations and max_steps must be >= 0, epochs and batch_size >= 1")
        if not (self.lr > 0 and self.C > 0 and 0 <= self.warmup < 1 and self.weight_decay >= 0
                and self.max_grad_norm >= 0):
            raise FewShotError("method.lr and method.C must be > 0, method.warmup in [0, 1), method.weight_decay and "
                               "method.max_grad_norm >= 0")


def sentence_pairs(labels: list[int], sampling: str = "oversampling", iterations: int = 0,
                   generator: torch.Generator | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, target)`` pairs of support indices, positives (target 1) and negatives (0) alternating."""
    n = len(labels)
    combos = [(i, j) for i in range(n) for j in range(i, n)]  # with replacement: a sentence pairs with itself
    order = torch.randperm(len(combos), generator=generator).tolist()
    positives = [combos[k] for k in order if labels[combos[k][0]] == labels[combos[k][1]]]
    negatives = [combos[k] for k in order if labels[combos[k][0]] != labels[combos[k][1]]]
    if not negatives:
        raise FewShotError("SetFit needs support examples of at least two classes")
    if iterations > 0:
        count_pos = count_neg = iterations * n
    elif sampling == "unique":
        count_pos, count_neg = len(positives), len(negatives)
    elif sampling == "undersampling":
        count_pos = count_neg = min(len(positives), len(negatives))
    else:
        count_pos = count_neg = max(len(positives), len(negatives))
    pos = [positives[k % len(positives)] for k in range(count_pos)]
    neg = [negatives[k % len(negatives)] for k in range(count_neg)]
    out: list[tuple[int, int, float]] = []
    for k in range(max(count_pos, count_neg)):
        if k < count_pos:
            out.append((*pos[k], 1.0))
        if k < count_neg:
            out.append((*neg[k], 0.0))
    return out


def warmup_linear(steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor of step ``s`` (from 0): ``s / w`` for the ``w = ceil(warmup * steps)`` warm-up steps,
    then a linear decay to 0. It is transformers' ``get_linear_schedule_with_warmup``, which SetFit 1.x trains with;
    so the first step has rate 0 and only moves Adam's moments."""
    warm = math.ceil(warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return factor


class SetFitPredictor(Adapted):
    """SetFit adapted to a task: the contrastively tuned copy of the encoder (``encoder``) and the logistic regression
    on its embeddings (``head``)."""

    def __init__(self, method: SetFit, encoder: nn.Module, head: FittedClassifier) -> None:
        super().__init__(method, head.way)
        self.encoder, self.head = encoder, head

    def forward(self, query_x: Any) -> torch.Tensor:
        return self.head(embed(self.encoder, query_x))


class SetFit(TransferMethod):
    """Contrastive fine-tuning of a copy of the encoder on support pairs, then logistic regression on it."""

    name = "setfit"

    def __init__(self, model: nn.Module, config: SetFitConfig | None = None) -> None:
        super().__init__(model)
        self.config = config or SetFitConfig()
        self.head_config = ClassifierConfig(classifier="logreg", C=self.config.C)

    def tune_encoder(self, support_x: Any, support_y: torch.Tensor) -> tuple[nn.Module, list[float]]:
        """A contrastively tuned copy of the encoder (eval mode, frozen) and its loss per step."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed)
        pairs = sentence_pairs(support_y.tolist(), cfg.sampling, cfg.iterations, g)
        batches = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(pairs), generator=g).tolist()
            batches += [[pairs[k] for k in order[i : i + cfg.batch_size]]
                        for i in range(0, len(pairs), cfg.batch_size)]
        if cfg.max_steps:
            batches = batches[: cfg.max_steps]
        model = copy.deepcopy(self.backbone).requires_grad_(True).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(len(batches), cfg.warmup))
        losses = []
        device = self.device
        gpus = [device.index or 0] if device.type == "cuda" else []
        # dropout drawn from the task's seed; the caller's random state is left as it was
        with torch.random.fork_rng(devices=gpus), torch.enable_grad():
            torch.manual_seed(cfg.seed)
            for step, batch in enumerate(batches):
                left = model(to_device(take(support_x, [i for i, _, _ in batch]), device))
                right = model(to_device(take(support_x, [j for _, j, _ in batch]), device))
                target = torch.tensor([t for _, _, t in batch], device=left.device)
                loss = F.mse_loss(F.cosine_similarity(left, right, dim=-1), target)
                value = loss.item()
                if not math.isfinite(value):
                    raise FewShotError(f"SetFit's contrastive loss is {value} at step {step} of "
                                       f"{len(batches)}; lower method.lr (now {cfg.lr}) or check the inputs")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
                losses.append(value)
        return model.requires_grad_(False).eval(), losses

    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> SetFitPredictor:
        if batch_len(support_x) != support_y.shape[0]:
            raise FewShotError(f"{batch_len(support_x)} support inputs but {support_y.shape[0]} labels")
        model, _ = self.tune_encoder(support_x, support_y)
        return SetFitPredictor(self, model, fit_classifier(embed(model, support_x), support_y, way, self.head_config))

    def restore(self, state: dict[str, torch.Tensor], way: int) -> SetFitPredictor:
        def build() -> SetFitPredictor:
            head = classifier_from_state(substate(state, "head."), way, self.head_config)
            return SetFitPredictor(self, copy.deepcopy(self.backbone).requires_grad_(False).eval(), head)

        return restored(build, state, way, self.name)
