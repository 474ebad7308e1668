"""Paired comparison of evaluated runs: per-episode differences on identical test tasks.

Every run folder keeps its per-episode test scores (the evaluation records of :mod:`fewshot.engine.records`).
Runs scored on the same way / shot / query / seed / split saw the same tasks, so the difference of two methods is best
estimated episode by episode: its 95% interval is much narrower than the two unpaired intervals suggest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fewshot.engine.evaluate import mean_ci95
from fewshot.engine.records import read_record, record_tasks, run_record_files
from fewshot.errors import FewShotError


@dataclass
class Scores:
    name: str
    task: dict
    """What fixes the episodes: the data set (name and options), way, shot, query, seed, split."""
    scores: list[float]

    @property
    def key(self) -> str:
        """``task`` as a comparable string: records with equal keys were scored on the same episodes."""
        return json.dumps(self.task, sort_keys=True)


def load_scores(target: Path, checkpoint: str = "best", split: str = "test") -> list[Scores]:
    """The evaluation records of a run folder (one per way/shot/... evaluated), or one record file."""
    if target.is_file():
        files = [target]
    elif target.is_dir():
        files = run_record_files(target, checkpoint, split)
        if not files:
            raise FewShotError(f"{target} has no recorded {split} evaluation of its {checkpoint} checkpoint "
                               f"(run `fewshot eval {target}` first)")
    else:
        raise FewShotError(f"{target} is neither a run folder nor an evaluation record")
    out = []
    for path in files:
        identity, scores = read_record(path)
        name = target.name if target.is_dir() else path.stem
        out.append(Scores(name, record_tasks(identity), scores))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width of ``a - b`` over their common episodes."""
    n = min(len(a), len(b))
    if n == 0:
        raise FewShotError("no common episodes to compare")
    return mean_ci95([x - y for x, y in zip(a[:n], b[:n])])


def compare(runs: list[list[Scores]]) -> list[dict]:
    """One row per run: its score, and its paired difference from the first run, on the tasks they all share.

    Each run may hold records of several settings; the setting used is one that every run has (the first such).
    """
    if len(runs) < 2:
        raise FewShotError("compare needs at least two runs")
    settings = [{s.key for s in run} for run in runs]
    shared = set.intersection(*settings)
    if not shared:
        names = ", ".join(f"{run[0].name}: {sorted(s)}" for run, s in zip(runs, settings))
        raise FewShotError(f"the runs were not scored on the same tasks (data set, way, shot, query, seed, split): "
                           f"{names}")
    key = next(s.key for s in runs[0] if s.key in shared)
    picked = [next(s for s in run if s.key == key) for run in runs]
    n = min(len(s.scores) for s in picked)
    base = picked[0]
    rows = []
    for s in picked:
        mean, ci = mean_ci95(s.scores[:n])
        row = {"run": s.name, "episodes": n, "accuracy": mean, "ci95": ci, **s.task}
        if s is not base:
            row["difference"], row["difference_ci95"] = paired(s.scores[:n], base.scores[:n])
        rows.append(row)
    return rows
