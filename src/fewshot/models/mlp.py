"""A multi-layer perceptron over feature vectors: ``in_features -> hidden[0] -> ... -> hidden[-1]`` features.

Each hidden layer is a linear map, then batch norm (``batch_norm: true``), the activation, then dropout
(``dropout > 0``, in training only). Inputs with more than two dimensions are flattened (``[batch, 16, 16]`` images
become 256 numbers). ``hidden: []`` gives the inputs themselves as features (a linear classifier with a head).

It offers every backbone contract of :mod:`fewshot.models.base`: the functional forward (``meta_parameters()`` per
layer weight, bias, then batch norm's weight and bias; the head's weight and bias last), the task-batched passes
(MAML's fast path; per-task batch statistics, so not with ``running_stats``) and ``blocks`` (one per hidden layer, for
top-k fine-tuning). Batch norm uses each batch's own statistics (as MAML does) unless ``running_stats: true``, in
which case it keeps running averages and uses them in ``eval()`` mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError
from fewshot.models.base import batch_norm

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256), out_features: int | None = None,
                 dropout: float = 0.0, batch_norm: bool = True, running_stats: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.in_features, self.dropout, self.activation = in_features, dropout, activation
        self.use_batch_norm, self.running_stats = batch_norm, running_stats and batch_norm
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = in_features
        for size in hidden:
            self.linears.append(nn.Linear(width, size))
            if batch_norm:
                self.norms.append(nn.BatchNorm1d(size, track_running_stats=self.running_stats))
            width = size
        self.feature_dim = width
        self.head: nn.Linear | None = nn.Linear(width, out_features) if out_features is not None else None
        self._per_layer = 4 if batch_norm else 2

    @property
    def batches_tasks(self) -> bool:
        """The task-batched passes apply with per-task batch statistics only (not with running statistics)."""
        return not self.running_stats

    @property
    def blocks(self) -> nn.ModuleList:
        """One block per hidden layer (linear, and its batch norm), input to output; built on demand."""
        if self.use_batch_norm:
            return nn.ModuleList(nn.ModuleList([lin, norm]) for lin, norm in zip(self.linears, self.norms,
                                                                                 strict=True))
        return nn.ModuleList(nn.ModuleList([lin]) for lin in self.linears)

    def meta_parameters(self) -> list[nn.Parameter]:
        """Per layer: linear weight, bias, (batch norm weight, bias); then the head's weight and bias."""
        params: list[nn.Parameter] = []
        for i, lin in enumerate(self.linears):
            params += [lin.weight, lin.bias]
            if self.use_batch_norm:
                params += [self.norms[i].weight, self.norms[i].bias]
        if self.head is not None:
            params += [self.head.weight, self.head.bias]
        return params

    def _flat(self, x: torch.Tensor, dims: int) -> torch.Tensor:
        if x.dim() > dims:
            x = x.flatten(dims - 1)
        if x.dim() != dims or x.shape[-1] != self.in_features:
            raise FewShotError(f"the MLP takes {self.in_features} numbers per example (model.in_features) but got "
                               f"inputs of shape {tuple(x.shape)}")
        return x

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None,
                       params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden layers ``start`` to ``stop`` (exclusive) on ``x``."""
        if params is None:
            params = self.meta_parameters()
        stop = len(self.linears) if stop is None else stop
        h = self._flat(x, 2) if start == 0 else x
        act, k = ACTIVATIONS[self.activation], self._per_layer
        for i in range(start, stop):
            h = F.linear(h, params[k * i], params[k * i + 1])
            if self.use_batch_norm:
                norm = self.norms[i]
                use_running = self.running_stats and not self.training
                h = batch_norm(h, norm.running_mean if self.running_stats else None,
                               norm.running_var if self.running_stats else None, params[k * i + 2],
                               params[k * i + 3], training=not use_running, momentum=norm.momentum, eps=norm.eps)
            h = act(h)
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, training=self.training)
        return h

    @property
    def embeds_alone(self) -> bool:
        """In eval mode, each input's output is independent of its batch: no batch norm, or running statistics."""
        return not self.use_batch_norm or self.running_stats

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward_blocks(x, params=params)

    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if params is None:
            params = self.meta_parameters()
        h = self.features(x, params)
        return h if self.head is None else F.linear(h, params[-2], params[-1])

    def features_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features ``[T, B, feature_dim]`` of ``T`` tasks, task ``t`` computed with ``params[i][t]`` (per-task batch
        statistics)."""
        if self.running_stats:
            raise ValueError("features_tasks needs running_stats=False (per-task batch statistics only)")
        h = self._flat(x, 3)
        tasks, batch = h.shape[:2]
        act, k = ACTIVATIONS[self.activation], self._per_layer
        for i in range(len(self.linears)):
            w, b = params[k * i], params[k * i + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if self.use_batch_norm:
                gamma, beta = params[k * i + 2], params[k * i + 3]
                # [T, B, H] -> [B, T*H]: batch statistics per (task, unit), as task-by-task forward passes
                flat = h.transpose(0, 1).reshape(batch, -1)
                flat = F.batch_norm(flat, None, None, gamma.reshape(-1), beta.reshape(-1), training=True,
                                    eps=self.norms[i].eps)
                h = flat.reshape(batch, tasks, -1).transpose(0, 1)
            h = act(h)
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, training=self.training)
        return h

    def forward_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[T, B, out]`` of ``T`` tasks at once (features without a head), see :meth:`features_tasks`."""
        h = self.features_tasks(x, params)
        if self.head is None:
            return h
        return torch.baddbmm(params[-1].unsqueeze(1), h, params[-2].transpose(1, 2))


@dataclass
class MLPConfig:
    in_features: int = 0
    """Numbers per example (the data's feature dimension; 256 for 16x16 images, which are flattened)."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the hidden layers, input to output; the last is the feature size (``[]``: the inputs)."""
    dropout: float = 0.0
    batch_norm: bool = True
    running_stats: bool = False
    """Keep running batch-norm statistics and use them in eval mode (ProtoNet, DANN); else per-batch (MAML)."""
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.in_features < 1:
            raise FewShotError(f"model.in_features must be the data's number of features (>= 1), got "
                               f"{self.in_features}")
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise FewShotError(f"model.hidden must be a list of layer widths >= 1, got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise FewShotError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise FewShotError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.running_stats and not self.batch_norm:
            raise FewShotError("model.running_stats needs model.batch_norm: true")


def build(options: MLPConfig, out_features: int | None) -> MLP:
    """Registry builder (see :mod:`fewshot.registry`)."""
    return MLP(options.in_features, options.hidden, out_features, options.dropout, options.batch_norm,
               options.running_stats, options.activation)
