"""MetaOptNet with a differentiable ridge-regression head (Lee et al. 2019, "Meta-Learning with Differentiable
Convex Optimization"); the ridge head is R2-D2's (Bertinetto et al. 2019, "Meta-learning with differentiable
closed-form solvers").

For each task, the support features ``X [n, d]`` (``n = N*K``) and one-hot targets ``Y [n, N]`` give the ridge
solution ``W = argmin ||X W - Y||^2 + lambda ||W||^2``, in closed form

* dual (Woodbury): ``W = X^T (X X^T + lambda I_n)^-1 Y`` -- an ``n x n`` solve, cheap when ``n <= d``;
* primal: ``W = (X^T X + lambda I_d)^-1 X^T Y`` -- a ``d x d`` solve, cheaper when ``n > d`` (Conv-4 on Omniglot has
  ``d = 64``, so 60-way training episodes with 5 shots, ``n = 300``, solve the primal).

Both are the same ``W``; ``solver: auto`` picks the smaller system (as R2-D2's code does), ``dual``/``primal`` force
one. All tasks of a batch are solved at once with ``torch.linalg.solve``. Query logits are ``alpha * (X_q W) + beta``
with a learned scale ``alpha`` and bias ``beta`` (R2-D2's "adjust" layer), and ``lambda`` is learned too,
parameterised as ``log lambda`` so that it stays positive. Everything is differentiable, so one backward pass of the
query cross-entropy reaches the body and ``alpha``, ``beta``, ``lambda``, which the engine's optimizer updates.

Initial values: ``lambda = 50`` (R2-D2's configuration file, ``base_learner.init_lambda: 50``, and MetaOptNet's
ridge head, ``l2_regularizer_lambda=50.0``), ``alpha = 10`` (R2-D2's Omniglot scripts, ``init_adj_scale 10``; its
code default, ``1e-4``, is for its miniImageNet/CIFAR runs) and ``beta = 0`` (R2-D2's ``init_bias=0``).

Differences from the papers' code, on purpose: R2-D2 divides ``X`` and ``Y`` by ``sqrt(n)`` (the same as using
``n * lambda`` here) and appends a column of ones to ``X`` (a ridge-regularised per-class intercept); this module
solves exactly the formula above. ``beta`` adds the same number to every class's logit, which softmax cross-entropy
ignores: its gradient is zero (up to rounding), so learning it changes nothing -- it is kept, as in R2-D2, for
completeness, and ``learn_bias: false`` freezes it.

The body is any :class:`fewshot.models.base.Backbone` built without an output layer (``needs_head = False``). With
running batch-norm statistics (Conv-4 ``running_stats: true``, as for ProtoNet) each query's answer in eval mode
depends only on the support set and that query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted, Method, accuracy, restored

SOLVERS = ("auto", "dual", "primal")


@dataclass
class MetaOptNetConfig:
    init_lambda: float = 50.0
    """Initial ridge regularisation ``lambda`` (> 0)."""
    init_scale: float = 10.0
    """Initial logit scale ``alpha`` (> 0)."""
    init_bias: float = 0.0
    """Initial logit bias ``beta``."""
    learn_lambda: bool = True
    learn_scale: bool = True
    learn_bias: bool = True
    solver: str = "auto"
    """``dual`` (``n x n`` Woodbury solve), ``primal`` (``d x d``) or ``auto`` (the smaller)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.init_lambda, (int, float)) and math.isfinite(self.init_lambda)
                and self.init_lambda > 0):
            raise FewShotError(f"method.init_lambda must be a finite number > 0, got {self.init_lambda!r}")
        if not (isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale) and self.init_scale > 0):
            raise FewShotError(f"method.init_scale must be a finite number > 0, got {self.init_scale!r}")
        if not (isinstance(self.init_bias, (int, float)) and math.isfinite(self.init_bias)):
            raise FewShotError(f"method.init_bias must be a finite number, got {self.init_bias!r}")
        for name in ("learn_lambda", "learn_scale", "learn_bias"):
            if not isinstance(getattr(self, name), bool):
                raise FewShotError(f"method.{name} must be true or false, got {getattr(self, name)!r}")
        if self.solver not in SOLVERS:
            raise FewShotError(f"method.solver must be one of {SOLVERS}, got {self.solver!r}")


