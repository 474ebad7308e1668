"""A batch of inputs is a tensor (images, feature vectors) or a Python list (sentences): index, count and move both
the same way, so methods never ask which one they hold. :class:`Tokens` is the third kind: sentences already
tokenized, what an exported text classifier takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def take(x: Any, index: torch.Tensor | Sequence[int]) -> Any:
    """Rows ``index`` of a batch: a tensor (``x[index]``) or a Python list (strings, say)."""
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(index, dtype=torch.long)]
    items = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    return [x[i] for i in items]


def batch_len(x: Any) -> int:
    """How many inputs a batch holds."""
    return x.shape[0] if isinstance(x, torch.Tensor) else len(x)


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor moved to ``device``; anything else (a list of strings, say) as it is."""
    return x.to(device) if isinstance(x, torch.Tensor) else x


@dataclass
class Tokens:
    """A batch of sentences already tokenized (``input_ids``, ``attention_mask``: ``[n, length]``), taken in place of
    a list of strings by a text model that can be exported (one with ``export_tokenizer()``, see
    :mod:`fewshot.models.base`): what an ONNX text classifier is traced with."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])
