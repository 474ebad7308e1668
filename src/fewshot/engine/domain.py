"""The ``domain_adaptation`` kind: labelled source + unlabelled target batches; scored on the target's test half.

Data come from a data set whose builder knows the splits ``source`` (all labelled source images), ``target_train``
(the target half used unlabelled by DANN, labelled by the oracle / few-shot variant) and ``target_test`` (never
trained on; every method is scored there). Each step draws ``train.batch_size`` source and ``train.batch_size``
target images, plus up to ``train.batch_size`` of the labelled target examples (with replacement), all as a function
of the iteration, so runs resume exactly. The K labelled target examples per class are picked once per run seed.

The method keeps the :class:`~fewshot.methods.base.DomainClassifier` contract (its ``logits`` over the data set's
classes, ``num_classes``, ``target_shots``) and trains on :class:`~fewshot.data.batches.DomainBatch` batches.

``test`` reports the label classifier's accuracy on all target test images, with a binomial 95% interval
(``1.96 sqrt(a (1 - a) / n)``): ``episodes`` is 1 and ``query`` the number of test images. ``validate`` reports
source accuracy only (target labels must not pick checkpoints in unsupervised adaptation); the recipes switch
validation off so the last weights are scored.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fewshot.config import RunConfig
from fewshot.data.batches import DomainBatch, iteration_generator
from fewshot.engine.evaluate import EvalResult
from fewshot.engine.experiment import build_dataset, build_method, method_class
from fewshot.engine.records import EvalRecord
from fewshot.errors import FewShotError
from fewshot.methods.base import DomainClassifier
from fewshot.models.base import evaluating

SPLITS = ("source", "target_train", "target_test")


class DomainExperiment:
    """Source -> target adaptation (DANN, source-only, target oracle, few-shot target labels)."""

    budget_bound = "its batches carry the training progress iteration / train.iterations (DANN's lambda_p)"

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        self.config = config
        self.root = root
        method_class(config).check_trains_on(DomainBatch, config.experiment)
        self.method = build_method(config, None)
        if not isinstance(self.method, DomainClassifier):
            raise FewShotError(f"kind 'domain_adaptation' scores a classifier over the data set's classes; method "
                               f"{config.method.name!r} offers none (methods.base.DomainClassifier)")
        self._data: dict[str, Any] = {}
        source, target = self.dataset("source"), self.dataset("target_train")
        if len(source.class_names) != self.method.num_classes:
            raise FewShotError(f"the data have {len(source.class_names)} classes but method.num_classes is "
                               f"{self.method.num_classes}")
        self.labelled = self._pick_labelled(target, self.method.target_shots, config.train.seed)

    def dataset(self, split: str) -> Any:
        if split not in SPLITS:
            raise FewShotError(f"unknown split {split!r}; choose one of {SPLITS}")
        if split not in self._data:
            data = build_dataset(self.config, split, self.root)
            if not hasattr(data, "images") or not hasattr(data, "labels"):
                raise FewShotError(f"data set {self.config.data.name!r} has no images/labels for domain adaptation")
            self._data[split] = data
        return self._data[split]

    @staticmethod
    def _pick_labelled(target: Any, shots: int, seed: int) -> torch.Tensor:
        """Indices of the labelled target examples: K per class (fixed per seed), all (-1) or none (0)."""
        if shots == -1:
            return torch.arange(len(target.labels))
        g = torch.Generator().manual_seed(10_007 + seed)
        picked = []
        for c in range(len(target.class_names)):
            members = torch.nonzero(target.labels == c).flatten()
            if shots > len(members):
                raise FewShotError(f"target_shots={shots} but class {target.class_names[c]} has only "
                                   f"{len(members)} target training examples")
            picked.append(members[torch.randperm(len(members), generator=g)[:shots]])
        return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)

    def batch(self, iteration: int) -> DomainBatch:
        t = self.config.train
        g = iteration_generator(t.seed, iteration)
        source, target = self.dataset("source"), self.dataset("target_train")
        s = torch.randint(len(source.labels), (t.batch_size,), generator=g)
        u = torch.randint(len(target.labels), (t.batch_size,), generator=g)
        if len(self.labelled):
            pick = self.labelled[torch.randint(len(self.labelled), (min(t.batch_size, len(self.labelled)),),
                                               generator=g)]
        else:
            pick = torch.zeros(0, dtype=torch.long)
        progress = iteration / max(1, t.iterations)
        return DomainBatch(source.images[s], source.labels[s], target.images[u], target.images[pick],
                           target.labels[pick], progress)

    def accuracy(self, split: str) -> EvalResult:
        data = self.dataset(split)
        with evaluating(self.method), torch.no_grad():
            device = self.method.device
            correct = torch.cat([self.method.logits(data.images[i : i + 512].to(device)).argmax(-1).cpu()
                                 == data.labels[i : i + 512] for i in range(0, len(data.labels), 512)])
        n = correct.numel()
        acc = correct.float().mean().item()
        return EvalResult(acc, 1.96 * math.sqrt(acc * (1 - acc) / n), 1, len(data.class_names),
                          self.method.target_shots, n, [acc])

    def validate(self, episodes: int) -> EvalResult:
        """Source accuracy (no target labels are used to pick checkpoints)."""
        return self.accuracy("source")

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: EvalRecord | None = None) -> EvalResult:
        """Accuracy on the target test half (``split``: ``test``/``target_test``, or ``source``, ``target_train``);
        one pass, nothing to record (``record`` is ignored)."""
        split = {None: "target_test", "test": "target_test", "val": "target_train", "train": "source"}.get(split,
                                                                                                         split)
        return self.accuracy(split)
