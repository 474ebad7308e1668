"""What a backbone must offer, written once: the methods and the engine ask these contracts, never a class name.

Every backbone is an ``nn.Module`` that maps a batch of inputs (a tensor, or a list of strings for text) to
``[batch, feature_dim]`` features — or, when it was built with an output layer (``out_features``), to logits.
The rest are capabilities: a method that needs one checks for it with the functions below and says clearly when the
backbone lacks it.

========================  ==========================================  ===========================================
contract                  who relies on it                            what it is
========================  ==========================================  ===========================================
:class:`Backbone`         every method, the embedding cache           ``feature_dim``; ``forward(x)``
:class:`Functional`       MAML / Meta-SGD, Reptile, ANIL              ``meta_parameters()``; ``forward(x, params)``,
                                                                      ``features(x, params)``
:class:`TaskBatched`      the fast paths of MAML, Reptile, ANIL       ``features_tasks`` / ``forward_tasks`` over
                                                                      ``[tasks, batch, ...]``, each task its own
                                                                      weights and batch statistics
:class:`Blocks`           fine-tuning of the top k blocks             ``blocks``; optionally ``forward_blocks``
:class:`PerStepNorm`      MAML++'s per-step batch norm (MAML)         ``per_step_norm(copies, weights,
                                                                      statistics)``; then ``step`` in the forwards
``export_tokenizer()``    ONNX export of a text classifier            a standalone ``tokenizers.Tokenizer``; the
                          (:mod:`fewshot.onnx_export`)                model then also takes
                                                                      :class:`~fewshot.data.inputs.Tokens`
``embeds_alone``          ProtoNet's evaluation (embeds each          optional: ``True`` when, in eval mode, each
                          distinct image once), :func:`embeds_alone`  input's output is independent of its batch
                                                                      (a model that does not say: ``False``)
========================  ==========================================  ===========================================

A registered model is built by ``build(options, out_features)`` (see :mod:`fewshot.registry`): ``out_features`` is
the way of the N-way output layer for methods that need one (``Method.needs_head``), else ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.inputs import batch_len, take, to_device
from fewshot.errors import FewShotError


@runtime_checkable
class Backbone(Protocol):
    """Inputs -> ``[batch, feature_dim]`` features (or logits, if built with an output layer)."""

    feature_dim: int
    """Size of the features the last block produces (what a new classifier on top sees)."""

    def __call__(self, x: Any) -> torch.Tensor: ...


@runtime_checkable
class Functional(Protocol):
    """A backbone whose forward pass takes its weights as an argument (gradient-based meta-learning).

    ``meta_parameters()`` lists the trainable tensors in the order ``forward(x, params)`` takes them; when the model
    has an output layer, its weight ``[out, feature_dim]`` and bias ``[out]`` are the last two, and the logits are
    exactly ``F.linear(features(x, params), params[-2], params[-1])`` (ANIL adapts that layer on frozen features).
    ``features(x, params)`` runs the body only: ``params`` may be the body's tensors alone or the whole list (the
    head's entries are then ignored). ``params=None`` means the module's own weights. Batch statistics, where the
    model has batch norm, are those of the batch passed in (unless the model keeps running statistics and is in eval
    mode), so with per-batch statistics an input's output depends on the rest of its batch.

    A model that also offers :class:`PerStepNorm` takes a third argument, ``forward(x, params, step=None)`` and
    ``features(x, params, step=None)``: ``step`` is how many inner-loop updates ``params`` have had, and picks the
    batch-norm copy of that step. ``step=None`` is today's behaviour; callers pass ``step`` only to a model whose
    per-step copies they switched on, so a model without them need not take it.
    """

    head: nn.Linear | None

    def meta_parameters(self) -> list[nn.Parameter]: ...

    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor: ...

    def features(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor: ...


@runtime_checkable
class PerStepNorm(Protocol):
    """A :class:`Functional` model that can keep its batch norm per inner-loop step (MAML++, Antoniou et al. 2019).

    ``per_step_norm(copies, weights, statistics)`` switches it on once, before training: ``copies`` copies, one per
    step ``0 .. copies - 1`` (a step past the last uses the last), of the batch-norm scale and shift (``weights``:
    ``meta_parameters()`` then lists each as a ``[copies, channels]`` tensor in its usual place, the head still
    last) and/or of running mean and variance (``statistics``: updated in training mode by the passes of their
    step, and, as in MAML++'s code, never used to normalise: every pass, in training and in eval mode, normalises by
    its own batch, and eval mode leaves them as they are). From then on ``forward``, ``features`` and, where offered,
    ``features_tasks`` / ``forward_tasks`` take ``step`` (``None``: the last copy). ``batches_tasks`` is False with
    per-step statistics.
    """

    def per_step_norm(self, copies: int, weights: bool, statistics: bool) -> None: ...


@runtime_checkable
class TaskBatched(Protocol):
    """Many tasks in one pass, each with its own weights: ``x`` is ``[tasks, batch, ...]`` and every tensor of
    ``params`` has a leading task dimension (``p.expand(tasks, *p.shape)`` of shared weights is fine). Results must
    equal running :meth:`Functional.forward` task by task (to float tolerance), batch statistics included; like
    :meth:`Functional.features`, ``features_tasks`` takes the body's tensors with or without the head's.

    ``batches_tasks`` says whether the capability applies to this instance (Conv-4 with running batch-norm
    statistics, for one, cannot keep them per task).
    """

    batches_tasks: bool

    def features_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor: ...

    def forward_tasks(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class Blocks(Protocol):
    """A backbone made of ``blocks`` (an ``nn.ModuleList``, input to output) that fine-tuning can freeze from the
    bottom. A backbone that also offers ``forward_blocks(x, start, stop)`` (blocks ``start`` to ``stop``; to the end
    it returns the pooled features) lets fine-tuning run the frozen bottom once per task."""

    blocks: nn.ModuleList


def feature_dim(model: nn.Module) -> int:
    """The backbone's ``feature_dim``; a clear error when it has none."""
    dim = getattr(model, "feature_dim", None)
    if dim is None:
        raise FewShotError(f"{type(model).__name__} does not say its feature size (no feature_dim attribute), "
                           "which this method needs to put a classifier on top")
    return int(dim)


