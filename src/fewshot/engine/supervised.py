"""Non-episodic kinds of run for the transfer methods (``finetune``, ``features``).

* ``supervised`` — Chen et al. (2019)'s "Baseline": ordinary supervised training of the backbone plus a linear
  classifier over *all* meta-training classes (cross-entropy on minibatches of ``train.meta_batch`` examples drawn
  uniformly from the training split). At validation and test time that classifier is dropped and the method's own
  per-task adaptation (fine-tuning or a new classifier on frozen features) runs on the fixed episodes.
* ``pretrained`` — nothing is trained: the backbone comes pretrained (e.g. ImageNet EfficientNet-Lite0). Each
  recipe sets ``train.iterations: 0``, so ``fewshot train`` only writes a run folder and scores the
  fixed test episodes, and ``fewshot eval`` re-scores it.

Both reuse the episodic experiment's validation and test protocol, so the numbers are comparable with the
meta-learning methods' on identical tasks.
"""

from __future__ import annotations

from typing import Any

import torch

from fewshot.config import RunConfig
from fewshot.engine.experiment import EpisodicExperiment
from fewshot.errors import FewShotError
from fewshot.methods.features import TransferMethod


class SupervisedExperiment(EpisodicExperiment):
    """Pre-train the backbone by classification over all training classes; score by per-task adaptation."""

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        super().__init__(config, root)
        if not isinstance(self.method, TransferMethod):
            raise FewShotError(f"kind 'supervised' trains a backbone for a transfer method (finetune, features); "
                               f"{config.method.name!r} is not one")
        train = self.dataset("train")
        self.num_classes = len(train.class_names)
        self.method.set_pretraining_classes(self.num_classes)
        sizes = train.class_sizes
        self._class_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        self._offset = torch.cumsum(sizes, 0) - sizes

    def batch(self, iteration: int) -> tuple[Any, torch.Tensor]:
        """``train.meta_batch`` examples drawn uniformly from the training split (deterministic per iteration)."""
        g = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + iteration)
        flat = torch.randint(len(self._class_of), (self.config.train.meta_batch,), generator=g)
        classes = self._class_of[flat]
        examples = flat - self._offset[classes]
        return self.dataset("train").gather(classes, examples), classes


class PretrainedExperiment(EpisodicExperiment):
    """A pretrained backbone used as it comes: training is a no-op, scoring is the episodic protocol."""

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        super().__init__(config, root)
        if not isinstance(self.method, TransferMethod):
            raise FewShotError(f"kind 'pretrained' needs a transfer method (finetune, features), got "
                               f"{config.method.name!r}")

    def batch(self, iteration: int) -> None:
        return None
