"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020).

MAML with the inner loop on the head alone: each task adapts only the output layer (the last two entries of
``model.meta_parameters()``, weight and bias) by SGD on its support loss, starting from the meta-learned head; the
body is frozen in the inner loop, so its features are computed once per task and reused at every inner step. The
outer loop (the engine's optimizer) updates the body and the head's initialisation with the query loss of the
adapted head, differentiating through the head updates (second order) unless ``first_order``.

Two implementations give the same meta-gradients (to float tolerance; ``tests/methods/test_anil.py``):

* the fast path (default when the model offers the task-batched capability, :class:`fewshot.models.base.TaskBatched`,
  as Conv-4 does): the body features of ``task_chunk`` tasks come from one ``features_tasks`` pass (each task its
  own batch statistics), then the head's inner loop runs for all of them at once as batched matrix products.
* the reference (``reference=True``, and any other model): a plain loop over tasks with ``model.features``.

The model must offer the functional forward of :class:`fewshot.models.base.Functional` and be built with an output
layer; its logits are taken to be ``F.linear(features(x, params), params[-2], params[-1])``.

Query features at test time (``adapt``'s predictor and ``predict``; training is the same either way), per
``transductive``: ``false`` (the default) computes each query's features in a batch of its own, the support set
followed by that query, so that its answer does not depend on the other queries
(:func:`fewshot.models.base.each_query_with_support`); ``true`` computes a task's query features in one batch, batch
statistics over the query batch, as MAML's protocol (and the reproduction recipes).

The head a task's inner loop starts from, per ``head_init`` (so a model trained 5-way adapts to tasks of any way;
the model keeps the trained way's head, ``Method.builds_head``): ``trained`` (the default) is the meta-learned head
when the task's way is the trained way, and for another way what :data:`fewshot.methods.heads.OTHER_WAY_INIT` says
(``prototypes``: measured better on Omniglot's 20-way tasks, and for ANIL at least as good on 3-way ones,
``results/omniglot.md``); ``zeros`` a zero head; ``rows`` the trained head's first ``way`` rows (fewer classes only);
``prototypes`` Proto-MAML's head, ``w_c = 2 p_c``, ``b_c = -‖p_c‖²`` for the means ``p_c`` of the support features
(the features the head is adapted on, so in second-order training the meta-gradient flows through the prototypes
into the body; first order computes the support features without gradient, so it does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted, Method, accuracy, backward_query_loss, restored, task_chunks
from fewshot.methods.heads import (
    OTHER_WAY_INIT,
    check_head_init,
    prototype_head_params,
    task_head_plan,
    trainable,
    trained_rows,
    zero_head,
)
from fewshot.models.base import batches_tasks, each_query_with_support, require_functional


@dataclass
class ANILConfig:
    """The defaults are MAML's 5-way Omniglot hyper-parameters (Finn et al. 2017, as this library's MAML recipes),
    which is what the paper does: it trains ANIL with MAML's settings unchanged, so that the two differ only in what
    the inner loop adapts. One step at lr 0.4 is enough for a head whose initialisation is meta-learned for it;
    evaluation takes more steps (10, as Finn's code). Head steps on frozen features cost almost nothing next to the
    body's pass, so more steps (``inner_steps``) are cheap when a setting needs them."""

    inner_steps: int = 1
    """SGD steps on the head during meta-training."""
    inner_lr: float = 0.4
    test_inner_steps: int = 10
    """Head steps at evaluation."""
    first_order: bool = False
    """Drop the terms through the head updates (the meta-gradient is the query gradient at the adapted head)."""
    reference: bool = False
    """Use the plain per-task loop instead of the task-batched fast path (same results, slower)."""
    task_chunk: int = 8
    """Fast path: tasks per batched pass (memory grows with it; 0 = the whole meta-batch)."""
    transductive: bool = False
    """Test time: compute a task's query features in one batch (batch statistics over the query batch, as MAML's
    protocol; a query's answer then depends on the others) instead of each query with the support set alone."""
    head_init: str = "trained"
    """The head a task starts from: ``trained`` (the meta-learned one; for a task of another way, ``prototypes``),
    ``zeros``, ``prototypes`` (Proto-MAML: ``2·p_c``, ``-‖p_c‖²`` from the support features), or ``rows`` (the
    trained head's first ``way`` rows; at most the trained way)."""

    def __post_init__(self) -> None:
        check_head_init(self.head_init)
        for name in ("inner_steps", "test_inner_steps"):
            if getattr(self, name) < 1:
                raise FewShotError(f"method.{name} must be >= 1, got {getattr(self, name)}")
        if not self.inner_lr > 0:
            raise FewShotError(f"method.inner_lr must be > 0, got {self.inner_lr}")
        if self.task_chunk < 0:
            raise FewShotError(f"method.task_chunk must be >= 0 (0: the whole meta-batch), got {self.task_chunk}")


def head_loop(
    features: torch.Tensor, y: torch.Tensor, head: Sequence[torch.Tensor], steps: int, lr: float,
    create_graph: bool,
) -> list[torch.Tensor]:
    """``steps`` of SGD on ``cross_entropy(F.linear(features, w, b), y)`` for one task; returns ``[w, b]`` adapted.

    ``features`` is ``[B, D]``, ``head`` is ``[w [N, D], b [N]]``.
    """
    fast = list(head)
    for _ in range(steps):
        loss = F.cross_entropy(F.linear(features, *fast), y)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
    return fast


def linear_tasks(features: torch.Tensor, head: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits ``[T, B, N]`` of features ``[T, B, D]`` through per-task heads ``w [T, N, D]``, ``b [T, N]``."""
    w, b = head
    return torch.baddbmm(b.unsqueeze(1), features, w.transpose(1, 2))


def head_loop_tasks(
    features: torch.Tensor, y: torch.Tensor, head: Sequence[torch.Tensor], steps: int, lr: float,
    create_graph: bool, per_task: bool = False,
) -> list[torch.Tensor]:
    """:func:`head_loop` for ``T`` tasks at once: ``features`` is ``[T, B, D]``, ``y`` is ``[T, B]``.

    Every task starts from the shared ``head`` (``per_task``: ``head`` already has the task dimension, one per task);
    the adapted heads have a leading task dimension. The summed per-task losses give each task its own gradient,
    since task ``t`` only touches its slice of the heads.
    """
    tasks, batch = y.shape
    fast = list(head) if per_task else [p.expand(tasks, *p.shape) for p in head]
    for _ in range(steps):
        logits = linear_tasks(features, fast)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
    return fast


class AdaptedHead(Adapted):
    """ANIL adapted to a task: the output layer's adapted ``weight`` and ``bias`` over the method's own body, and the
    support inputs (``support_x``) each query is scored beside when not ``transductive``."""

    def __init__(self, method: ANIL, weight: torch.Tensor, bias: torch.Tensor, support_x: torch.Tensor,
                 transductive: bool, batched: bool) -> None:
        super().__init__(method, weight.shape[0])
        self.tensors(weight=weight, bias=bias, support_x=support_x)
        self.transductive, self.batched = transductive, batched

    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        method = self.method
        body, _ = method.split([p.detach() for p in method.model.meta_parameters()])
        if self.transductive:
            return F.linear(method.model.features(query_x, body), self.weight, self.bias)
        return F.linear(each_query_with_support(method.model, body, self.support_x, query_x, features=True,
                                                batched=self.batched), self.weight, self.bias)


class ANIL(Method):
    name = "anil"
    needs_head = True
    builds_head = True

    def __init__(self, model: nn.Module, config: ANILConfig | None = None) -> None:
        super().__init__()
        require_functional(model, "ANIL")
        if getattr(model, "head", None) is None:
            raise FewShotError(f"ANIL adapts the model's output layer, but this {type(model).__name__} was built "
                               "without one (out_features=None)")
        self.model = model
        self.config = config or ANILConfig()
        self.transductive = self.config.transductive

    def split(self, params: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(body, head)`` of a parameter list in ``meta_parameters()`` order: the head is the last two."""
        return list(params[:-2]), list(params[-2:])

    def task_head(self, head: Sequence[torch.Tensor], support: torch.Tensor, y: torch.Tensor,
                  way: int) -> tuple[list[torch.Tensor], bool]:
        """The head a task of ``way`` classes starts from, per ``head_init``, and whether it is one per task: the
        trained ``head``, zeros, or the prototypes of the support features ``support [(T,) B, D]`` by ``y``."""
        plan = task_head_plan(self.config.head_init, way, self.model, y, fewer=OTHER_WAY_INIT)
        if plan == "trained":
            return list(head), False
        if plan == "rows":
            return trainable(trained_rows(head, way)), False
        if plan == "zeros":
            return trainable(zero_head(head, way)), False
        return trainable(prototype_head_params(support, y, way)), support.dim() == 3

    def fast_path(self, episode: Episode | None = None) -> bool:
        """Whether the task-batched path applies (the model offers it, tensor inputs, not ``reference``)."""
        if self.config.reference or not batches_tasks(self.model):
            return False
        return episode is None or isinstance(episode.support_x, torch.Tensor)

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        """The meta-gradient of a batch of tasks (body and head initialisation), accumulated into ``.grad``."""
        if self.fast_path(episode):
            return self._meta_gradient_tasks(episode)
        return self.meta_gradient_reference(episode)

    def _meta_gradient_tasks(self, episode: Episode) -> dict[str, float]:
        body, head = self.split(self.model.meta_parameters())
        first_order = self.config.first_order
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for part in task_chunks(tasks, self.config.task_chunk):
            query_y = episode.query_y[part]
            size = query_y.shape[0]
            body_tasks = [p.expand(size, *p.shape) for p in body]
            with torch.set_grad_enabled(not first_order and torch.is_grad_enabled()):
                support = self.model.features_tasks(episode.support_x[part], body_tasks)
            start, per_task = self.task_head(head, support, episode.support_y[part], episode.way)
            fast = head_loop_tasks(support, episode.support_y[part], start, self.config.inner_steps,
                                   self.config.inner_lr, create_graph=not first_order, per_task=per_task)
            logits = linear_tasks(self.model.features_tasks(episode.query_x[part], body_tasks), fast)
            loss, acc = backward_query_loss(logits, query_y, tasks)
            total_loss += loss
            total_acc += acc
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def meta_gradient_reference(self, episode: Episode) -> dict[str, float]:
        """The plain implementation: one task at a time (what the fast path is tested against)."""
        body, head = self.split(self.model.meta_parameters())
        first_order = self.config.first_order
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            with torch.set_grad_enabled(not first_order and torch.is_grad_enabled()):
                support = self.model.features(episode.support_x[t], body)
            start, _ = self.task_head(head, support, episode.support_y[t], episode.way)
            fast = head_loop(support, episode.support_y[t], start, self.config.inner_steps, self.config.inner_lr,
                             create_graph=not first_order)
            logits = F.linear(self.model.features(episode.query_x[t], body), *fast)
            loss = F.cross_entropy(logits, episode.query_y[t])
            (loss / tasks).backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, episode.query_y[t])
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def _detached(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Body and head as tensors cut from the method's weights (the head ready for the inner loop's gradients)."""
        body, head = self.split([p.detach() for p in self.model.meta_parameters()])
        return body, [p.requires_grad_() for p in head]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> AdaptedHead:
        """Adapt the head (per ``head_init``) on the support features (``test_inner_steps``); the body stays the
        method's own."""
        body, head = self._detached()
        with torch.no_grad():
            support = self.model.features(support_x, body)
            head, _ = self.task_head(head, support, support_y, way)
        with torch.enable_grad():
            fast = head_loop(support, support_y, head, self.config.test_inner_steps, self.config.inner_lr, False)
        w, b = (p.detach() for p in fast)
        return AdaptedHead(self, w, b, support_x, self.transductive, self.fast_path())

    def restore(self, state: dict[str, torch.Tensor], way: int) -> AdaptedHead:
        return restored(lambda: AdaptedHead(self, state["weight"], state["bias"], state["support_x"],
                                            self.transductive, self.fast_path()), state, way, self.name)

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``, all tasks adapted at once on the fast path (same as :meth:`adapt` per task)."""
        if not self.fast_path(episode):
            return super().predict(episode)
        body, trained = self._detached()
        out = []
        for part in task_chunks(episode.num_tasks, self.config.task_chunk):
            size = episode.support_y[part].shape[0]
            body_tasks = [p.expand(size, *p.shape) for p in body]
            with torch.no_grad():
                support = self.model.features_tasks(episode.support_x[part], body_tasks)
                if self.transductive:
                    query = self.model.features_tasks(episode.query_x[part], body_tasks)
                else:
                    query = torch.stack([each_query_with_support(self.model, body, episode.support_x[t],
                                                                 episode.query_x[t], features=True)
                                         for t in range(part.start, part.stop)])
                head, per_task = self.task_head(trained, support, episode.support_y[part], episode.way)
            with torch.enable_grad():
                fast = head_loop_tasks(support, episode.support_y[part], head, self.config.test_inner_steps,
                                       self.config.inner_lr, create_graph=False, per_task=per_task)
            out.append(linear_tasks(query, [p.detach() for p in fast]))
        return torch.cat(out)