def ridge_weights(support: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor | float,
                  solver: str = "auto") -> torch.Tensor:
    """``W [..., d, c]`` minimising ``||X W - Y||^2 + lam ||W||^2`` for ``X = support [..., n, d]`` and
    ``Y = targets [..., n, c]`` (leading dimensions are tasks, solved together)."""
    n, d = support.shape[-2:]
    xt = support.transpose(-1, -2)
    if solver == "dual" or (solver == "auto" and n <= d):
        gram = support @ xt + lam * torch.eye(n, dtype=support.dtype, device=support.device)
        return xt @ torch.linalg.solve(gram, targets)
    cov = xt @ support + lam * torch.eye(d, dtype=support.dtype, device=support.device)
    return torch.linalg.solve(cov, xt @ targets)


def ridge_logits(query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, way: int,
                 lam: torch.Tensor | float, scale: torch.Tensor | float, bias: torch.Tensor | float,
                 solver: str = "auto") -> torch.Tensor:
    """``scale * (query @ W) + bias`` with ``W`` the ridge solution on one-hot ``support_y``:
    ``query [..., q, d]``, ``support [..., n, d]``, ``support_y [..., n]`` -> logits ``[..., q, way]``."""
    targets = F.one_hot(support_y, way).to(support.dtype)
    return scale * (query @ ridge_weights(support, targets, lam, solver)) + bias


class RidgeHead(Adapted):
    """MetaOptNet adapted to a task: the ridge solution ``weights [dim, way]`` and the scale and bias it is read with,
    over the method's own backbone."""

    def __init__(self, method: MetaOptNet, weights: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(method, weights.shape[-1])
        self.tensors(weights=weights, scale=scale, bias=bias)

    def forward(self, query_x: Any) -> torch.Tensor:
        query = self.method._features(query_x)
        with torch.autocast(query.device.type, enabled=False):
            return self.scale * (query.to(self.weights.dtype) @ self.weights) + self.bias


class MetaOptNet(Method):
    name = "metaoptnet"
    needs_head = False
    whole_batch_statistics = True

    def __init__(self, model: nn.Module, config: MetaOptNetConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = c = config or MetaOptNetConfig()
        self.log_lambda = nn.Parameter(torch.tensor(math.log(c.init_lambda)), requires_grad=c.learn_lambda)
        self.scale = nn.Parameter(torch.tensor(float(c.init_scale)), requires_grad=c.learn_scale)
        self.bias = nn.Parameter(torch.tensor(float(c.init_bias)), requires_grad=c.learn_bias)

    @property
    def lam(self) -> torch.Tensor:
        """The ridge regularisation ``lambda = exp(log_lambda)``."""
        return self.log_lambda.exp()

    def _features(self, x: Any) -> torch.Tensor:
        z = self.model(x)
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            raise FewShotError(f"metaoptnet needs the backbone to return [batch, features], got "
                               f"{getattr(z, 'shape', type(z).__name__)}")
        # the solve runs in float32 at least (bf16 autocast would make the Gram matrix too coarse)
        return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z

    def _head(self, query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, way: int) -> torch.Tensor:
        with torch.autocast(support.device.type, enabled=False):
            return ridge_logits(query, support, support_y, way, self.lam.to(support.dtype),
                                self.scale.to(support.dtype), self.bias.to(support.dtype), self.config.solver)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]`` of every task of ``episode``: one forward over all tasks' support and query,
        then one batched solve (what :meth:`training_gradient` differentiates)."""
        tasks, ns, nq = episode.num_tasks, episode.support_y.shape[1], episode.query_y.shape[1]
        if isinstance(episode.support_x, torch.Tensor):
            x: Any = torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)])
        else:  # text: one list of inputs per task
            x = [s for task in episode.support_x for s in task] + [q for task in episode.query_x for q in task]
        z = self._features(x)
        support, query = z[: tasks * ns].view(tasks, ns, -1), z[tasks * ns :].view(tasks, nq, -1)
        return self._head(query, support, episode.support_y, episode.way)

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        logits = self.episode_logits(episode)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        loss.backward()
        return {"loss": loss.item(), "accuracy": accuracy(logits, episode.query_y), "lambda": self.lam.item(),
                "scale": self.scale.item(), "bias": self.bias.item()}

    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> RidgeHead:
        with torch.no_grad():
            support = self._features(support_x)
            targets = F.one_hot(support_y, way).to(support.dtype)
            with torch.autocast(support.device.type, enabled=False):
                weights = ridge_weights(support, targets, self.lam.to(support.dtype), self.config.solver)
            scale = self.scale.detach().clone().to(support.dtype)
            bias = self.bias.detach().clone().to(support.dtype)
        return RidgeHead(self, weights, scale, bias)

    def restore(self, state: dict[str, torch.Tensor], way: int) -> RidgeHead:
        return restored(lambda: RidgeHead(self, state["weights"], state["scale"], state["bias"]), state, way,
                        self.name)
