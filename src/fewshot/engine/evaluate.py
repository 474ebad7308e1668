"""The evaluation protocol: fixed seeded test episodes, mean accuracy with a 95% confidence interval."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    progress: bool = False, record: Path | None = None, identity: dict[str, Any] | None = None, chunk: int = 50,
) -> EvalResult:
    """Score ``method`` on ``episodes`` fixed test tasks (the same tasks for every method with the same seed).

    With ``record``, each finished chunk's per-episode scores are saved there (atomically), and a later call with
    the same ``identity`` (whatever fixes the scores: checkpoint, config, split) starts after the episodes already
    scored, so a killed evaluation loses at most one chunk. A record with another identity is started afresh.
    """
    identity = {**(identity or {}), "way": way, "shot": shot, "query": query, "seed": seed}
    scores = _recorded_scores(record, identity)[:episodes]
    done = len(scores)
    if done:
        print(f"continuing the evaluation after {done} recorded episodes ({record})", file=sys.stderr)
    was_training = method.training
    method.eval()
    chunks = fixed_episodes(dataset, way, shot, query, episodes, seed, chunk=chunk, start=done)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=math.ceil((episodes - done) / chunk), desc="eval", unit="chunk", leave=False)
    try:
        device = getattr(method, "device", None)  # a Method knows its device; a duck-typed one is left alone
        for episode in chunks:
            logits = method.predict(episode if device is None else episode.to(device))
            scores += (logits.argmax(-1).cpu() == episode.query_y).float().mean(-1).tolist()
            if record is not None:
                _write_record(record, identity, scores)
    finally:
        method.train(was_training)
    mean, ci = mean_ci95(scores)
    return EvalResult(mean, ci, len(scores), way, shot, query, scores)


def _recorded_scores(record: Path | None, identity: dict[str, Any]) -> list[float]:
    if record is None or not record.is_file():
        return []
    try:
        saved = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if saved.get("identity") != identity:
        return []
    return [float(s) for s in saved.get("scores", [])]


def _write_record(record: Path, identity: dict[str, Any], scores: list[float]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({"identity": identity, "episodes_done": len(scores), "scores": scores}) + "\n")
    os.replace(tmp, record)
