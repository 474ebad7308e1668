"""Per-query predictions of an evaluation, kept beside its record: what a confusion matrix is made of.

Episode labels ``0..N-1`` are drawn afresh for every task, so a prediction means something only through the data
set's class behind each label (``Episode.classes``). For every episode scored with a record
(:mod:`fewshot.engine.records`), :func:`fewshot.engine.evaluate.evaluate` keeps

* ``classes``: the data set's class ids behind labels ``0..N-1``,
* ``truth`` and ``predicted``: each query's true and predicted label,

in ``checkpoints/eval/predictions/<record name>`` (a folder of its own, so that record globs never see it), with the
names of the classes that occur and the record's identity, and written (atomically) before the record at each
save. A predictions file is used only with the record it belongs to: same identity, a valid checksum, at least as
many episodes, and each episode's accuracy recomputed from its predictions equal to the record's score
(:func:`read_predictions`). An evaluation continued from a record that has no predictions (one written by an
earlier fewshot) keeps none: its confusion matrix would cover only part of the episodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, atomic_write, read_json

FORMAT = "fewshot-eval-predictions-v1"
FOLDER = "predictions"


def predictions_path(record_path: Path) -> Path:
    """Where the predictions of the record at ``record_path`` are kept."""
    return Path(record_path).parent / FOLDER / Path(record_path).name


def episode_predictions(classes: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor) -> list[dict[str, Any]]:
    """One entry per task of a scored episode batch: ``classes`` ``[T, N]``, ``truth`` and ``predicted`` ``[T, N*Q]``
    (episode labels)."""
    return [{"classes": c, "truth": t, "predicted": p}
            for c, t, p in zip(classes.tolist(), truth.tolist(), predicted.tolist(), strict=True)]


def _checksum(identity: dict[str, Any], episodes: list[dict[str, Any]], names: dict[str, str]) -> str:
    text = json.dumps({"format": FORMAT, "identity": identity, "episodes": episodes, "class_names": names},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_predictions(record_path: Path, identity: dict[str, Any], episodes: list[dict[str, Any]],
                      class_names: Any) -> None:
    """Save ``episodes`` (from :func:`episode_predictions`) for the record at ``record_path`` with ``identity``;
    ``class_names`` are the evaluated split's (only the names of classes that occur are kept)."""
    used = sorted({c for e in episodes for c in e["classes"]})
    names = {str(c): str(class_names[c]) for c in used}
    content = {"format": FORMAT, "identity": identity, "episodes_done": len(episodes), "class_names": names,
               "episodes": episodes, "checksum": _checksum(identity, episodes, names)}
    atomic_write(predictions_path(record_path), json.dumps(content, separators=(",", ":")) + "\n")


def check_predictions(saved: Any, identity: dict[str, Any], scores: list[float]) -> tuple[list[dict], dict[str, str]]:
    """The first ``len(scores)`` episodes' predictions and the class names of a predictions file's content, if it
    belongs to the record of ``identity`` with ``scores``; :class:`FewShotError` saying why not otherwise."""
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise FewShotError(f"it is not a {FORMAT} file")
    if saved.get("identity") != identity:
        raise FewShotError("it holds the predictions of another evaluation")
    episodes, names = saved.get("episodes"), saved.get("class_names")
    if not isinstance(episodes, list) or not isinstance(names, dict) or saved.get("checksum") != _checksum(
            identity, episodes, names):
        raise FewShotError("its checksum does not match its content (edited or damaged)")
    if len(episodes) < len(scores):
        raise FewShotError(f"it holds {len(episodes)} episodes, the record {len(scores)}")
    episodes = episodes[: len(scores)]
    for i, (episode, score) in enumerate(zip(episodes, scores)):
        classes, truth, predicted = (episode.get(k) for k in ("classes", "truth", "predicted"))
        ok = (isinstance(classes, list) and isinstance(truth, list) and isinstance(predicted, list)
              and len(truth) == len(predicted) > 0
              and all(isinstance(x, int) and 0 <= x < len(classes) for x in (*truth, *predicted))
              and all(str(c) in names for c in classes))
        if not ok:
            raise FewShotError(f"its episode {i} is malformed")
        accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
        if abs(accuracy - score) > 1e-6:
            raise FewShotError(f"its episode {i} scores {accuracy:.6f}, the record {score:.6f}")
    return episodes, names


def read_predictions(record_path: Path, identity: dict[str, Any], scores: list[float]
                     ) -> tuple[list[dict], dict[str, str]] | None:
    """The predictions kept for the record at ``record_path`` (its ``identity`` and ``scores``), or ``None`` when
    there are none that belong to it."""
    path = predictions_path(record_path)
    try:
        return check_predictions(read_json(path), identity, scores)
    except (JSONReadError, FewShotError):
        return None


def confusion_counts(episodes: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
    """``(true class id, predicted class id) -> number of queries`` over ``episodes`` (data set class ids)."""
    counts: dict[tuple[int, int], int] = {}
    for episode in episodes:
        classes = episode["classes"]
        for t, p in zip(episode["truth"], episode["predicted"]):
            key = (classes[t], classes[p])
            counts[key] = counts.get(key, 0) + 1
    return counts
