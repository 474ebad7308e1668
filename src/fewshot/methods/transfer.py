"""The base of the transfer methods (feature extraction, fine-tuning, SetFit): a backbone (inputs -> features) and a
new classifier per task, plus ordinary supervised pre-training of the backbone (Chen et al. 2019's "Baseline": a
linear classifier over all meta-training classes on top of it), which the ``supervised`` kind runs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fewshot.data.batches import LabelledBatch
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, accuracy
from fewshot.models.base import feature_dim


class TransferMethod(Method):
    """A backbone and a per-task classifier; trains (if at all) by classification over all training classes."""

    needs_head = False
    whole_batch_statistics = True
    trains_on = (LabelledBatch,)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model
        self.pretrain_head: nn.Linear | None = None

    def feature_dim(self) -> int:
        return feature_dim(self.backbone)

    def set_training_classes(self, num_classes: int) -> None:
        """Add the linear classifier over all ``num_classes`` training classes (Baseline pre-training)."""
        if num_classes < 2:
            raise FewShotError(f"supervised pre-training needs at least 2 classes, got {num_classes}")
        self.pretrain_head = nn.Linear(self.feature_dim(), num_classes)

    def training_gradient(self, batch: LabelledBatch) -> dict[str, float]:
        if self.pretrain_head is None:
            raise FewShotError(f"{self.name} is a transfer method: train it with kind 'supervised' (ordinary "
                               "training over all training classes) or use a pretrained backbone (kind 'pretrained')")
        logits = self.pretrain_head(self.backbone(batch.x))
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        return {"loss": loss.item(), "accuracy": accuracy(logits, batch.y)}
