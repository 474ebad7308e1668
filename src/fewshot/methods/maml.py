"""MAML (Finn et al. 2017): second-order, first-order, and Meta-SGD's learned per-parameter inner rates.

The inner loop is plain SGD on the support loss from the shared initialisation; the meta-loss is the query loss of
the adapted weights.

Two implementations give the same meta-gradients (to float tolerance; ``tests/test_maml_fast.py``):

* the fast path (default when the model offers the task-batched capability, :class:`fewshot.models.base.TaskBatched`,
  as Conv-4 does): ``task_chunk`` tasks at a time run as one network (Conv-4 groups its convolutions by task), each
  task with its own fast weights and its own batch-norm statistics; one backward per chunk. Memory is that of one
  chunk (times the inner steps).
* the reference (``reference=True``, and any other model): a plain loop over tasks, each task's graph freed by its
  own backward, so memory is that of one task.

The model must offer the functional forward of :class:`fewshot.models.base.Functional`.

Queries at test time (``adapt``'s predictor and ``predict``; training is the same either way), per ``transductive``:

* ``false`` (the default): each query is scored in a batch of its own, the support set followed by that query, so
  its batch statistics come from the support set and the query itself and its answer does not depend on the other
  queries (:func:`fewshot.models.base.each_query_with_support`; on the fast path every query is a task sharing the
  adapted weights, ``x [Q, N*K+1, ...]``).
* ``true``: all the queries of a task in one batch, batch statistics over the query batch, as Finn et al.'s code
  evaluates (and as the reproduction recipes say). Configs written before the option existed (the shipped ``zoo/``
  checkpoints) read as ``true`` (:func:`fewshot.config.upgrade`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, accuracy, backward_query_loss, task_chunks
from fewshot.methods.fast_weights import FastWeights
from fewshot.models.base import TaskBatched, batches_tasks, each_query_with_support, require_functional


@dataclass
class MAMLConfig:
    inner_steps: int = 1
    """SGD steps on the support set during meta-training."""
    inner_lr: float = 0.4
    test_inner_steps: int = 10
    """Steps at evaluation (the paper uses more than at training)."""
    first_order: bool = False
    """Drop the second-order terms (FOMAML)."""
    learn_inner_lr: bool = False
    """Meta-SGD: learn one inner learning rate per parameter element, initialised to ``inner_lr``."""
    reference: bool = False
    """Use the plain per-task loop instead of the task-batched fast path (same results, slower)."""
    task_chunk: int = 8
    """Fast path: tasks per batched forward/backward (memory grows with it; 0 = the whole meta-batch)."""
    transductive: bool = False
    """Test time: score a task's queries in one batch (batch statistics over the query batch, as the paper's code;
    a query's answer then depends on the others) instead of each query with the support set alone."""

    def __post_init__(self) -> None:
        if self.inner_steps < 1 or self.test_inner_steps < 1:
            raise FewShotError(f"inner_steps and test_inner_steps must be >= 1, got {self.inner_steps}, "
                               f"{self.test_inner_steps}")
        if not self.inner_lr > 0:
            raise FewShotError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.task_chunk < 0:
            raise FewShotError(f"task_chunk must be >= 0, got {self.task_chunk}")


def inner_loop(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lrs: Sequence[torch.Tensor | float],
    create_graph: bool,
) -> list[torch.Tensor]:
    """``steps`` of SGD on ``cross_entropy(model(x, params), y)``; returns the adapted parameters."""
    fast = list(params)
    for _ in range(steps):
        loss = F.cross_entropy(model(x, fast), y)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, lr, g in zip(fast, lrs, grads, strict=True)]
    return fast


def inner_loop_tasks(
    model: TaskBatched,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lrs: Sequence[torch.Tensor | float],
    create_graph: bool,
) -> list[torch.Tensor]:
    """:func:`inner_loop` for ``T`` tasks at once: ``x`` is ``[T, B, ...]``, ``y`` is ``[T, B]``.

    Starts every task from the shared ``params`` and returns fast weights with a leading task dimension. The summed
    per-task losses give each task's own gradient, because task ``t`` only touches its slice of the weights.
    """
    tasks, batch = y.shape
    fast = [p.expand(tasks, *p.shape) for p in params]
    for _ in range(steps):
        logits = model.forward_tasks(x, fast)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, lr, g in zip(fast, lrs, grads, strict=True)]
    return fast


