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

MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML"), each an option of :class:`MAMLConfig`, alone or
together (the ``omniglot_*_mamlpp`` recipes switch them all on); with any of them on, MAML runs the per-task
reference loop (:meth:`MAML.meta_gradient_plus_plus`, not the task-batched fast path):

* ``multi_step_loss`` (MSL): the meta-loss is a weighted sum of the query losses after every inner step. The weights
  start at ``1/S`` each and anneal linearly over the first ``msl_iterations`` iterations towards the last step (the
  others to ``0.03/S``), as the paper's code does over its first 10 epochs (:func:`msl_weights`); after that, the
  last step's loss alone.
* ``per_step_lr`` (LSLR): one learned inner learning rate per parameter tensor and inner step, initialised to
  ``inner_lr`` (``MAML.step_lrs``, one ``[inner_steps]`` tensor per tensor of ``model.meta_parameters()``; they are
  the method's meta-parameters and in its checkpoints, while the model's list keeps its head last). Evaluation steps
  past ``inner_steps`` use the last step's rates.
* ``per_step_bn_weights`` (BNWB) and ``per_step_bn_stats`` (BNRS): the model keeps a copy of its batch-norm scale and
  shift, and/or of running mean and variance, for each inner step and one more for the query pass after the last
  step (``inner_steps + 1`` copies, :class:`fewshot.models.base.PerStepNorm`; Conv-4 offers it). The pass over
  weights that have had ``k`` inner updates uses copy ``k`` (evaluation steps past ``inner_steps`` use the last). The
  per-step scales and shifts are meta-learned; the inner loop's update of copy ``k`` comes after copy ``k``'s last
  use, so in effect they are not adapted per task (as in the paper's code). Running statistics are updated by the
  training passes of their step and, as in the paper's code (which calls batch norm with ``training=True`` at
  training and at test time, and restores the statistics after a test task), never normalise: every pass uses its
  batch's statistics, and ``transductive`` says which batch a test query is in, as for MAML. They change no output.
  Normalising a test task by them instead, as this option once did, scored the ``omniglot_5w1s_mamlpp`` run at
  chance on its validation tasks after 500 iterations (the adapted weights diverge) and at 55.3% after 800 (100
  validation tasks), where batch statistics give 87.5% (each query beside the support set) and 89.8% (the query
  batch).
* ``first_order_iterations`` (DA, derivative-order annealing): first-order meta-gradients for the iterations before
  it, second-order from then on.
* cosine annealing of the outer learning rate is the engine's ``train.schedule: cosine`` with ``train.lr_final``.

MSL and DA read the training iteration from the episode (:attr:`fewshot.data.tasks.Episode.iteration`, set by the
sampler), so a resumed run anneals exactly as an uninterrupted one.

The output layer a task starts from, per ``head_init`` (so a model trained 5-way adapts to tasks of any way,
``eval.way`` or ``fewshot classify``'s classes; the model keeps the trained way's head, ``Method.builds_head``):

* ``trained`` (the default): the meta-learned head when the task's way is the trained way (the paper); for fewer
  classes, its first rows (:data:`fewshot.methods.heads.FEWER_WAY_INIT`); for more, what
  :data:`fewshot.methods.heads.OTHER_WAY_INIT` says (``prototypes``, the better of the two on Omniglot's 20-way
  tasks: ``results/omniglot.md``).
* ``rows``: the trained head's first ``way`` rows (at most the trained way). The rows are interchangeable (classes
  get labels at random in every training task), so a task of fewer classes starts where the inner loop learned to.
* ``zeros``: a zero ``[way, D]`` head (the first inner step then moves the head alone).
* ``prototypes``: Proto-MAML's head (Triantafillou et al. 2020): ``w_c = 2 p_c``, ``b_c = -‖p_c‖²`` for the means
  ``p_c`` of the support features under the current body. In training the meta-gradient flows through the prototypes
  into the body (in first order too: only the inner gradients are cut); the trained head is then unused.

