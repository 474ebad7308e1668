"""Evaluation records, in one place: the per-episode test scores of one checkpoint under one evaluation setting.

A run folder keeps them beside its checkpoints, ``checkpoints/eval/<checkpoint>_<split>_<W>w<S>s<Q>q_seed<N>.json``
(with ``_<settings hash>`` before ``.json`` when the data, model or method settings differ from the run's own, e.g.
``fewshot eval RUN method.classifier=ncm``, so that each setting keeps its own record):

* a killed ``fewshot eval`` (or the test at the end of ``fewshot train``) continues after the recorded episodes;
* ``fewshot compare`` pairs runs episode by episode on the tasks they share.

A record holds its *identity* — whatever fixes the scores: fewshot's version, the SHA-256 of the weights, the
experiment, data, model and method settings, a fingerprint of the evaluated split's content
(:func:`fewshot.hashing.dataset_fingerprint`), the split, way, shot, query and seed — and is reused only by a request
with the same identity. It also holds a SHA-256 checksum over its format, identity and scores, so that scores edited
by hand or damaged are caught: a record is valid when its scores are numbers in [0, 1], ``episodes_done`` counts
them and the checksum matches (:func:`check_record`). An invalid record is never reused (``fewshot eval`` says so and
scores afresh) and ``fewshot compare`` refuses it. Records are written atomically.

The checksum guards against accidents and careless edits, not against someone who recomputes it: a record is
evidence only as far as the run folder it lives in is.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fewshot.config import RunConfig, load_raw
from fewshot.errors import FewShotError
from fewshot.hashing import dataset_fingerprint, weights_sha256
from fewshot.io import JSONReadError, atomic_write, read_json

RECORD_FOLDER = "eval"
FORMAT = "fewshot-eval-record-v2"
CONFIG_KEYS = ("experiment", "data", "model", "method")
"""The config sections that can change a score (training settings only matter through the weights)."""
TASK_KEYS = ("way", "shot", "query", "seed", "split")
"""What fixes the test tasks, beside the data set."""
DATA_KEY = "data_fingerprint"
"""The identity's key for the content fingerprint of the evaluated split."""
IDENTITY_WORDS = {"fewshot": "fewshot version", "weights_sha256": "weights", "config": "settings", DATA_KEY: "data",
                  "head": "output layer"}


@dataclass
class EvalRecord:
    """Where one evaluation's per-episode scores are kept, and what they are scores of.

    ``reuse=False`` (``fewshot eval --fresh``): never read the saved scores; the file is replaced when the first
    newly scored episodes are saved.
    """

    path: Path
    identity: dict[str, Any]
    reuse: bool = True
    unwritable: bool = field(default=False, compare=False, repr=False)
    """Set when a write failed: later chunks are not tried again."""

    def with_data(self, dataset: Any) -> EvalRecord:
        """This record with the content fingerprint of ``dataset`` (the split being scored) in its identity."""
        return replace(self, identity={**self.identity, DATA_KEY: dataset_fingerprint(dataset)})

    def scores(self) -> list[float]:
        """The recorded scores if the file is a valid record of this identity, else none (a fresh start); why a
        record that is there is not reused goes to stderr."""
        if not self.reuse or self.unwritable or not self.path.is_file():
            return []
        try:
            identity, scores = read_record(self.path)
        except FewShotError as exc:
            print(f"fewshot: {exc}; scoring afresh (the record will be replaced)", file=sys.stderr)
            return []
        if identity != self.identity:
            differ = sorted({IDENTITY_WORDS.get(k, k) for k in {*identity, *self.identity}
                             if identity.get(k) != self.identity.get(k)})
            print(f"fewshot: {self.path} holds scores of other {', '.join(differ)}; scoring afresh (the record will "
                  f"be replaced)", file=sys.stderr)
            return []
        return scores

    def write(self, scores: list[float]) -> None:
        """Keep ``scores``; a record that cannot be written (read-only run folder, full disk) is a warning, once: the
        evaluation goes on, it only cannot be continued after a kill."""
        if self.unwritable:
            return
        try:
            atomic_write(self.path, json.dumps(record_content(self.identity, scores)) + "\n")
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


def record_checksum(identity: dict[str, Any], scores: list[float]) -> str:
    """SHA-256 over a record's format, identity and scores (canonical JSON)."""
    text = json.dumps({"format": FORMAT, "identity": identity, "scores": [float(s) for s in scores]},
                      sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def record_content(identity: dict[str, Any], scores: list[float]) -> dict[str, Any]:
    """What a record file holds."""
    scores = [float(s) for s in scores]
    return {"format": FORMAT, "identity": identity, "episodes_done": len(scores), "scores": scores,
            "checksum": record_checksum(identity, scores)}


def check_record(saved: Any) -> tuple[dict[str, Any], list[float]]:
    """A record's identity and scores; :class:`FewShotError` saying what is wrong when it is not a valid record."""
    if not isinstance(saved, dict):
        raise FewShotError(f"it holds a JSON {type(saved).__name__}, not a record")
    found = saved.get("format")
    if found != FORMAT:
        if found is None:
            raise FewShotError("it has no format and no checksum (a record of an earlier fewshot, or not a record), "
                               "so its scores cannot be checked")
        raise FewShotError(f"its format is {found!r}; this fewshot reads {FORMAT!r}")
    identity, scores = saved.get("identity"), saved.get("scores")
    if not isinstance(identity, dict):
        raise FewShotError("its identity is not a mapping")
    if not isinstance(scores, list):
        raise FewShotError("its scores are not a list")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and 0 <= s <= 1):
            raise FewShotError(f"its score of episode {i} is {s!r}, not an accuracy in [0, 1]")
    done = saved.get("episodes_done")
    if done != len(scores) or isinstance(done, bool):
        raise FewShotError(f"it counts {done!r} episodes but holds {len(scores)} scores")
    if saved.get("checksum") != record_checksum(identity, scores):
        raise FewShotError("its checksum does not match its identity and scores (edited or damaged)")
    return identity, [float(s) for s in scores]


