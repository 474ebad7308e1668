"""Non-episodic kinds of run for the transfer methods (``finetune``, ``features``).

* ``supervised`` — Chen et al. (2019)'s "Baseline": ordinary supervised training of the backbone plus a linear
  classifier over *all* meta-training classes (cross-entropy on minibatches of ``train.batch_size`` examples drawn
  uniformly from the training split). At validation and test time that classifier is dropped and the method's own
  per-task adaptation (fine-tuning or a new classifier on frozen features) runs on the fixed episodes.
* ``pretrained`` — nothing is trained: the backbone comes pretrained (e.g. ImageNet EfficientNet-Lite0). Each
  recipe sets ``train.iterations: 0``, so ``fewshot train`` only writes a run folder and scores the
  fixed test episodes, and ``fewshot eval`` re-scores it.

Both reuse the episodic experiment's validation and test protocol, so the numbers are comparable with the
meta-learning methods' on identical tasks.
"""

from __future__ import annotations

import torch

from fewshot.config import RunConfig
from fewshot.data.batches import LabelledBatch, iteration_generator
from fewshot.engine.experiment import EpisodicExperiment


class SupervisedExperiment(EpisodicExperiment):
    """Pre-train the backbone by classification over all training classes; score by per-task adaptation."""

    batch_type = LabelledBatch

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        super().__init__(config, root)
        train = self.dataset("train")
        self.num_classes = len(train.class_names)
        self.method.set_training_classes(self.num_classes)
        sizes = train.class_sizes
        self._class_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        self._offset = torch.cumsum(sizes, 0) - sizes

    def batch(self, iteration: int) -> LabelledBatch:
        """``train.batch_size`` examples drawn uniformly from the training split (deterministic per iteration)."""
        g = iteration_generator(self.config.train.seed, iteration)
        flat = torch.randint(len(self._class_of), (self.config.train.batch_size,), generator=g)
        classes = self._class_of[flat]
        examples = flat - self._offset[classes]
        return LabelledBatch(self.dataset("train").gather(classes, examples), classes)


class PretrainedExperiment(EpisodicExperiment):
    """A pretrained backbone used as it comes: nothing to train, scoring is the episodic protocol."""

    batch_type = type(None)

    def batch(self, iteration: int) -> None:
        return None
