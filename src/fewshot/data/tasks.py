"""N-way K-shot Q-query episodes for any :class:`~fewshot.data.base.ClassDataset` (images and text alike).

Every batch is reproducible: iteration ``i`` of a sampler with seed ``s`` always yields the same tasks, which is
what lets a killed run resume bit-identically and lets every method be scored on the same test episodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fewshot.data.base import ClassDataset
from fewshot.data.batches import iteration_generator
from fewshot.errors import FewShotError


@dataclass
class Episode:
    """A batch of ``T`` tasks. Tensors are ``[T, N*K, ...]`` (support) and ``[T, N*Q, ...]`` (query).

    Labels are ``0..N-1``; ``classes[t, j]`` is the data set's class behind label ``j`` of task ``t``.
    For text data sets ``support_x``/``query_x`` are lists (one list of strings per task).
    ``seeds[t]`` (when given; :class:`TaskSampler` always gives them) seeds whatever a method draws at random while
    training on task ``t``, so those draws depend on the task alone, not on the other tasks of the batch or on which
    process of a distributed run trains it.
    ``iteration`` (given by :class:`TaskSampler`) is the batch number it was drawn as: for a training batch, the
    training iteration, which is how a method with a schedule over training (MAML++'s multi-step loss annealing and
    derivative-order annealing) knows how far training has gone, as DANN reads ``DomainBatch.progress``.
    """

    support_x: Any
    support_y: torch.Tensor
    query_x: Any
    query_y: torch.Tensor
    classes: torch.Tensor
    seeds: torch.Tensor | None = None
    iteration: int | None = None

    @property
    def num_tasks(self) -> int:
        return self.support_y.shape[0]

    @property
    def way(self) -> int:
        return self.classes.shape[1]

    def task(self, t: int) -> Episode:
        """Task ``t`` alone, as an episode of one task."""
        pick = (lambda x: x[t : t + 1]) if isinstance(self.support_x, torch.Tensor) else (lambda x: [x[t]])
        return Episode(
            pick(self.support_x), self.support_y[t : t + 1], pick(self.query_x), self.query_y[t : t + 1],
            self.classes[t : t + 1], None if self.seeds is None else self.seeds[t : t + 1], self.iteration,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Episode:
        def move(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            return x.to(device=device, dtype=dtype) if dtype is not None and x.is_floating_point() else x.to(device)

        return Episode(move(self.support_x), self.support_y.to(device), move(self.query_x),
                       self.query_y.to(device), self.classes, self.seeds, self.iteration)


class TaskSampler:
    """Samples N-way K-shot tasks with Q queries per class from ``dataset``.

    Classes are drawn without replacement within a task, examples without replacement within a class, and
    labels are assigned to classes in random order.
    """

    def __init__(self, dataset: ClassDataset, way: int, shot: int, query: int, seed: int = 0) -> None:
        if min(way, shot) < 1 or query < 0:
            raise FewShotError(f"need way >= 1, shot >= 1, query >= 0; got way={way}, shot={shot}, query={query}")
        sizes = dataset.class_sizes
        num_classes = len(sizes)
        if num_classes == 0:
            raise FewShotError("the split has no classes: check the data root and the split files")
        if way > num_classes:
            raise FewShotError(f"{way}-way tasks need {way} classes but the split has only {num_classes}")
        small = int((sizes < shot + query).sum())
        if small:
            smallest = int(sizes.min())
            raise FewShotError(
                f"{shot}-shot tasks with {query} queries need {shot + query} examples per class, but {small} of "
                f"{num_classes} classes have fewer (the smallest has {smallest})"
            )
        self.dataset, self.way, self.shot, self.query, self.seed = dataset, way, shot, query, seed
        self._sizes = sizes
        self._equal = bool((sizes == sizes[0]).all())

    def sample(self, num_tasks: int, iteration: int = 0, tasks: slice | None = None) -> Episode:
        """The ``num_tasks`` tasks of batch number ``iteration`` (same arguments, same tasks).

        With ``tasks`` (a slice of ``range(num_tasks)``), only those tasks of that batch: equal to
        ``sample(num_tasks, iteration)`` cut to ``tasks``, drawn from the same random numbers, but without sorting
        or loading the other tasks' classes and examples (what one process of a distributed run trains on).
        """
        g = iteration_generator(self.seed, iteration)
        pick = slice(None) if tasks is None else tasks
        n, k, q = self.way, self.shot, self.query
        num_classes = len(self._sizes)
        draws = torch.rand(num_tasks, num_classes, generator=g)
        if self._equal:  # every class has the same size: the example draws below do not depend on the classes
            classes = draws[pick].argsort(dim=1)[:, :n]
            width = int(self._sizes[0])
        else:
            every = draws.argsort(dim=1)[:, :n]
            width = int(self._sizes[every].max())
            classes = every[pick]
        sizes = self._sizes[classes]
        scores = torch.rand(num_tasks, n, width, generator=g)[pick]
        if not self._equal:
            scores[torch.arange(width).expand_as(scores) >= sizes.unsqueeze(-1)] = 2.0
        examples = scores.argsort(dim=-1)[..., : k + q]
        count = classes.shape[0]
        flat_classes = classes.unsqueeze(-1).expand(-1, -1, k + q)
        batch = self.dataset.gather(flat_classes.reshape(-1), examples.reshape(-1))
        labels = torch.arange(n).view(1, n, 1).expand(count, n, k + q)
        support_y = labels[..., :k].reshape(count, n * k)
        query_y = labels[..., k:].reshape(count, n * q)
        if isinstance(batch, torch.Tensor):
            batch = batch.view(count, n, k + q, *batch.shape[1:])
            support_x = batch[:, :, :k].reshape(count, n * k, *batch.shape[3:])
            query_x = batch[:, :, k:].reshape(count, n * q, *batch.shape[3:])
        else:
            items = list(batch)
            per_task = [[items[(t * n + c) * (k + q) : (t * n + c + 1) * (k + q)] for c in range(n)]
                        for t in range(count)]
            support_x = [[x for cls in task for x in cls[:k]] for task in per_task]
            query_x = [[x for cls in task for x in cls[k:]] for task in per_task]
        seeds = torch.randint(2**62, (num_tasks,), generator=g)[pick]  # drawn last: the tasks stay what they were
        return Episode(support_x, support_y, query_x, query_y, classes, seeds, iteration)


def fixed_episodes(
    dataset: ClassDataset, way: int, shot: int, query: int, episodes: int = 600, seed: int = 0, chunk: int = 50,
    start: int = 0,
) -> Iterator[Episode]:
    """The fixed, seeded test tasks ``start .. episodes - 1``, yielded ``chunk`` tasks at a time.

    Chunking and ``start`` do not change which tasks come out: task ``i`` is always the same for a given seed.
    """
    sampler = TaskSampler(dataset, way, shot, query, seed=seed)
    for first in range(start, episodes, chunk):
        yield episode_range(sampler, first, min(chunk, episodes - first))


def episode_range(sampler: TaskSampler, first: int, size: int) -> Episode:
    """The fixed tasks ``first .. first + size - 1`` of ``sampler`` as one episode batch."""
    return _stack([sampler.sample(1, iteration=first + i) for i in range(size)])


def _stack(tasks: list[Episode]) -> Episode:
    if isinstance(tasks[0].support_x, torch.Tensor):
        sx = torch.cat([t.support_x for t in tasks])
        qx = torch.cat([t.query_x for t in tasks])
    else:
        sx = [x for t in tasks for x in t.support_x]
        qx = [x for t in tasks for x in t.query_x]
    seeds = None if any(t.seeds is None for t in tasks) else torch.cat([t.seeds for t in tasks])
    return Episode(sx, torch.cat([t.support_y for t in tasks]), qx, torch.cat([t.query_y for t in tasks]),
                   torch.cat([t.classes for t in tasks]), seeds)