def require_functional(model: nn.Module, method: str) -> None:
    """Raise a clear error unless ``model`` offers the functional forward that ``method`` needs."""
    if not isinstance(model, Functional):
        raise FewShotError(f"{method} adapts weights functionally: the model needs meta_parameters(), "
                           f"forward(x, params) and features(x, params) (models.base.Functional); "
                           f"{type(model).__name__} lacks them")


def require_per_step_norm(model: nn.Module, what: str) -> None:
    """Raise a clear error unless ``model`` can keep its batch norm per inner step (:class:`PerStepNorm`)."""
    if not isinstance(model, PerStepNorm):
        raise FewShotError(f"{what} needs a model that keeps its batch norm per inner step "
                           f"(models.base.PerStepNorm, as Conv-4); {type(model).__name__} cannot")


def batches_tasks(model: nn.Module) -> bool:
    """Whether ``model`` offers the task-batched fast path and it applies to this instance."""
    return isinstance(model, TaskBatched) and bool(model.batches_tasks)


def embeds_alone(model: nn.Module) -> bool:
    """Whether ``model``, in eval mode, maps each input independently of the rest of its batch, so that an input's
    embedding can be computed once and reused: what the model says (``embeds_alone``; running batch-norm statistics,
    or none); ``False`` for a model that does not say (batch statistics, or anything else mixing a batch, may be
    inside)."""
    return getattr(model, "embeds_alone", False) is True


QUERY_BATCH_EXAMPLES = 1024
"""Examples per pass of :func:`each_query_with_support` on the task-batched path (bounds its memory)."""


