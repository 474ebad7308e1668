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

The output layer a task starts from, per ``head_init`` (so a model trained 5-way adapts to tasks of any way,
``eval.way`` or ``fewshot classify``'s classes; the model keeps the trained way's head, ``Method.builds_head``):

* ``trained`` (the default): the meta-learned head when the task's way is the trained way (the paper); for another
  way, what :data:`fewshot.methods.heads.OTHER_WAY_INIT` says (``prototypes``, the better of the two on Omniglot's
  20-way tasks: ``results/omniglot.md``).
* ``zeros``: a zero ``[way, D]`` head (the first inner step then moves the head alone).
* ``prototypes``: Proto-MAML's head (Triantafillou et al. 2020): ``w_c = 2 p_c``, ``b_c = -‖p_c‖²`` for the means
  ``p_c`` of the support features under the current body. In training the meta-gradient flows through the prototypes
  into the body (in first order too: only the inner gradients are cut); the trained head is then unused.

With Meta-SGD, the head's learned rates serve the rows of a built head when the way is the trained one; for another
way each row takes the mean of the trained rows (the rows are interchangeable: classes get labels at random in
every training task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, Predictor, accuracy, backward_query_loss, task_chunks
from fewshot.methods.heads import (
    check_every_class,
    check_head_init,
    extend_rows,
    prototype_head_params,
    resolve_head_init,
    trainable,
    zero_head,
)
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
    head_init: str = "trained"
    """The output layer a task starts from: ``trained`` (the meta-learned one; for a task of another way,
    ``prototypes``), ``zeros``, or ``prototypes`` (Proto-MAML: ``2·p_c``, ``-‖p_c‖²`` from the support features)."""

    def __post_init__(self) -> None:
        check_head_init(self.head_init)
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
    per_task_head: bool = False,
) -> list[torch.Tensor]:
    """:func:`inner_loop` for ``T`` tasks at once: ``x`` is ``[T, B, ...]``, ``y`` is ``[T, B]``.

    Starts every task from the shared ``params`` and returns fast weights with a leading task dimension. The summed
    per-task losses give each task's own gradient, because task ``t`` only touches its slice of the weights.
    ``per_task_head``: the last two of ``params`` (the head) already have the task dimension (one head per task).
    """
    tasks, batch = y.shape
    shared = len(params) - 2 if per_task_head else len(params)
    fast = [p.expand(tasks, *p.shape) if i < shared else p for i, p in enumerate(params)]
    for _ in range(steps):
        logits = model.forward_tasks(x, fast)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, lr, g in zip(fast, lrs, grads, strict=True)]
    return fast


class MAML(Method):
    name = "maml"
    builds_head = True

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

    def task_start(
        self, params: Sequence[torch.Tensor], lrs: Sequence[torch.Tensor | float], x: torch.Tensor,
        y: torch.Tensor, way: int, batched: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | float], bool]:
        """The weights and inner rates a task of ``way`` classes starts from: ``params`` with the output layer
        ``head_init`` says (prototypes of the support ``x, y`` under ``params``' body, differentiably), the head's
        Meta-SGD rates extended to ``way`` rows. ``batched``: ``x [T, B, ...]``, and the built head is per task
        (the returned flag). The trained head returns ``params`` and ``lrs`` as they are."""
        plan = resolve_head_init(self.config.head_init, way, self.model)
        if plan == "trained":
            return list(params), list(lrs), False
        body = list(params[:-2])
        per_task = False
        if plan == "zeros":
            head = zero_head(params[-2:], way)
        else:
            check_every_class(y, way)
            if batched:
                feats = self.model.features_tasks(x, [p.expand(x.shape[0], *p.shape) for p in body])
            else:
                feats = self.model.features(x, body)
            head, per_task = prototype_head_params(feats, y, way), batched
            if torch.is_grad_enabled():
                # the inner loop differentiates the fast weights as separate inputs (the body with the head held
                # fixed): an alias keeps its gradient off the path through the prototypes to the body's tensors
                body = [p.view_as(p) for p in body]
        head_lrs = [extend_rows(lr, way) if isinstance(lr, torch.Tensor) else lr for lr in lrs[-2:]]
        return body + trainable(head), list(lrs[:-2]) + head_lrs, per_task

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
            start, part_lrs, per_task = self.task_start(params, lrs, episode.support_x[part],
                                                        episode.support_y[part], episode.way, batched=True)
            fast = inner_loop_tasks(self.model, start, episode.support_x[part], episode.support_y[part],
                                    self.config.inner_steps, part_lrs, create_graph=not self.config.first_order,
                                    per_task_head=per_task)
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
            start, task_lrs, _ = self.task_start(params, lrs, episode.support_x[t], episode.support_y[t],
                                                 episode.way)
            fast = inner_loop(self.model, start, episode.support_x[t], episode.support_y[t],
                              self.config.inner_steps, task_lrs, create_graph=not self.config.first_order)
            logits = self.model(episode.query_x[t], fast)
            loss = F.cross_entropy(logits, episode.query_y[t])
            (loss / tasks).backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, episode.query_y[t])
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """``test_inner_steps`` of SGD on the support set from the trained weights, the head per ``head_init``."""
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        with torch.no_grad():
            params, lrs, _ = self.task_start(params, lrs, support_x, support_y, way)
        params = trainable(params)
        with torch.enable_grad():
            fast = inner_loop(self.model, params, support_x, support_y, self.config.test_inner_steps, lrs, False)
        fast = [p.detach() for p in fast]
        if self.transductive:
            return lambda query_x: self.model(query_x, fast)
        batched = self.fast_path()
        return lambda query_x: each_query_with_support(self.model, fast, support_x, query_x, batched=batched)

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``, all tasks adapted at once on the fast path (same as :meth:`adapt` per task)."""
        if not self.fast_path(episode):
            return super().predict(episode)
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        out = []
        for part in task_chunks(episode.num_tasks, self.config.task_chunk):
            with torch.no_grad():
                start, part_lrs, per_task = self.task_start(params, lrs, episode.support_x[part],
                                                            episode.support_y[part], episode.way, batched=True)
            start = trainable(start)
            with torch.enable_grad():
                fast = inner_loop_tasks(self.model, start, episode.support_x[part], episode.support_y[part],
                                        self.config.test_inner_steps, part_lrs, create_graph=False,
                                        per_task_head=per_task)
            with torch.no_grad():
                fast = [p.detach() for p in fast]
                if self.transductive:
                    out.append(self.model.forward_tasks(episode.query_x[part], fast))
                    continue
                for i, t in enumerate(range(part.start, part.stop)):
                    out.append(each_query_with_support(self.model, [p[i] for p in fast], episode.support_x[t],
                                                       episode.query_x[t]).unsqueeze(0))
        return torch.cat(out)
