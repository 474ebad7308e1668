"""Scoring a run: weights into an experiment, the test protocol from a fixed random state, the record kept.

``fewshot eval`` (a checkpoint read once, an experiment built from its config) and the test at the end of
``fewshot train`` (the experiment it trained, its best weights) both score through :func:`score`, so the two give
the same figure for the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshot.config import check_split
from fewshot.engine.evaluate import EvalResult
from fewshot.engine.records import run_record
from fewshot.errors import FewShotError


def load_weights(method: nn.Module, weights: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load ``weights`` into ``method`` (every tensor, every shape as the model has it: a method that scores tasks of
    another way builds their heads itself, the model keeps the trained one); a one-line error naming the first
    tensor that does not fit the model the config describes."""
    own = method.state_dict()
    problems = [f"{key} is {list(weights[key].shape)} in the file but {list(t.shape)} in the model"
                for key, t in own.items() if key in weights and weights[key].shape != t.shape]
    problems += [f"{key} is missing from the file" for key in own if key not in weights]
    problems += [f"{key} is in the file but not in the model" for key in weights if key not in own]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FewShotError(f"{source} does not fit the model its config describes: {problems[0]}{more}")
    try:
        method.load_state_dict(weights)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise FewShotError(f"{source} does not fit the model its config describes: {first}") from exc


def score(experiment: Any, checkpoint: Path | None = None, episodes: int | None = None, split: str | None = None,
          progress: bool = False, fresh: bool = False) -> EvalResult:
    """Test ``experiment`` (an :class:`~fewshot.engine.experiment.Experiment`) with the weights its method holds.

    When ``checkpoint`` is a run folder's checkpoint those weights came from, per-episode scores are recorded beside
    it (``checkpoints/eval/``) and an interrupted evaluation continues (``fresh``: score everything anew, reusing
    neither the record nor what the method cached, e.g. embeddings on disk). The protocol runs from the random state
    ``torch.manual_seed(eval.seed)`` (the caller's state is restored), so a figure does not depend on what ran before
    it in the process.
    """
    if episodes is not None and episodes < 1:
        raise FewShotError(f"the number of test episodes must be >= 1, got {episodes}")
    config = experiment.config
    split = split or config.eval.split
    check_split("--split", split)
    record = None
    if checkpoint is not None:
        record = run_record(checkpoint, config, experiment.method.state_dict(), split,
                            experiment.method.record_identity(config.eval.way))
    if fresh:
        experiment.method.forget_caches()
        if record is not None:
            record.reuse = False  # replaced when the first new scores are saved, not deleted before
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.eval.seed)
        return experiment.test(episodes, split, progress=progress, record=record)
