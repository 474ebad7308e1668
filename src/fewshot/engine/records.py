"""Evaluation records, in one place: the per-episode test scores of one checkpoint under one evaluation setting.

A run folder keeps them beside its checkpoints, ``checkpoints/eval/<checkpoint>_<split>_<W>w<S>s<Q>q_seed<N>.json``:

* a killed ``fewshot eval`` (or the test at the end of ``fewshot train``) continues after the recorded episodes;
* ``fewshot compare`` pairs runs episode by episode on the tasks they share.

A record holds its *identity* — whatever fixes the scores: fewshot's version, the SHA-256 of the weights, the
experiment, data, model and method config, the split, way, shot, query and seed — and is reused only by a request
with the same identity. Records are written atomically.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewshot.errors import FewShotError
from fewshot.hashing import weights_sha256
from fewshot.io import atomic_write

RECORD_FOLDER = "eval"
CONFIG_KEYS = ("experiment", "data", "model", "method")
"""The config sections that can change a score (training settings only matter through the weights)."""
TASK_KEYS = ("way", "shot", "query", "seed", "split")
"""What fixes the test tasks, beside the data set."""


@dataclass
class EvalRecord:
    """Where one evaluation's per-episode scores are kept, and what they are scores of."""

    path: Path
    identity: dict[str, Any]
    unwritable: bool = field(default=False, compare=False, repr=False)
    """Set when a write failed: later chunks are not tried again."""

    def scores(self) -> list[float]:
        """The recorded scores if the file holds this identity's, else none (a fresh start)."""
        if self.unwritable or not self.path.is_file():
            return []
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        if not isinstance(saved, dict) or saved.get("identity") != self.identity:
            return []
        return [float(s) for s in saved.get("scores", [])]

    def write(self, scores: list[float]) -> None:
        """Keep ``scores``; a record that cannot be written (read-only run folder, full disk) is a warning, once: the
        evaluation goes on, it only cannot be continued after a kill."""
        if self.unwritable:
            return
        try:
            atomic_write(self.path, json.dumps({"identity": self.identity, "episodes_done": len(scores),
                                                "scores": scores}) + "\n")
        except OSError as exc:
            self.unwritable = True
            print(f"fewshot: warning: cannot keep the evaluation record {self.path}: {exc.strerror or exc}; "
                  f"scoring goes on without it", file=sys.stderr)

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # then its scores are not used either
            self.unwritable = True
            print(f"fewshot: warning: cannot remove the evaluation record {self.path}: {exc.strerror or exc}; "
                  f"scoring every episode without it", file=sys.stderr)


def record_identity(config: Any, weights: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
    """The identity of scoring ``weights`` under ``config`` (a :class:`~fewshot.config.RunConfig`) on ``split``."""
    from fewshot import __version__

    settings, e = config.to_dict(), config.eval
    return {"fewshot": __version__, "weights_sha256": weights_sha256(weights),
            "config": {k: settings[k] for k in CONFIG_KEYS}, "split": split,
            "way": e.way, "shot": e.shot, "query": e.query, "seed": e.seed}


def run_record(checkpoint: Path, config: Any, weights: dict[str, torch.Tensor], split: str) -> EvalRecord | None:
    """The record of scoring a run folder's ``checkpoint``; ``None`` for a loose checkpoint file (nothing kept)."""
    folder = Path(checkpoint).parent
    if folder.name != "checkpoints" or not (folder.parent / "config.yaml").is_file():
        return None
    e = config.eval
    stem = f"{Path(checkpoint).stem}_{split}_{e.way}w{e.shot}s{e.query}q_seed{e.seed}"
    return EvalRecord(folder / RECORD_FOLDER / f"{stem}.json", record_identity(config, weights, split))


def run_record_files(run_dir: Path, checkpoint: str, split: str) -> list[Path]:
    """The record files of a run folder for one checkpoint (``best`` / ``last``) and split."""
    return sorted((run_dir / "checkpoints" / RECORD_FOLDER).glob(f"{checkpoint}_{split}_*.json"))


def read_record(path: Path) -> tuple[dict[str, Any], list[float]]:
    """A record file's identity and scores; a clear error if it is not a record."""
    try:
        record = json.loads(path.read_text())
        identity, scores = record["identity"], [float(s) for s in record["scores"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FewShotError(f"{path} is not an evaluation record: {exc}") from exc
    if not isinstance(identity, dict):
        raise FewShotError(f"{path} is not an evaluation record: its identity is not a mapping")
    return identity, scores


def record_tasks(identity: dict[str, Any]) -> dict[str, Any]:
    """What fixed a record's test tasks: the data set (name and options, not its folder) and way, shot, query,
    seed and split. Records with equal tasks were scored on the same episodes."""
    data = (identity.get("config") or {}).get("data") or {}
    return {"data": {"name": data.get("name"), "options": data.get("options")},
            **{k: identity.get(k) for k in TASK_KEYS}}