class MAML(Method):
    name = "maml"

    def __init__(self, model: nn.Module, config: MAMLConfig | None = None) -> None:
        super().__init__()
        require_functional(model, "MAML")
        self.model = model
        self.config = config or MAMLConfig()
        self.transductive = self.config.transductive
        self.inner_lrs: nn.ParameterList | None = None
        if self.config.learn_inner_lr:
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full_like(p, self.config.inner_lr)) for p in model.meta_parameters()]
            )

    def _lrs(self) -> Sequence[torch.Tensor | float]:
        if self.inner_lrs is not None:
            return list(self.inner_lrs)
        return [self.config.inner_lr] * len(self.model.meta_parameters())

    def fast_path(self, episode: Episode | None = None) -> bool:
        """Whether the task-batched path applies (the model offers it, tensor inputs, not ``reference``)."""
        if self.config.reference or not batches_tasks(self.model):
            return False
        return episode is None or isinstance(episode.support_x, torch.Tensor)

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        """The meta-gradient of a batch of tasks (second- or first-order), accumulated into ``.grad``."""
        if self.fast_path(episode):
            return self._meta_gradient_tasks(episode)
        return self.meta_gradient_reference(episode)

    def _meta_gradient_tasks(self, episode: Episode) -> dict[str, float]:
        params = self.model.meta_parameters()
        lrs = self._lrs()
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for part in task_chunks(tasks, self.config.task_chunk):
            fast = inner_loop_tasks(self.model, params, episode.support_x[part], episode.support_y[part],
                                    self.config.inner_steps, lrs, create_graph=not self.config.first_order)
            query_y = episode.query_y[part]
            logits = self.model.forward_tasks(episode.query_x[part], fast)
            loss, acc = backward_query_loss(logits, query_y, tasks)
            total_loss += loss
            total_acc += acc
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def meta_gradient_reference(self, episode: Episode) -> dict[str, float]:
        """The plain implementation: one task at a time (what the fast path is tested against)."""
        params = self.model.meta_parameters()
        lrs = self._lrs()
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            fast = inner_loop(self.model, params, episode.support_x[t], episode.support_y[t],
                              self.config.inner_steps, lrs, create_graph=not self.config.first_order)
            logits = self.model(episode.query_x[t], fast)
            loss = F.cross_entropy(logits, episode.query_y[t])
            (loss / tasks).backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, episode.query_y[t])
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> FastWeights:
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        with torch.enable_grad():
            fast = inner_loop(self.model, params, support_x, support_y, self.config.test_inner_steps, lrs, False)
        return FastWeights(self, [p.detach() for p in fast], support_x, self.transductive, self.fast_path())

    def restore(self, state: dict[str, torch.Tensor], way: int) -> FastWeights:
        return FastWeights.restore(self, state, way, self.transductive, self.fast_path())

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``, all tasks adapted at once on the fast path (same as :meth:`adapt` per task)."""
        if not self.fast_path(episode):
            return super().predict(episode)
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        out = []
        for part in task_chunks(episode.num_tasks, self.config.task_chunk):
            with torch.enable_grad():
                fast = inner_loop_tasks(self.model, params, episode.support_x[part], episode.support_y[part],
                                        self.config.test_inner_steps, lrs, create_graph=False)
            with torch.no_grad():
                fast = [p.detach() for p in fast]
                if self.transductive:
                    out.append(self.model.forward_tasks(episode.query_x[part], fast))
                    continue
                for i, t in enumerate(range(part.start, part.stop)):
                    out.append(each_query_with_support(self.model, [p[i] for p in fast], episode.support_x[t],
                                                       episode.query_x[t]).unsqueeze(0))
        return torch.cat(out)
