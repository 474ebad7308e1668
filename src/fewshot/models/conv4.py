"""Conv-4: four 3x3 conv blocks (64 filters, batch norm, ReLU), the standard few-shot backbone.

Variants:

* ``"strided"`` — Finn et al. (2017) for Omniglot: stride-2 convolutions, no pooling; features are the spatial mean
  (``pool="mean"``, as MAML) or the flattened map (``pool="flatten"``, as Reptile's code).
* ``"maxpool"`` — Vinyals et al. / Snell et al.: stride-1 convolutions each followed by 2x2 max-pooling.

It offers every backbone contract of :mod:`fewshot.models.base` (functional, task-batched, blocks).
The forward pass is functional: ``model(x, params)`` runs with any list of tensors shaped like
``model.meta_parameters()``, which is how MAML's adapted (fast) weights are used without copying modules.
Batch norm uses the batch's own statistics (per task, as MAML does) unless ``running_stats=True``, in which case it
keeps running averages and uses them in ``eval()`` mode (as ProtoNet does).

``forward_tasks(x, params)`` runs many tasks at once, each with its own weights (MAML's fast path): the tasks are
folded into the channels and every convolution is grouped by task, so batch norm's per-channel batch statistics are
exactly the per-task statistics of running ``forward`` task by task.

``per_step_norm(copies, weights, statistics)`` (MAML++'s BNWB and BNRS, :class:`fewshot.models.base.PerStepNorm`)
turns each batch norm's scale and shift into ``[copies, 64]`` tensors (in place of the ``[64]`` ones, same names in
the state dict) and/or gives it ``[copies, 64]`` running mean and variance; the forwards then take ``step``, the
number of inner updates the weights have had, and use copy ``min(step, copies - 1)`` (``None``: the last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError
from fewshot.models.base import batch_norm

VARIANTS = ("strided", "maxpool")
POOLS = ("mean", "flatten")


class Conv4(nn.Module):
    def __init__(
        self,
        out_features: int | None = 5,
        in_channels: int = 1,
        hidden: int = 64,
        variant: str = "strided",
        pool: str = "mean",
        image_size: int = 28,
        running_stats: bool = False,
        blocks: int = 4,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Conv-4 variant {variant!r}; choose one of {VARIANTS}")
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS}")
        self.variant, self.pool, self.running_stats = variant, pool, running_stats
        self.in_channels = in_channels
        self.step_copies = 0
        """Batch-norm copies per inner step (0: none; see :meth:`per_step_norm`)."""
        self.step_weights = self.step_statistics = False
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels, side = in_channels, image_size
        for _ in range(blocks):
            conv = nn.Conv2d(channels, hidden, 3, stride=2 if variant == "strided" else 1, padding=1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            self.norms.append(nn.BatchNorm2d(hidden, track_running_stats=running_stats))
            channels, side = hidden, (side + 1) // 2 if variant == "strided" else side // 2
        self.feature_dim = hidden if pool == "mean" else hidden * side * side
        self.head: nn.Linear | None = None
        if out_features is not None:
            self.head = nn.Linear(self.feature_dim, out_features)
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def batches_tasks(self) -> bool:
        """The task-batched passes apply with per-task batch statistics only (not with running statistics)."""
        return not self.running_stats and not self.step_statistics

    @property
    def embeds_alone(self) -> bool:
        """In eval mode, each input's output is independent of its batch: running statistics, not per-step ones
        (which evaluation never normalises with)."""
        return self.running_stats and not self.step_statistics

    def per_step_norm(self, copies: int, weights: bool, statistics: bool) -> None:
        """Keep ``copies`` copies of every batch norm's scale and shift (``weights``) and/or running statistics
        (``statistics``), one per inner step; each copy starts as the current values (statistics: mean 0, var 1)."""
        if self.step_copies:
            raise FewShotError("Conv-4's per-step batch norm is already switched on")
        if copies < 1 or not (weights or statistics):
            raise FewShotError(f"per-step batch norm needs copies >= 1 and weights or statistics, got {copies}, "
                               f"{weights}, {statistics}")
        for norm in self.norms:
            like = norm.weight.detach()
            if weights:
                norm.weight = nn.Parameter(like.unsqueeze(0).repeat(copies, 1))
                norm.bias = nn.Parameter(norm.bias.detach().unsqueeze(0).repeat(copies, 1))
            if statistics:  # buffers of the same names (None when the model keeps no running statistics)
                norm.running_mean = torch.zeros(copies, like.shape[0], dtype=like.dtype, device=like.device)
                norm.running_var = torch.ones(copies, like.shape[0], dtype=like.dtype, device=like.device)
        self.step_copies, self.step_weights, self.step_statistics = copies, weights, statistics

    def _copy(self, step: int | None) -> int:
        """Which per-step copy ``step`` uses."""
        return self.step_copies - 1 if step is None else min(step, self.step_copies - 1)

    def meta_parameters(self) -> list[nn.Parameter]:
        """Parameters in the order the functional forward takes them: per block conv w, b, bn w, b; then head."""
        params: list[nn.Parameter] = []
        for conv, norm in zip(self.convs, self.norms, strict=True):
            params += [conv.weight, conv.bias, norm.weight, norm.bias]
        if self.head is not None:
            params += [self.head.weight, self.head.bias]
        return params

    @property
    def blocks(self) -> nn.ModuleList:
        """The conv blocks (conv + batch norm), input to output, as a fresh list over this model's own modules.

        It lets fine-tuning freeze all but the top ``k`` blocks (see :meth:`forward_blocks`); being built on demand,
        it adds nothing to the state dict.
        """
        return nn.ModuleList(nn.ModuleList([conv, norm]) for conv, norm in zip(self.convs, self.norms, strict=True))

    def forward_blocks(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None,
        params: Sequence[torch.Tensor] | None = None, step: int | None = None,
    ) -> torch.Tensor:
        """Run blocks ``start`` to ``stop`` (exclusive) on ``x``; to the last block, the pooled features follow.
        ``step``: the inner step whose batch-norm copy to use (with :meth:`per_step_norm`)."""
        if params is None:
            params = self.meta_parameters()
        stop = len(self.convs) if stop is None else stop
        if start == 0 and x.dim() == 3:
            x = x.unsqueeze(1)
        stride = 2 if self.variant == "strided" else 1
        for i in range(start, stop):
            norm = self.norms[i]
            w, b, gamma, beta = params[4 * i : 4 * i + 4]
            x = F.conv2d(x, w, b, stride=stride, padding=1)
            mean, var = (norm.running_mean, norm.running_var) if self.running_stats else (None, None)
            if self.step_copies:
                row = self._copy(step)
                if self.step_weights:
                    gamma, beta = gamma[row], beta[row]
                if self.step_statistics:  # never used to normalise (MAML++'s code): training updates the views in
                    # place; eval mode passes none, so it normalises by the batch and leaves them as they are
                    mean, var = (norm.running_mean[row], norm.running_var[row]) if self.training else (None, None)
            use_running = mean is not None and not self.training
            x = batch_norm(x, mean, var, gamma, beta, training=not use_running, momentum=norm.momentum, eps=norm.eps)
            x = F.relu(x)
            if self.variant == "maxpool":
                x = F.max_pool2d(x, 2)
        if stop < len(self.convs):
            return x
        return x.mean(dim=(2, 3)) if self.pool == "mean" else x.flatten(1)

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None,
                 step: int | None = None) -> torch.Tensor:
        return self.forward_blocks(x, params=params, step=step)

    def features_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor], step: int | None = None) -> torch.Tensor:
        """Features ``[T, B, feature_dim]`` of ``T`` tasks, task ``t`` computed with ``params[i][t]``.

        ``x`` is ``[T, B, C, H, W]`` (or ``[T, B, H, W]`` for one channel); each tensor of ``params`` has a leading
        task dimension (``p.expand(T, *p.shape)`` of shared weights is fine). Batch statistics are per task; running
        statistics are not supported here (use :meth:`features` task by task).
        """
        if self.running_stats or self.step_statistics:
            raise ValueError("features_tasks needs running_stats=False (per-task batch statistics only)")
        if x.dim() == 4:
            x = x.unsqueeze(2)
        tasks, batch = x.shape[:2]
        # [T, B, C, H, W] -> [B, T*C, H, W]: channel block t belongs to task t
        h = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
        stride = 2 if self.variant == "strided" else 1
        for i, norm in enumerate(self.norms):
            w, b, gamma, beta = params[4 * i : 4 * i + 4]
            if self.step_weights:
                gamma, beta = gamma[:, self._copy(step)], beta[:, self._copy(step)]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride=stride, padding=1, groups=tasks)
            h = F.batch_norm(h, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=norm.eps)
            h = F.relu(h)
            if self.variant == "maxpool":
                h = F.max_pool2d(h, 2)
        h = h.mean(dim=(2, 3)) if self.pool == "mean" else h.flatten(2)
        return h.reshape(batch, tasks, -1).transpose(0, 1)

    def forward_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor], step: int | None = None) -> torch.Tensor:
        """Logits ``[T, B, out]`` of ``T`` tasks at once (features without a head), see :meth:`features_tasks`."""
        h = self.features_tasks(x, params, step)
        if self.head is None:
            return h
        return torch.baddbmm(params[-1].unsqueeze(1), h, params[-2].transpose(1, 2))

    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None,
                step: int | None = None) -> torch.Tensor:
        if params is None:
            params = self.meta_parameters()
        h = self.features(x, params, step)
        if self.head is None:
            return h
        return F.linear(h, params[-2], params[-1])


@dataclass
class Conv4Config:
    hidden: int = 64
    variant: str = "strided"
    pool: str = "mean"
    image_size: int = 28
    in_channels: int = 1
    running_stats: bool = False
    """Keep running batch-norm statistics and use them in eval mode (ProtoNet); else per-batch statistics (MAML)."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise FewShotError(f"unknown Conv-4 variant {self.variant!r}; choose one of {VARIANTS}")
        if self.pool not in POOLS:
            raise FewShotError(f"unknown pooling {self.pool!r}; choose one of {POOLS}")
        for name, low, high in (("hidden", 1, 1024), ("image_size", 8, 512), ("in_channels", 1, 4)):
            if not low <= getattr(self, name) <= high:
                raise FewShotError(f"model.{name} must be in {low} .. {high}, got {getattr(self, name)}")


def build(options: Conv4Config, out_features: int | None) -> Conv4:
    """Registry builder (see :mod:`fewshot.registry`)."""
    return Conv4(out_features, options.in_channels, options.hidden, options.variant, options.pool,
                 options.image_size, options.running_stats)
