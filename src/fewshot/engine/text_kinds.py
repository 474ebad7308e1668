"""Kinds of run for text classification (see :mod:`fewshot.engine.experiment` for the protocol).

* ``text_episodic`` — the episodic experiment, plus it tells the method the class names of the split its episodes
  come from (the ``Method.set_class_names`` hook), which a verbalizer needs to score label words. Other methods
  ignore the hook and run exactly as under ``episodic``.
* ``text_all_classes`` — the intent-detection papers' K-shot setting: adapt on K examples of *every* class (the
  data set's ``all_classes`` setting, ``data.options.shot`` = K) and score on the whole official test set. There is
  no meta-training (``train.iterations: 0``). ``eval.episodes`` is the number of
  independent K-shot draws (seeds ``sample_seed``, ``sample_seed + 1``, ...); the result is the mean test accuracy
  over draws, its 95% CI over draws, and ``query`` = the number of test sentences.
"""

from __future__ import annotations

import torch

from fewshot import registry
from fewshot.config import RunConfig, component_options
from fewshot.data.base import ClassDataset
from fewshot.engine.evaluate import EvalResult, mean_ci95
from fewshot.engine.experiment import EpisodicExperiment, build_dataset, build_method
from fewshot.engine.records import EvalRecord
from fewshot.errors import FewShotError
from fewshot.models.base import evaluating


class TextEpisodicExperiment(EpisodicExperiment):
    """Episodic meta-training and scoring; the method learns each split's class names."""

    def _names(self, split: str) -> None:
        self.method.set_class_names(self.dataset(split).class_names)

    def batch(self, iteration: int, tasks: slice | None = None) -> object:
        self._names("train")
        return super().batch(iteration, tasks)

    def validate(self, episodes: int) -> EvalResult:
        self._names("val")
        return super().validate(episodes)

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: EvalRecord | None = None) -> EvalResult:
        self._names(split or self.config.eval.split)
        return super().test(episodes, split, progress, record)


class AllClassesExperiment:
    """K examples of every class to adapt on, the official test set to score on (no meta-training)."""

    def __init__(self, config: RunConfig, root: str | None = None) -> None:
        self.config = config
        self.root = root
        options = component_options(config.data, registry.DATASETS, "data")
        if getattr(options, "setting", "all_classes") != "all_classes":
            raise FewShotError(f"kind 'text_all_classes' needs data.options.setting: all_classes, got "
                               f"{options.setting!r}")
        self.options = options
        self.method = build_method(config, None)

    def dataset(self, split: str, sample_seed: int | None = None) -> ClassDataset:
        if sample_seed is not None and hasattr(self.options, "sample_seed"):
            return build_dataset(self.config, split, self.root, sample_seed=sample_seed)
        return build_dataset(self.config, split, self.root)

    def batch(self, iteration: int) -> None:
        return None

    def _score(self, split: str, draws: int, progress: bool = False) -> EvalResult:
        base = getattr(self.options, "sample_seed", 0)
        evaluation = self.dataset(split)
        texts, labels = evaluation.flat()
        scores = []
        try:
            with evaluating(self.method):
                for draw in range(draws):
                    train = self.dataset("train", base + draw)
                    if list(train.class_names) != list(evaluation.class_names):
                        raise FewShotError(f"the train and {split} splits have different classes")
                    support_x, support_y = train.flat()
                    self.method.set_class_names(train.class_names)
                    predictor = self.method.adapt(support_x, support_y, len(train.class_names))
                    with torch.no_grad():
                        logits = torch.cat([predictor(texts[i : i + 512]) for i in range(0, len(texts), 512)])
                    scores.append(float((logits.argmax(-1).cpu() == labels).float().mean()))
                    if progress:
                        print(f"draw {draw}: {100 * scores[-1]:.2f}%", flush=True)
        finally:
            self.method.end_evaluation()  # also when stopped: persist what was embedded so far
        mean, ci = mean_ci95(scores)
        return EvalResult(mean, ci, len(scores), len(evaluation.class_names),
                          getattr(self.options, "shot", 0), len(texts), scores)

    def validate(self, episodes: int) -> EvalResult:
        return self._score("val", 1)

    def test(self, episodes: int | None = None, split: str | None = None, progress: bool = False,
             record: EvalRecord | None = None) -> EvalResult:
        """All-classes scoring: one pass over the test set, nothing to record (``record`` is ignored)."""
        return self._score(split or self.config.eval.split, episodes or self.config.eval.episodes, progress)