def read_record(path: Path) -> tuple[dict[str, Any], list[float]]:
    """A record file's identity and scores; a clear error if it is not a valid record."""
    try:
        saved = read_json(path)
    except JSONReadError as exc:
        raise FewShotError(f"{path} is not a valid evaluation record: {exc}") from exc
    try:
        return check_record(saved)
    except FewShotError as exc:
        raise FewShotError(f"{path} is not a valid evaluation record: {exc}") from exc


def score_settings(config: Any) -> dict[str, Any]:
    """The settings of a :class:`~fewshot.config.RunConfig` that change its scores: the experiment, and the data
    set, model and method by name and options (not the data folder: the content fingerprint covers the data)."""
    settings = config.to_dict()
    out = {key: settings[key] for key in CONFIG_KEYS}
    out["data"] = {"name": settings["data"]["name"], "options": settings["data"]["options"]}
    return out


def settings_hash(settings: dict[str, Any]) -> str:
    """A short hash of :func:`score_settings` (part of a record's file name when they are not the run's own)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a run folder was trained with (its ``config.yaml``); ``None`` when that cannot be read."""
    try:
        return score_settings(RunConfig.from_dict(load_raw(Path(run_dir) / "config.yaml")))
    except (FewShotError, OSError):
        return None


def settings_difference(settings: dict[str, Any], own: dict[str, Any] | None) -> str:
    """How ``settings`` differ from a run's ``own``, as overrides (``method.classifier=ncm``); ``as trained`` when
    they do not, ``settings <hash>`` when the run's own are unknown."""
    if own is None:
        return f"settings {settings_hash(settings)}"
    mine, theirs = _leaves(settings), _leaves(own)
    changes = [f"{key}={json.dumps(mine[key]) if not isinstance(mine[key], str) else mine[key]}"
               for key in sorted(mine) if key not in theirs or theirs[key] != mine[key]]
    changes += [f"{key} unset" for key in sorted(theirs) if key not in mine]
    return " ".join(changes) or "as trained"


def _leaves(tree: dict[str, Any], parts: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted keys as overrides write them (``method.classifier``: a section's ``options`` level is skipped)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        here = (*parts, str(key))
        if isinstance(value, dict) and value:
            out.update(_leaves(value, here))
        else:
            out[".".join(p for i, p in enumerate(here) if not (i == 1 and p == "options"))] = value
    return out


def record_identity(config: Any, weights: dict[str, torch.Tensor], split: str,
                    method: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity of scoring ``weights`` under ``config`` (a :class:`~fewshot.config.RunConfig`) on ``split``,
    with what the method adds (:meth:`fewshot.methods.base.Method.record_identity`); the data fingerprint joins it
    when the split is loaded (:meth:`EvalRecord.with_data`)."""
    from fewshot import __version__

    e = config.eval
    return {"fewshot": __version__, "weights_sha256": weights_sha256(weights), "config": score_settings(config),
            "split": split, "way": e.way, "shot": e.shot, "query": e.query, "seed": e.seed, **(method or {})}


def run_record(checkpoint: Path, config: Any, weights: dict[str, torch.Tensor], split: str,
               method: dict[str, Any] | None = None) -> EvalRecord | None:
    """The record of scoring a run folder's ``checkpoint`` (``method``: what the method adds to its identity);
    ``None`` for a loose checkpoint file (nothing kept)."""
    folder = Path(checkpoint).parent
    if folder.name != "checkpoints" or not (folder.parent / "config.yaml").is_file():
        return None
    e = config.eval
    stem = f"{Path(checkpoint).stem}_{split}_{e.way}w{e.shot}s{e.query}q_seed{e.seed}"
    settings = score_settings(config)
    if settings != run_settings(folder.parent):
        stem += f"_{settings_hash(settings)}"
    return EvalRecord(folder / RECORD_FOLDER / f"{stem}.json", record_identity(config, weights, split, method))


def run_record_files(run_dir: Path, checkpoint: str, split: str) -> list[Path]:
    """The record files of a run folder for one checkpoint (``best`` / ``last``) and split (the run's own settings
    first, then any others)."""
    return sorted((run_dir / "checkpoints" / RECORD_FOLDER).glob(f"{checkpoint}_{split}_*.json"))


def record_tasks(identity: dict[str, Any]) -> dict[str, Any]:
    """What fixed a record's test tasks: the data set (name, options and content fingerprint, not its folder) and
    way, shot, query, seed and split. Records with equal tasks were scored on the same episodes."""
    data = (identity.get("config") or {}).get("data") or {}
    options = data.get("options")
    if isinstance(options, dict):  # options that change only the training split do not change the test tasks
        ignored = set(training_only_options(data.get("name")))
        options = {k: v for k, v in options.items() if k not in ignored}
    return {"data": {"name": data.get("name"), "options": options, "fingerprint": identity.get(DATA_KEY)},
            **{k: identity.get(k) for k in TASK_KEYS}}


def training_only_options(dataset: Any) -> tuple[str, ...]:
    """The options of data set ``dataset`` that change only its training split (its options class's
    ``TRAINING_ONLY``); none for a name that is not registered."""
    from fewshot import registry

    if not isinstance(dataset, str) or dataset not in registry.DATASETS:
        return ()
    return tuple(getattr(registry.DATASETS[dataset].options_class(), "TRAINING_ONLY", ()))
