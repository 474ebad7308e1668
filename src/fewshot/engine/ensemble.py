"""A run's K best-validated checkpoints, kept while it trains and scored together.

With ``train.keep_best: K`` (K > 1) the trainer keeps, beside ``best.safetensors``, the weights of the K best
validations so far as ``checkpoints/top/<iteration>.safetensors`` (:func:`keep_top`, at each validation); the list,
best first, is in the ``extra["top_validations"]`` of every ``last`` and ``best`` checkpoint as ``[iteration,
accuracy]`` pairs, so a resumed run goes on with it. A file that drops out of the list is deleted only after the next
``last`` checkpoint no longer lists it (:func:`prune_top`), so a ``last`` never lists a file that is gone, however
the run stops. ``fewshot eval RUN --ensemble K`` scores the K best together (:class:`Ensemble`): each member adapts
to a task on its own, and the prediction is the class of highest mean probability over the members, or
(``--average logits``) of highest mean logit, which is how MAML++ (Antoniou et al. 2019;
``evaluated_test_set_using_the_best_models`` in the authors' code) scores the ensemble of its top 5 validation
checkpoints.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshot.errors import FewShotError

AVERAGES = ("probabilities", "logits")
"""What an :class:`Ensemble` averages over its members."""
TOP = "top"
"""The folder under ``checkpoints/`` that holds the kept weights."""


def scores_ensembles(kind: type) -> bool:
    """Whether runs of the experiment class ``kind`` are scored on test episodes (built on
    :class:`~fewshot.engine.experiment.EpisodicExperiment`), where ``fewshot eval --ensemble`` can score kept
    checkpoints together."""
    from fewshot.engine.experiment import EpisodicExperiment

    return issubclass(kind, EpisodicExperiment)


def check_keep_best(keep: int, kind: type, name: str) -> None:
    """Refuse ``train.keep_best`` > 1 for an experiment class ``kind`` (named ``name``) that does not
    :func:`scores_ensembles`: ``fewshot eval --ensemble`` could never score its kept files."""
    if keep > 1 and not scores_ensembles(kind):
        raise FewShotError(f"train.keep_best={keep} keeps checkpoints for `fewshot eval --ensemble`, which scores "
                           f"runs on test episodes; a {name} run keeps only its best: set train.keep_best=1")


def top_file(checkpoints: Path, iteration: int) -> Path:
    """Where the weights validated at ``iteration`` are kept."""
    return Path(checkpoints) / TOP / f"{iteration}.safetensors"


def rank(top: list[list[Any]], iteration: int, accuracy: float, keep: int) -> list[list[Any]]:
    """``top`` (``[iteration, accuracy]`` pairs, best first) with this validation added where it ranks, cut to the
    ``keep`` best. Ties go to the earlier iteration, as ``best.safetensors`` does (a later score must be higher)."""
    entries = [e for e in top if e[0] != iteration] + [[iteration, accuracy]]
    return sorted(entries, key=lambda e: (-e[1], e[0]))[:keep]


def keep_top(checkpoints: Path, top: list[list[Any]], iteration: int, accuracy: float, keep: int,
             write: Callable[[Path], None]) -> list[list[Any]]:
    """Rank the validation of ``iteration``; if it is among the ``keep`` best, ``write(path)`` its weights. Returns
    the new list (empty when ``keep`` is 1: the best alone is ``best.safetensors``). Nothing is deleted here: the
    files that dropped out go once a ``last`` checkpoint holds the new list (:func:`prune_top`)."""
    ranked = rank(top, iteration, accuracy, keep) if keep > 1 else []
    if any(e[0] == iteration for e in ranked):
        write(top_file(checkpoints, iteration))
    return ranked


def prune_top(checkpoints: Path, top: list[list[Any]]) -> None:
    """Delete the kept files that ``top`` (the list a ``last`` checkpoint has just been saved with) does not list:
    those that dropped out, and any a killed run left behind."""
    delete_kept_except(checkpoints, {top_file(checkpoints, e[0]).name for e in top})


def delete_kept_except(checkpoints: Path, names: set[str]) -> None:
    """Delete the kept files under ``checkpoints/top/`` whose names are not in ``names`` (a run's, or its mirror's)."""
    for path in (Path(checkpoints) / TOP).glob("*.safetensors"):
        if path.name not in names:
            path.unlink(missing_ok=True)


def _pair(entry: Any) -> bool:
    """Whether ``entry`` is ``[iteration, accuracy]`` (an int and a number, neither a bool)."""
    return (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int
            and isinstance(entry[1], (int, float)) and not isinstance(entry[1], bool))


def read_top(extra: dict[str, Any], source: Path) -> list[list[Any]]:
    """The kept best validations a checkpoint lists (``extra["top_validations"]``; none in one written before they
    were kept); a clear error when the list is damaged."""
    top = extra.get("top_validations", [])
    if not isinstance(top, list) or not all(_pair(e) for e in top):
        raise FewShotError(f"{source} has damaged fewshot metadata: top_validations must be a list of "
                           f"[iteration, accuracy] pairs, got {json.dumps(top)[:80]}")
    return [list(e) for e in top]


def top_checkpoints(run_dir: Path, count: int) -> list[Path]:
    """The files of the run's ``count`` best validations, best first (read from its ``last`` checkpoint); a clear
    error when the run kept fewer."""
    from fewshot.engine.checkpoint import load_checkpoint

    checkpoints = Path(run_dir) / "checkpoints"
    if count < 2:
        raise FewShotError(f"--ensemble takes a number of checkpoints >= 2, got {count}")
    last = load_checkpoint(checkpoints / "last.safetensors")
    top = read_top(last.extra, checkpoints / "last.safetensors")
    train = last.config.get("train")
    keep = train.get("keep_best", 1) if isinstance(train, dict) else 1
    if len(top) < count:
        how = (f"it keeps {keep} (train.keep_best) and has {len(top)} so far" if keep != 1 else
               "it keeps only its best (train.keep_best: 1)")
        raise FewShotError(f"{run_dir} has not kept {count} best-validated checkpoints: {how}; train with "
                           f"train.keep_best={count} or more (a resume may raise it) and validate again")
    paths = [top_file(checkpoints, int(e[0])) for e in top[:count]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FewShotError(f"{run_dir} lists {count} best checkpoints but {missing[0]} is missing"
                           f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return paths


class Ensemble(nn.Module):
    """Several weight sets of one method scored as one: each member is a copy of the method holding its own weights
    (and its own caches, e.g. a feature extractor's embeddings), adapts to a task by itself, and the prediction is
    the log of the members' mean class probabilities (``average="probabilities"``: its argmax is the class of
    highest mean probability) or their mean logits (``"logits"``). It offers what
    :func:`~fewshot.engine.evaluate.evaluate` and the experiments use of a method: ``predict``, ``device``,
    ``set_class_names``, ``end_evaluation``, ``forget_caches``, ``record_identity``. ``method`` itself is left as it
    was."""

    def __init__(self, method: nn.Module, members: list[dict[str, torch.Tensor]],
                 average: str = "probabilities") -> None:
        super().__init__()
        if not members:
            raise FewShotError("an ensemble needs at least one set of weights")
        if average not in AVERAGES:
            raise FewShotError(f"an ensemble averages one of {AVERAGES}, got {average!r}")
        self.average = average
        self.copies = nn.ModuleList()
        for weights in members:
            try:
                member = copy.deepcopy(method)
            except Exception as exc:  # a method holding something that cannot be copied
                raise FewShotError(f"cannot score an ensemble of method {getattr(method, 'name', method)!r}: it "
                                   f"cannot be copied ({type(exc).__name__}: {exc})") from exc
            member.load_state_dict(weights)
            self.copies.append(member)

    @property
    def device(self) -> torch.device:
        return self.copies[0].device

    def predict(self, episode: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.copies:
            logits = member.predict(episode).float()
            scores = logits.softmax(-1) if self.average == "probabilities" else logits
            total = scores if total is None else total + scores
        assert total is not None
        mean = total / len(self.copies)
        return mean.log() if self.average == "probabilities" else mean

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Every member's weights, numbered: what identifies the ensemble's scores (its evaluation record)."""
        return {f"{i}.{key}": value for i, member in enumerate(self.copies)
                for key, value in member.state_dict().items()}

    def set_class_names(self, names: Any) -> None:
        for member in self.copies:
            member.set_class_names(names)

    def end_evaluation(self) -> None:
        for member in self.copies:
            member.end_evaluation()

    def forget_caches(self) -> None:
        for member in self.copies:
            member.forget_caches()

    def record_identity(self, way: int) -> dict[str, Any]:
        """The members' (one method, so the same for each)."""
        return self.copies[0].record_identity(way)
