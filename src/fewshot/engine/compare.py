"""Paired comparison of evaluated runs: per-episode differences on identical test tasks.

Every run folder keeps its per-episode test scores (the evaluation records of :mod:`fewshot.engine.records`).
Runs scored on the same data / way / shot / query / seed / split saw the same tasks, so the difference of two methods
is best estimated episode by episode: its 95% interval is much narrower than the two unpaired intervals suggest.
Only valid records are compared (their checksum matches their scores); a run scored under several settings
(``fewshot eval RUN method.classifier=ncm``) gives one row per setting, each labelled with how it differs from the
run's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fewshot.engine.evaluate import mean_ci95
from fewshot.engine.records import (
    RECORD_FOLDER,
    read_record,
    record_tasks,
    run_record_files,
    run_settings,
    settings_difference,
)
from fewshot.errors import FewShotError


@dataclass
class Scores:
    name: str
    task: dict
    """What fixes the episodes: the data set (name, options, content fingerprint), way, shot, query, seed, split."""
    scores: list[float]
    settings: str = "as trained"
    """How the data, model and method settings differ from the run's own (``as trained`` when they do not)."""

    @property
    def key(self) -> str:
        """``task`` as a comparable string: records with equal keys were scored on the same episodes."""
        return json.dumps(self.task, sort_keys=True)


def load_scores(target: Path, checkpoint: str = "best", split: str = "test") -> list[Scores]:
    """The evaluation records of a run folder (one per setting evaluated), or one record file; a clear error for a
    record that is not valid."""
    if target.is_file():
        files = [target]
        run_dir = target.parent.parent.parent if target.parent.name == RECORD_FOLDER else None
    elif target.is_dir():
        files = run_record_files(target, checkpoint, split)
        run_dir = target
        if not files:
            raise FewShotError(f"{target} has no recorded {split} evaluation of its {checkpoint} checkpoint "
                               f"(run `fewshot eval {target}` first)")
    else:
        raise FewShotError(f"{target} is neither a run folder nor an evaluation record")
    own = run_settings(run_dir) if run_dir is not None and (run_dir / "config.yaml").is_file() else None
    out = []
    for path in files:
        identity, scores = read_record(path)
        if not scores:
            raise FewShotError(f"{path} records no episodes yet")
        name = target.name if target.is_dir() else f"{run_dir.name}/{path.stem}" if run_dir else path.stem
        out.append(Scores(name, record_tasks(identity), scores,
                          settings_difference(identity.get("config") or {}, own)))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width of ``a - b`` over their common episodes."""
    n = min(len(a), len(b))
    if n == 0:
        raise FewShotError("no common episodes to compare")
    return mean_ci95([x - y for x, y in zip(a[:n], b[:n])])


def describe_task(task: dict) -> str:
    """A task key in words: ``omniglot {...} 5w1s15q seed 0, test split, data 1a2b3c4d``."""
    data = task.get("data") or {}
    fingerprint = str(data.get("fingerprint") or "?")[:8]
    return (f"{data.get('name')} {json.dumps(data.get('options'), sort_keys=True)} {task.get('way')}w"
            f"{task.get('shot')}s{task.get('query')}q seed {task.get('seed')}, {task.get('split')} split, "
            f"data {fingerprint}")


def compare(runs: list[list[Scores]]) -> list[dict]:
    """Rows of every run's score, and its paired difference from the first row, on the tasks they all share.

    Each run may hold records of several tasks and settings; the tasks used are the first that every run has, and
    every record of those tasks gives a row (a run's own settings first), so one run scored under two settings can
    be compared with itself. Each row carries ``settings``: how it differs from its run's own.
    """
    tasks = [{s.key for s in run} for run in runs]
    shared = set.intersection(*tasks) if runs else set()
    if not shared:
        names = "; ".join(f"{run[0].name}: {' | '.join(dict.fromkeys(describe_task(s.task) for s in run))}"
                          for run in runs)
        raise FewShotError(f"the runs were not scored on the same tasks (data, way, shot, query, seed, split): "
                           f"{names}")
    key = next(s.key for s in runs[0] if s.key in shared)
    picked = []
    for run in runs:
        same_tasks = [s for s in run if s.key == key]
        picked += sorted(same_tasks, key=lambda s: s.settings != "as trained")  # the run's own settings first
    if len(picked) < 2:
        raise FewShotError("compare needs at least two runs (or one run scored under two settings); got only "
                           f"{picked[0].name}")
    n = min(len(s.scores) for s in picked)
    base = picked[0]
    rows = []
    for s in picked:
        mean, ci = mean_ci95(s.scores[:n])
        row = {"run": s.name, "settings": s.settings, "episodes": n, "accuracy": mean, "ci95": ci, **s.task}
        if s is not base:
            row["difference"], row["difference_ci95"] = paired(s.scores[:n], base.scores[:n])
        rows.append(row)
    return rows
