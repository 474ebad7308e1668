"""The contract every method keeps, and the only thing the engine, the CLI and ``classify`` know about methods.

A method is an ``nn.Module`` built as ``cls(model, options)`` (see :mod:`fewshot.registry`). What the engine relies on:

* :meth:`Method.adapt` — adapt to one task from its labelled support set (labels ``0..way-1``) and return a
  predictor: an :class:`Adapted` module, query inputs -> logits ``[queries, way]``. It must not change the method's
  own weights, and each query's answer must not depend on the other queries passed with it unless the method says it
  is transductive (:attr:`Method.transductive`; ``fewshot classify`` and ``fewshot fit`` set it False before
  adapting).
* :meth:`Method.restore` — the same predictor rebuilt from its ``state_dict()`` (what a fitted classifier saves),
  without adapting again: ``method.restore(predictor.state_dict(), way)`` answers exactly as ``predictor`` does. The
  state holds what adaptation produced (prototypes, fast weights, a tuned head or prompt, a fine-tuned copy of the
  backbone, the support inputs a non-transductive predictor scores each query beside); the method's own weights,
  which the predictor runs with but never changes, stay the method's (its ``state_dict()``, saved beside).
* :meth:`Method.predict` — logits ``[tasks, N*Q, N]`` for a batch of tasks (an :class:`Episode`); the default adapts
  task by task, a method may batch the tasks (same results).
* :meth:`Method.training_gradient` — one training step: fill ``.grad`` of :meth:`meta_parameters` from one batch
  and return metrics (``loss`` at least, ``accuracy`` where it means something). The engine's optimizer then steps.
  Which batches a method trains on is :attr:`Method.trains_on` (episodes for meta-learners, labelled batches for
  supervised pre-training, domain batches for DANN); a kind of run checks it before training starts.
* :attr:`Method.needs_head`, :attr:`Method.builds_head` — whether the model is built with an output layer of the
  trained way, and whether the method then takes tasks of any way (it builds each task's N-way head in ``adapt``).
* :attr:`Method.needs_query` — whether training on episodes needs query examples (``train.query >= 1``); the
  episodic kinds check it before training.
* hooks with no-op defaults: :meth:`set_class_names` (the class names of the data set whose tasks come next, for
  methods that read label words), :meth:`set_training_classes` (ordinary classification over all training classes
  is about to start), :meth:`end_evaluation` (an evaluation finished or was stopped: persist or drop caches),
  :meth:`forget_caches` (the next evaluation must not reuse anything cached by earlier ones: ``fewshot eval
  --fresh``).

Methods know nothing about files, logging or the command line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.models.base import module_device


class Adapted(nn.Module):
    """What :meth:`Method.adapt` returns: a module mapping query inputs to logits ``[queries, way]`` for the task it
    was adapted to.

    Its ``state_dict()`` (buffers and submodules) is the adapted state and nothing else; the method whose weights it
    runs with is held by reference (:attr:`method`, outside the module tree), so saving a predictor does not save the
    method twice. :attr:`way` is its number of classes. A subclass is built from tensors (the adaptation's results or
    a saved state): :meth:`Method.restore` builds it from a state with :func:`restored`.
    """

    way: int

    def __init__(self, method: Method | None, way: int) -> None:
        super().__init__()
        self._method = (method,)  # a tuple: not a submodule, not in state_dict()
        self.way = int(way)

    @property
    def method(self) -> Method:
        owner = self._method[0]
        if owner is None:
            raise FewShotError(f"this {type(self).__name__} runs without a method")
        return owner

    def tensors(self, **named: torch.Tensor | None) -> None:
        """Register tensors as (persistent) buffers: they move with ``.to()`` and are saved in ``state_dict()``."""
        for name, tensor in named.items():
            self.register_buffer(name, None if tensor is None else tensor.detach())


Predictor = Adapted
"""Maps query inputs to logits ``[queries, way]`` for the task it was adapted to."""


def restored(build: Callable[[], Adapted], state: dict[str, torch.Tensor], way: int, what: str) -> Adapted:
    """``build()`` (a predictor made from tensors of ``state``) checked against ``state`` and ``way``: a missing
    tensor, an unexpected one, a shape that does not fit or a class count other than ``way`` is one clear
    :class:`FewShotError` (``what`` names the method)."""
    try:
        predictor = build()
    except KeyError as exc:
        raise FewShotError(f"the saved {what} predictor lacks tensor {exc.args[0]!r}; found "
                           f"{', '.join(sorted(state)) or 'none'}") from exc
    try:
        predictor.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise FewShotError(f"the saved {what} predictor does not fit its method: {first}") from exc
    if predictor.way != way:
        raise FewShotError(f"the saved {what} predictor has {predictor.way} classes, but {way} class names are given")
    return predictor.eval()


def substate(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix`` (a submodule's state), the prefix cut."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Method(nn.Module, ABC):
    """A few-shot learner: ``adapt(support) -> predictor``, and ``training_gradient(batch)`` to train it."""

    name: ClassVar[str] = "method"
    needs_head: ClassVar[bool] = True
    """Whether the model is built with an N-way output layer (``out_features = train.way``), whose way is then fixed
    unless the method :attr:`builds_head`; False for methods that put their own classifier on the backbone's
    features."""
    builds_head: ClassVar[bool] = False
    """For a method that :attr:`needs_head`: whether :meth:`adapt` (and :meth:`predict`) build an output layer for a
    task of any way from the trained one (``method.head_init``: MAML, ANIL, Reptile), so the model is built with the
    way it was trained for (``train.way``) and scores tasks of any other (``eval.way``, ``fewshot classify``).
    False: tasks must have the trained way."""
    trains_on: ClassVar[tuple[type, ...]] = (Episode,)
    """The batch types :meth:`training_gradient` accepts (:class:`Episode`, ``LabelledBatch``, ``DomainBatch``)."""
    needs_query: ClassVar[bool] = True
    """Whether :meth:`training_gradient` computes its loss on an episode's query examples, so episodic training
    needs ``train.query >= 1`` (False: it trains on the support set alone, or checks its own options)."""
    transductive: bool = False
    """Whether the predictor (and :meth:`predict`) scores the queries it is given together, so that one query's
    answer may depend on the others (the papers' protocol for MAML and Reptile: batch statistics over the query
    batch). A method that can score either way reads it each time it adapts; setting it False asks every query to be
    scored on its own (``fewshot classify`` does: a user's answer must not depend on what else they asked). It never
    changes training."""
    whole_batch_statistics: ClassVar[bool] = False
    """Whether :meth:`training_gradient` runs the backbone over the whole batch at once (all tasks' images, or all
    examples, in one forward pass), so batch norm's statistics span the batch; False when each task is run on its
    own (its own batch statistics). A distributed run gives each process a share of the batch and, for such a
    method, takes the statistics over every share (:func:`fewshot.models.base.batch_norm`), so it trains exactly as
    one process on the whole batch."""

    @abstractmethod
    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> Adapted:
        """Adapt to one task from its support set; returns an :class:`Adapted` module (query inputs -> logits)."""

    def restore(self, state: dict[str, torch.Tensor], way: int) -> Adapted:
        """The predictor :meth:`adapt` returned, rebuilt from its ``state_dict()`` (on this method's device) without
        adapting again; the method's own weights must be those it was adapted with. Every method of this package
        overrides it (use :func:`restored`)."""
        raise FewShotError(f"method {self.name!r} cannot rebuild a saved predictor (it does not implement restore)")

    @abstractmethod
    def training_gradient(self, batch: Any) -> dict[str, float]:
        """Accumulate the gradient of one training batch into ``.grad``; return ``loss`` (and ``accuracy``)."""

    @property
    def device(self) -> torch.device:
        """Where the method's weights are (the first parameter or buffer; CPU if it has none)."""
        return module_device(self)

    def meta_parameters(self) -> list[nn.Parameter]:
        """What the outer optimizer updates (all trainable parameters unless a method says otherwise)."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``: each task adapted on its own support set."""
        out = []
        for t in range(episode.num_tasks):
            predictor = self.adapt(episode.support_x[t], episode.support_y[t], episode.way)
            with torch.no_grad():
                out.append(predictor(episode.query_x[t]))
        return torch.stack(out)

    # --- hooks: no-ops unless a method needs them ------------------------------------------------------------------

    def set_class_names(self, names: Sequence[str] | None) -> None:
        """The class names of the data set whose tasks come next: an episode's ``classes`` index into them, and a
        support set labelled ``0..way-1`` with ``way == len(names)`` is read in their order."""

    def set_training_classes(self, num_classes: int) -> None:
        """Ordinary classification over ``num_classes`` training classes is about to start (``LabelledBatch``)."""

    def end_evaluation(self) -> None:
        """An evaluation has finished, or was stopped midway (persist or drop whatever a method cached across tasks)."""

    def forget_caches(self) -> None:
        """Compute everything anew from now on: ignore what earlier evaluations cached (in memory or on disk)."""

    def record_identity(self, way: int) -> dict[str, Any]:
        """What, beside the config and weights, fixes this method's scores on tasks of ``way`` classes: it joins an
        evaluation record's identity, so that a record scored otherwise is not reused. Nothing by default."""
        return {}

    @classmethod
    def check_trains_on(cls, batch_type: type, kind: str) -> None:
        """A clear error when this method cannot train on ``batch_type`` batches (what the kind ``kind`` makes);
        a kind with nothing to train (``None`` batches) takes any method."""
        if batch_type is not type(None) and not issubclass(batch_type, cls.trains_on):
            accepted = ", ".join(t.__name__ for t in cls.trains_on) or "nothing"
            raise FewShotError(f"kind {kind!r} trains on {batch_type.__name__} batches, but method {cls.name!r} "
                               f"trains on {accepted}")


@runtime_checkable
class DomainClassifier(Protocol):
    """A method that classifies inputs into a data set's own fixed classes (what the domain-adaptation kind scores).

    ``num_classes`` is the number of those classes and ``target_shots`` how many labelled target examples per class
    it trains with (0: none, -1: all).
    """

    num_classes: int
    target_shots: int

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


def task_chunks(tasks: int, size: int) -> list[slice]:
    """Slices of at most ``size`` tasks covering ``tasks`` (``size`` 0: all at once), for task-batched fast paths."""
    size = size or tasks
    return [slice(start, min(start + size, tasks)) for start in range(0, tasks, size)]


def backward_query_loss(logits: torch.Tensor, query_y: torch.Tensor, tasks: int) -> tuple[float, float]:
    """Backward of a chunk's query loss ``[T, Q, way]`` as its share of the mean over ``tasks`` tasks; returns the
    chunk's summed per-task loss and accuracy (for the step's metrics)."""
    losses = F.cross_entropy(logits.flatten(0, 1), query_y.flatten(), reduction="none").view(query_y.shape)
    loss = losses.mean(1).sum()
    (loss / tasks).backward()
    return loss.item(), (logits.argmax(-1) == query_y).float().mean(1).sum().item()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