With Meta-SGD, the head's learned rates serve the rows of a built head when the way is the trained one; with
``rows``, each row keeps its own rates; for another way each row takes the mean of the trained rows (the rows are
interchangeable: classes get labels at random in every training task).
The MAML++ loop builds the head the same way (prototypes from the pass with step 0 under per-step batch norm;
LSLR's rates are per tensor, so they serve a head of any way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, accuracy, backward_query_loss, task_chunks
from fewshot.methods.fast_weights import FastWeights
from fewshot.methods.heads import (
    check_head_init,
    extend_rows,
    head_identity,
    prototype_head_params,
    task_head_plan,
    trainable,
    trained_rows,
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
    """The output layer a task starts from: ``trained`` (the meta-learned one; for a task of fewer classes its first
    rows, of more ``prototypes``), ``zeros``, ``prototypes`` (Proto-MAML: ``2·p_c``, ``-‖p_c‖²`` from the support
    features), or ``rows`` (the trained head's first ``way`` rows; at most the trained way)."""
    # MAML++ (module docstring): all off by default
    multi_step_loss: bool = False
    """MSL: meta-loss over the query losses after every inner step, annealed towards the last (``msl_iterations``)."""
    msl_iterations: int = 5000
    """Iterations over which MSL's weights anneal to the last step (the paper: 10 epochs of 500 iterations)."""
    per_step_lr: bool = False
    """LSLR: learn one inner learning rate per parameter tensor per inner step, initialised to ``inner_lr``."""
    per_step_bn_weights: bool = False
    """BNWB: batch-norm scale and shift per inner step (the model must offer ``models.base.PerStepNorm``)."""
    per_step_bn_stats: bool = False
    """BNRS: batch-norm running statistics per inner step, used in eval mode (``models.base.PerStepNorm``)."""
    first_order_iterations: int = 0
    """DA: first-order meta-gradients for this many iterations, then second order (0: from the start)."""

    @property
    def plus_plus(self) -> bool:
        """Whether any MAML++ option is on (training then runs the per-task MAML++ loop)."""
        return (self.multi_step_loss or self.per_step_lr or self.per_step_bn_weights or self.per_step_bn_stats
                or self.first_order_iterations > 0)

    def __post_init__(self) -> None:
        check_head_init(self.head_init)
        if self.inner_steps < 1 or self.test_inner_steps < 1:
            raise FewShotError(f"inner_steps and test_inner_steps must be >= 1, got {self.inner_steps}, "
                               f"{self.test_inner_steps}")
        if not self.inner_lr > 0:
            raise FewShotError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.task_chunk < 0:
            raise FewShotError(f"task_chunk must be >= 0, got {self.task_chunk}")
        check_plus_plus(self)


def check_plus_plus(config: MAMLConfig) -> None:
    """Validate :class:`MAMLConfig`'s MAML++ options."""
    if config.msl_iterations < 0 or config.first_order_iterations < 0:
        raise FewShotError(f"method.msl_iterations and method.first_order_iterations must be >= 0, got "
                           f"{config.msl_iterations}, {config.first_order_iterations}")
    if config.multi_step_loss and config.msl_iterations < 1:
        raise FewShotError("method.multi_step_loss anneals over method.msl_iterations, which must then be >= 1 "
                           "(to train on the last step's loss alone, set multi_step_loss: false)")
    if config.first_order and config.first_order_iterations > 0:
        raise FewShotError("method.first_order_iterations switches to second order after that many iterations, but "
                           "method.first_order is true (first order throughout): set one of them")
    if config.per_step_lr and config.learn_inner_lr:
        raise FewShotError("method.per_step_lr (a learned rate per tensor and step) and method.learn_inner_lr "
                           "(Meta-SGD, a learned rate per element) are two different inner rates: choose one")


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
        self.step_lrs = self._plus_plus_setup()
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
        plan = task_head_plan(self.config.head_init, way, self.model, y)
        if plan == "trained":
            return list(params), list(lrs), False
        body = list(params[:-2])
        per_task = False
        if plan == "rows":  # the trained head's first rows, each with its own Meta-SGD rates
            return body + trained_rows(params[-2:], way), list(lrs[:-2]) + trained_rows(lrs[-2:], way), False
        if plan == "zeros":
            head = zero_head(params[-2:], way)
        else:
            if batched:
                feats = self.model.features_tasks(x, [p.expand(x.shape[0], *p.shape) for p in body])
            else:
                feats = self.model.features(x, body, **self._step(0))
            head, per_task = prototype_head_params(feats, y, way), batched
            if torch.is_grad_enabled():
                # the inner loop differentiates the fast weights as separate inputs (the body with the head held
                # fixed): an alias keeps its gradient off the path through the prototypes to the body's tensors
                body = [p.view_as(p) for p in body]
        head_lrs = [extend_rows(lr, way) if isinstance(lr, torch.Tensor) else lr for lr in lrs[-2:]]
        return body + trainable(head), list(lrs[:-2]) + head_lrs, per_task

    def record_identity(self, way: int) -> dict[str, str]:
        return head_identity(self.config.head_init, way, self.model)

    def fast_path(self, episode: Episode | None = None) -> bool:
        """Whether the task-batched path applies (the model offers it, tensor inputs, not ``reference``)."""
        if self.config.reference or self.config.plus_plus or not batches_tasks(self.model):
            return False
        return episode is None or isinstance(episode.support_x, torch.Tensor)

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        """The meta-gradient of a batch of tasks (second- or first-order), accumulated into ``.grad``."""
        if self.config.plus_plus:
            return self.meta_gradient_plus_plus(episode)
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

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> FastWeights:
        """``test_inner_steps`` of SGD on the support set from the trained weights, the head per ``head_init``."""
        if self.config.plus_plus:
            return self._adapt_plus_plus(support_x, support_y, way)
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        lrs = [lr.detach() if isinstance(lr, torch.Tensor) else lr for lr in self._lrs()]
        with torch.no_grad():
            params, lrs, _ = self.task_start(params, lrs, support_x, support_y, way)
        params = trainable(params)
        with torch.enable_grad():
            fast = inner_loop(self.model, params, support_x, support_y, self.config.test_inner_steps, lrs, False)
        return FastWeights(self, [p.detach() for p in fast], support_x, self.transductive, self.fast_path())

    def restore(self, state: dict[str, torch.Tensor], way: int) -> FastWeights:
        if self.config.plus_plus:
            return FastWeights.restore(self, state, way, self.transductive, batches_tasks(self.model),
                                       self._step(self.config.test_inner_steps))
        return FastWeights.restore(self, state, way, self.transductive, self.fast_path())

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

    # --- MAML++ (module docstring) ----------------------------------------------------------------------------------

    def _plus_plus_setup(self) -> nn.ParameterList | None:
        """Switch on the model's per-step batch norm (BNWB / BNRS); return LSLR's rates (``None`` without LSLR)."""
        from fewshot.models.base import require_per_step_norm  # here: keeps the module's imports as MAML's

        config = self.config
        if config.per_step_bn_weights or config.per_step_bn_stats:
            require_per_step_norm(self.model, "MAML++'s per-step batch norm (per_step_bn_weights, per_step_bn_stats)")
            self.model.per_step_norm(config.inner_steps + 1, config.per_step_bn_weights, config.per_step_bn_stats)
        if not config.per_step_lr:
            return None
        return nn.ParameterList([
            nn.Parameter(torch.full((config.inner_steps,), config.inner_lr, dtype=p.dtype, device=p.device))
            for p in self.model.meta_parameters()
        ])

    @property
    def _per_step_norm(self) -> bool:
        return self.config.per_step_bn_weights or self.config.per_step_bn_stats

    def _plus_plus_loop(self, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
                        create_graph: bool, task_lrs: Sequence[torch.Tensor | float],
                        detach_lrs: bool = False) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """MAML++'s inner loop; yields ``(k, fast weights after k updates)`` for ``k = 1 .. steps``.
        ``task_lrs``: the task's rates from :meth:`task_start` (Meta-SGD's or ``inner_lr``), used without LSLR."""
        return inner_loop_per_step(self.model, params, x, y, steps, self._plus_plus_lrs(detach_lrs, task_lrs),
                                   create_graph, self._per_step_norm)

    def _plus_plus_lrs(self, detach: bool, task_lrs: Sequence[torch.Tensor | float],
                       ) -> Callable[[int], Sequence[torch.Tensor | float]]:
        """Step -> the inner rates of each tensor at that step (LSLR's, else the task's ``task_lrs``)."""
        if self.step_lrs is None:
            lrs = [lr.detach() if detach and isinstance(lr, torch.Tensor) else lr for lr in task_lrs]
            return lambda step: lrs
        rates = [lr.detach() if detach else lr for lr in self.step_lrs]
        last = self.config.inner_steps - 1
        return lambda step: [lr[min(step, last)] for lr in rates]

    def _step(self, k: int) -> dict[str, int]:
        """The keyword that passes step ``k`` to a model with per-step batch norm (nothing otherwise)."""
        return {"step": k} if self._per_step_norm else {}

    def meta_gradient_plus_plus(self, episode: Episode) -> dict[str, float]:
        """MAML++'s meta-gradient (MSL, LSLR, BNWB/BNRS, DA as configured), one task at a time, into ``.grad``."""
        config = self.config
        iteration = episode.iteration
        if iteration is None and (config.multi_step_loss or config.first_order_iterations > 0):
            raise FewShotError("MAML++'s multi-step loss and derivative-order annealing follow the training "
                               "iteration, but this episode does not say which it is (Episode.iteration)")
        first_order = config.first_order or (iteration is not None and iteration < config.first_order_iterations)
        weights = msl_weights(config.inner_steps, iteration, config.msl_iterations) if config.multi_step_loss \
            else None
        params = self.model.meta_parameters()
        tasks = episode.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            query_x, query_y = episode.query_x[t], episode.query_y[t]
            losses = []
            start, task_lrs, _ = self.task_start(params, self._lrs(), episode.support_x[t], episode.support_y[t],
                                                 episode.way)
            for k, fast in self._plus_plus_loop(start, episode.support_x[t], episode.support_y[t],
                                                config.inner_steps, not first_order, task_lrs):
                if weights is not None or k == config.inner_steps:
                    logits = self.model(query_x, fast, **self._step(k))
                    losses.append(F.cross_entropy(logits, query_y))
            loss = losses[-1] if weights is None else sum(w * q for w, q in zip(weights, losses, strict=True))
            (loss / tasks).backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, query_y)
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def _adapt_plus_plus(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> FastWeights:
        steps = self.config.test_inner_steps
        params = [p.detach().requires_grad_() for p in self.model.meta_parameters()]
        with torch.no_grad():
            params, task_lrs, _ = self.task_start(params, self._lrs(), support_x, support_y, way)
        params = trainable(params)
        fast = params
        with torch.enable_grad():
            for _, adapted in self._plus_plus_loop(params, support_x, support_y, steps, False, task_lrs,
                                                   detach_lrs=True):
                fast = adapted
        return FastWeights(self, [p.detach() for p in fast], support_x, self.transductive,
                           batches_tasks(self.model), self._step(steps))


def msl_weights(steps: int, iteration: int | None, anneal_iterations: int) -> list[float] | None:
    """MAML++'s per-step loss importance at ``iteration``: the weight of the query loss after each of the ``steps``
    inner steps, or ``None`` once annealing is over (``iteration >= anneal_iterations``: the last step's loss alone).

    As the paper's code (``get_per_step_loss_importance_vector``) with its epoch counter replaced by the fraction
    ``f = iteration / anneal_iterations`` of the annealing done (the code steps it once per 500-iteration epoch, this
    moves every iteration): every step starts at ``1/S``; the first ``S - 1`` decay to ``max((1 - f) / S, 0.03 / S)``
    and the last grows to ``min((1 + (S - 1) f) / S, 1 - 0.03 (S - 1) / S)``. The weights sum to 1.
    """
    if iteration is None or iteration >= anneal_iterations:
        return None
    f = iteration / anneal_iterations
    low = 0.03 / steps
    last = min((1 + (steps - 1) * f) / steps, 1 - (steps - 1) * low)
    return [max((1 - f) / steps, low)] * (steps - 1) + [last]


def inner_loop_per_step(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lrs: Callable[[int], Sequence[torch.Tensor | float]],
    create_graph: bool,
    per_step_norm: bool,
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """:func:`inner_loop` with a learning rate per tensor and step (``lrs(k)`` for step ``k``), passing the step to
    the model when it keeps per-step batch norm; yields ``(k, fast weights after k updates)`` for ``k = 1..steps``."""
    fast = list(params)
    for k in range(steps):
        logits = model(x, fast, step=k) if per_step_norm else model(x, fast)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), fast, create_graph=create_graph)
        fast = [p - lr * g for p, lr, g in zip(fast, lrs(k), grads, strict=True)]
        yield k + 1, fast
