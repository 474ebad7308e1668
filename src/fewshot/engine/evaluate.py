"""The evaluation protocol: fixed seeded test episodes, mean accuracy with a 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from fewshot.data.base import ClassDataset
from fewshot.data.tasks import fixed_episodes
from fewshot.methods.base import Method


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
    progress: bool = False,
) -> EvalResult:
    """Score ``method`` on ``episodes`` fixed test tasks (the same tasks for every method with the same seed)."""
    was_training = method.training
    method.eval()
    scores: list[float] = []
    chunks = fixed_episodes(dataset, way, shot, query, episodes, seed)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=math.ceil(episodes / 50), desc="eval", unit="chunk", leave=False)
    try:
        for episode in chunks:
            logits = method.predict(episode)
            scores += (logits.argmax(-1) == episode.query_y).float().mean(-1).tolist()
    finally:
        method.train(was_training)
    mean, ci = mean_ci95(scores)
    return EvalResult(mean, ci, len(scores), way, shot, query, scores)