def each_query_with_support(
    model: nn.Module, params: Sequence[torch.Tensor], support_x: torch.Tensor, query_x: torch.Tensor,
    features: bool = False, batched: bool = True, step: int | None = None,
) -> torch.Tensor:
    """``model``'s output for each query, computed in a batch of its own: the support set followed by that query
    alone. Batch statistics, where the model has batch norm, come from the support set and the query itself, never
    from the other queries, so each query's answer is independent of what else is asked (the non-transductive
    protocol). ``[Q, out]``: logits (``forward(x, params)``), or the body's features with ``features=True``.

    ``batched`` (and a model offering :class:`TaskBatched`): each query is a task of its own sharing ``params``,
    ``x [Q, S + 1, ...]``, in passes of at most :data:`QUERY_BATCH_EXAMPLES` examples; otherwise one pass per query.
    ``step`` (a :class:`PerStepNorm` model's inner step) is passed on to the model when given.
    """
    queries, size = query_x.shape[0], support_x.shape[0] + 1
    step_kw = {} if step is None else {"step": step}
    if queries == 0:  # the right shape, nothing in it
        return (model.features if features else model)(support_x, params, **step_kw)[:0]
    if batched and batches_tasks(model):
        tasks_run = model.features_tasks if features else model.forward_tasks
        run = (lambda x, p: tasks_run(x, p, **step_kw)) if step_kw else tasks_run
        chunk = max(1, QUERY_BATCH_EXAMPLES // size)
        out = []
        for start in range(0, queries, chunk):
            part = query_x[start : start + chunk]
            n = part.shape[0]
            x = torch.cat([support_x.unsqueeze(0).expand(n, *support_x.shape), part.unsqueeze(1)], dim=1)
            out.append(run(x, [p.expand(n, *p.shape) for p in params])[:, -1])
        return torch.cat(out)
    run_one = model.features if features else model
    return torch.stack([run_one(torch.cat([support_x, query_x[i : i + 1]]), params, **step_kw)[-1]
                        for i in range(queries)])


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


_BATCH_TOTAL: ContextVar[Callable[[torch.Tensor], torch.Tensor] | None] = ContextVar("batch_total", default=None)


@contextmanager
def batch_shared(total: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the batch a backbone sees is one share of a larger batch, and ``total(t)`` sums a tensor
    over all the shares, differentiably (a distributed run passes an all-reduce over its processes):
    :func:`batch_norm` in training then normalises with the statistics of the whole batch."""
    token = _BATCH_TOTAL.set(total)
    try:
        yield
    finally:
        _BATCH_TOTAL.reset(token)


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float = 0.1,
               eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` for backbones that run batch norm functionally. Inside :func:`batch_shared`, in training, the
    mean and variance are those of the whole batch (every share), running statistics are updated with them, and the
    gradient flows through them to every share: one process per share computes what one process computes on the
    whole batch, to float rounding (torch's ``SyncBatchNorm`` does the same for ``nn.BatchNorm`` modules, on GPUs
    only)."""
    total = _BATCH_TOTAL.get()
    if total is None or not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training=training, momentum=momentum, eps=eps)
    h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    dims = [0, *range(2, h.dim())]
    shape = [1, -1] + [1] * (h.dim() - 2)
    sums = total(torch.cat([h.sum(dims), h.new_full((1,), h.numel() // h.shape[1])]))
    count = sums[-1].detach()
    mean = sums[:-1] / count
    centred = h - mean.view(shape)
    var = total((centred * centred).sum(dims)) / count
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * count / (count - 1).clamp(min=1)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return out.to(x.dtype)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def embed(backbone: nn.Module, x: Any, batch_size: int = 64) -> torch.Tensor:
    """``backbone`` over ``x`` in chunks, without gradients; ``[B, D]`` float32 on the backbone's device."""
    n = batch_len(x)
    if n == 0:
        raise FewShotError("nothing to embed: the batch is empty")
    device = module_device(backbone)
    if torch.jit.is_tracing():  # an export traces one pass over the whole (dynamic) batch
        return backbone(to_device(x, device)).float()
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = backbone(to_device(take(x, range(start, min(n, start + batch_size))), device))
            if not isinstance(z, torch.Tensor) or z.dim() != 2:
                raise FewShotError(f"the backbone must return a [batch, features] tensor, got "
                                   f"{getattr(z, 'shape', type(z).__name__)}")
            out.append(z.float())
    return torch.cat(out)
