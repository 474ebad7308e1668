"""The contract every method keeps, and the only thing the engine, the CLI and ``classify`` know about methods.

A method is an ``nn.Module`` built as ``cls(model, options)`` (see :mod:`fewshot.registry`). What the engine relies on:

* :meth:`Method.adapt` — adapt to one task from its labelled support set (labels ``0..way-1``) and return a
  predictor: query inputs -> logits ``[queries, way]``. It must not change the method's own weights, and each
  query's answer must not depend on the other queries passed with it unless the method says it is transductive
  (:attr:`Method.transductive`; ``fewshot classify`` sets it False before adapting).
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
  is about to start), :meth:`end_evaluation` (an evaluation finished: persist caches), :meth:`forget_caches` (the
  next evaluation must not reuse anything cached by earlier ones: ``fewshot eval --fresh``).

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

Predictor = Callable[[Any], torch.Tensor]
"""Maps query inputs to logits ``[queries, way]`` for the task it was adapted to."""


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
    def adapt(self, support_x: Any, support_y: torch.Tensor, way: int) -> Predictor:
        """Adapt to one task from its support set; returns a function from query inputs to logits."""

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
        """An evaluation has finished (persist whatever a method caches across tasks)."""

    def forget_caches(self) -> None:
        """Compute everything anew from now on: ignore what earlier evaluations cached (in memory or on disk)."""

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
