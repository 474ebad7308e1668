"""An experiment ties a config to data, a method, training batches and scoring; the engine only sees this.

Every kind of run (episodic meta-training, domain adaptation, supervised pre-training, ...) provides the same
small interface, so one training loop, one checkpoint format and one CLI serve them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from fewshot import registry
from fewshot.config import RunConfig, component_options
from fewshot.data.base import ClassDataset
from fewshot.data.tasks import TaskSampler
from fewshot.engine.evaluate import EvalResult, evaluate
from fewshot.errors import FewShotError
from fewshot.methods.base import Method


class Experiment(Protocol):
    config: RunConfig
    method: Method

    def batch(self, iteration: int) -> Any:
        """The training batch of ``iteration`` (deterministic: resuming replays the same batches)."""

    def validate(self, episodes: int) -> EvalResult:
        """Score on the validation split (fixed episodes)."""

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: Path | None = None, identity: dict | None = None) -> EvalResult:
        """Score on the test split (the published protocol); episodic protocols keep per-episode progress in
        ``record`` (see :func:`fewshot.engine.evaluate.evaluate`)."""


def build_experiment(config: RunConfig, root: str | None = None) -> Experiment:
    """The experiment a config describes; weights are initialised from ``config.train.seed``."""
    torch.manual_seed(config.train.seed)
    device = config.train.torch_device()  # fails early, before any loading, when the device is not there
    experiment = registry.KINDS[config.kind].builder()(config, root)
    experiment.method.to(device)
    return experiment


def build_method(config: RunConfig, out_features: int | None) -> Method:
    """Model + method from the config (``out_features`` is used only if the method needs a head)."""
    method_cls = registry.METHODS[config.method.name].builder()
    model_options = component_options(config.model, registry.MODELS, "model")
    model = registry.MODELS[config.model.name].builder()(model_options,
                                                         out_features if method_cls.needs_head else None)
    return method_cls(model, component_options(config.method, registry.METHODS, "method"))


class EpisodicExperiment:
    """Meta-train on N-way K-shot tasks from the train split; score on fixed val/test episodes."""

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        self.config = config
        self.root = root or config.data.root
        self._datasets: dict[str, ClassDataset] = {}
        train, test = config.train, config.eval
        method_cls = registry.METHODS[config.method.name].builder()
        if method_cls.needs_head and train.way != test.way:
            raise FewShotError(f"{config.method.name} has an N-way output layer, so train.way ({train.way}) "
                               f"must equal eval.way ({test.way})")
        self.method = build_method(config, test.way)
        self._sampler: TaskSampler | None = None

    def dataset(self, split: str) -> ClassDataset:
        if split not in self._datasets:
            entry = registry.DATASETS[self.config.data.name]
            options = component_options(self.config.data, registry.DATASETS, "data")
            self._datasets[split] = entry.builder()(split, self.root, options)
        return self._datasets[split]

    def batch(self, iteration: int) -> Any:
        if self._sampler is None:
            t = self.config.train
            self._sampler = TaskSampler(self.dataset("train"), t.way, t.shot, t.query, seed=t.seed)
        return self._sampler.sample(self.config.train.meta_batch, iteration)

    def validate(self, episodes: int) -> EvalResult:
        e = self.config.eval
        return evaluate(self.method, self.dataset("val"), e.way, e.shot, e.query, episodes, seed=e.seed + 1)

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: Path | None = None, identity: dict | None = None) -> EvalResult:
        e = self.config.eval
        split = split or e.split
        return evaluate(self.method, self.dataset(split), e.way, e.shot, e.query, episodes or e.episodes, seed=e.seed,
                        progress=progress, record=record, identity={**(identity or {}), "split": split})
