"""The evaluation protocol: fixed seeded test episodes, mean accuracy with a 95% confidence interval."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from fewshot.data.base import ClassDataset
from fewshot.data.tasks import TaskSampler, episode_range
from fewshot.engine.records import EvalRecord
from fewshot.errors import FewShotError
from fewshot.methods.base import Method
from fewshot.models.base import evaluating


@dataclass
class EvalResult:
    accuracy: float
    """Mean accuracy over episodes, in [0, 1]."""
    ci95: float
    """Half-width of the 95% confidence interval: 1.96 * std / sqrt(episodes)."""
    episodes: int
    way: int
    shot: int
    query: int
    per_episode: list[float] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.episodes} episodes)"

    def to_dict(self, per_episode: bool = False) -> dict:
        out = asdict(self)
        if not per_episode:
            out.pop("per_episode")
        return out


def mean_ci95(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return float(t.mean()), float("nan")
    return float(t.mean()), 1.96 * float(t.std(unbiased=True)) / math.sqrt(len(values))


def evaluate(
    method: Method, dataset: ClassDataset, way: int, shot: int, query: int = 15, episodes: int = 600, seed: int = 0,
    progress: bool = False, record: EvalRecord | None = None, chunk: int = 50, save_every: float = 30.0,
) -> EvalResult:
    """Score ``method`` on ``episodes`` fixed test tasks (the same tasks for every method with the same seed).

    Tasks go to ``method.predict`` in chunks of at most ``chunk``, sized from the measured time per task so that a
    chunk takes about ``save_every`` seconds: fast methods score 50 tasks per call, while a language model that
    needs seconds per task scores one or a few. With ``record`` (:mod:`fewshot.engine.records`), each finished
    chunk's per-episode scores are saved there, and a later call with the same record identity starts after the
    episodes already scored, so a killed evaluation loses at most one chunk (about ``save_every`` seconds of work).
    Chunking never changes the tasks or their scores: task ``i`` is the same for a given seed.
    """
    if chunk < 1 or save_every <= 0:
        raise FewShotError(f"chunk must be >= 1 and save_every > 0, got {chunk}, {save_every}")
    scores = (record.scores() if record is not None else [])[:episodes]
    done = len(scores)
    if done:
        print(f"continuing the evaluation after {done} recorded episodes ({record.path})", file=sys.stderr)
    sampler = TaskSampler(dataset, way, shot, query, seed=seed)
    bar = None
    if progress and episodes > done:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes - done, desc="eval", unit="task", leave=False)
    device = method.device
    try:
        with evaluating(method):
            size = 1  # the first chunk measures the cost of a task
            while len(scores) < episodes:
                size = min(size, episodes - len(scores))
                episode = episode_range(sampler, len(scores), size)
                start = time.perf_counter()
                logits = method.predict(episode.to(device))
                scores += (logits.argmax(-1).cpu() == episode.query_y).float().mean(-1).tolist()
                per_task = (time.perf_counter() - start) / size
                if record is not None:
                    record.write(scores)
                if bar is not None:
                    bar.update(size)
                size = max(1, min(chunk, int(save_every / max(per_task, 1e-6))))
            method.end_evaluation()
    finally:
        if bar is not None:
            bar.close()
    mean, ci = mean_ci95(scores)
    return EvalResult(mean, ci, len(scores), way, shot, query, scores)
