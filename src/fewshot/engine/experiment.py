"""Kinds of run. An experiment ties a config to data, a method, training batches and scoring; the engine only sees
the :class:`Experiment` contract, so one training loop, one checkpoint format and one CLI serve every kind.

To add a kind: a class keeping :class:`Experiment`, and one line in ``fewshot.registry.EXPERIMENTS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch

from fewshot import registry
from fewshot.config import RunConfig, component_options
from fewshot.data.base import ClassDataset
from fewshot.data.tasks import Episode, TaskSampler
from fewshot.engine import distributed
from fewshot.engine.evaluate import EvalResult, evaluate
from fewshot.engine.records import EvalRecord
from fewshot.errors import FewShotError
from fewshot.methods.base import Method


class Experiment(Protocol):
    """What the engine (training loop, scoring, CLI) relies on.

    * ``config`` and ``method``: the run's validated config and the method it trains and scores.
    * :meth:`batch` — the training batch of an iteration, a pure function of the iteration number (a resumed run
      replays the same batches); ``None`` when the kind has nothing to train (the engine then skips the step).
      Its type is one the method accepts (``Method.trains_on``); a kind checks that when it is built. Optionally,
      a kind whose batches are ``tasks_per_batch`` tasks also takes ``batch(iteration, tasks=slice)``: only those
      tasks of the batch, the same values (what one process of a distributed run trains on).
    * Optionally, ``budget_bound``: why the kind's batches depend on ``train.iterations`` (a resume may then not
      change the budget without ``--force``); kinds without it make the same batches whatever the budget.
    * :meth:`validate` — a score on the validation split (fixed episodes), to pick the best checkpoint.
    * :meth:`test` — the published protocol on the test split (or ``split``); with ``record``, per-episode progress
      is kept there so a killed evaluation continues (kinds that score in one pass may ignore it).
    """

    config: RunConfig
    method: Method

    def batch(self, iteration: int) -> Any: ...

    def validate(self, episodes: int) -> EvalResult: ...

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: EvalRecord | None = None) -> EvalResult: ...


def build_experiment(config: RunConfig, root: str | None = None) -> Experiment:
    """The experiment a config describes; weights are initialised from ``config.train.seed``. Under ``torchrun`` the
    process first joins the others (:func:`fewshot.engine.distributed.init`: its GPU, the process group)."""
    distributed.init(config.train)
    torch.manual_seed(config.train.seed)
    device = config.train.torch_device()  # fails early, before any loading, when the device is not there
    experiment = registry.EXPERIMENTS[config.experiment].builder()(config, root)
    experiment.method.to(device)
    return experiment


def method_class(config: RunConfig) -> type[Method]:
    return registry.METHODS[config.method.name].builder()


def build_method(config: RunConfig, out_features: int | None) -> Method:
    """Model + method from the config (``out_features`` is used only if the method needs a head)."""
    method_cls = method_class(config)
    model_options = component_options(config.model, registry.MODELS, "model")
    model = registry.MODELS[config.model.name].builder()(model_options,
                                                         out_features if method_cls.needs_head else None)
    return method_cls(model, component_options(config.method, registry.METHODS, "method"))


def build_dataset(config: RunConfig, split: str, root: str | None, **option_changes: Any) -> Any:
    """Split ``split`` of the config's data set (``option_changes`` replace fields of its options)."""
    options = component_options(config.data, registry.DATASETS, "data")
    if option_changes:
        options = dataclasses.replace(options, **option_changes)
    return registry.DATASETS[config.data.name].builder()(split, root or config.data.root, options)


class EpisodicExperiment:
    """Meta-train on N-way K-shot tasks from the train split; score on fixed val/test episodes."""

    batch_type: type = Episode

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        self.config = config
        self.root = root
        self._datasets: dict[str, ClassDataset] = {}
        train, test = config.train, config.eval
        method_cls = method_class(config)
        method_cls.check_trains_on(self.batch_type, config.experiment)
        if self.batch_type is Episode and method_cls.needs_query and train.query < 1 and train.iterations > 0:
            raise FewShotError(f"train.query is {train.query} but method {config.method.name!r} trains on query "
                               f"examples; set train.query >= 1 (e.g. 15)")
        if method_cls.needs_head and not method_cls.builds_head and train.way != test.way:
            raise FewShotError(f"{config.method.name} has an N-way output layer it cannot rebuild for another way, "
                               f"so train.way ({train.way}) must equal eval.way ({test.way})")
        # the output layer has the trained way; a method that builds heads (Method.builds_head) adapts to any other
        self.method = build_method(config, train.way)
        self._sampler: TaskSampler | None = None

    def dataset(self, split: str) -> ClassDataset:
        if split not in self._datasets:
            self._datasets[split] = build_dataset(self.config, split, self.root)
        return self._datasets[split]

    @property
    def tasks_per_batch(self) -> int | None:
        """Tasks in a training batch (``None`` for the kinds built on this one that do not train on episodes)."""
        return self.config.train.meta_batch if self.batch_type is Episode else None

    def batch(self, iteration: int, tasks: slice | None = None) -> Any:
        if self._sampler is None:
            t = self.config.train
            self._sampler = TaskSampler(self.dataset("train"), t.way, t.shot, t.query, seed=t.seed)
            if t.val_episodes:  # a split that cannot validate fails before the first step, not at the first validation
                self.dataset("val")
        return self._sampler.sample(self.config.train.meta_batch, iteration, tasks)

    def validate(self, episodes: int) -> EvalResult:
        e = self.config.eval
        return evaluate(self.method, self.dataset("val"), e.way, e.shot, e.query, episodes, seed=e.seed + 1)

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: EvalRecord | None = None) -> EvalResult:
        e = self.config.eval
        return evaluate(self.method, self.dataset(split or e.split), e.way, e.shot, e.query, episodes or e.episodes,
                        seed=e.seed, progress=progress, record=record)
