"""Which settings a resumed run may change.

A resumed run ends bit-identical to one trained without a break under the settings in its ``config.yaml``. Settings
that leave the computation as it was may differ from the checkpoint's: how often the run is validated, saved and
logged, how many best checkpoints it keeps (``train.keep_best``; weights that an earlier setting did not keep are
not kept afterwards), where its data are, the budget ``train.iterations`` if the learning-rate schedule does not span
it (``constant``, ``step``) and the run has not already gone past it, and where and how fast it runs
(``train.threads``, ``train.device``: the same computation, though sums may round differently there; the
``train.dist_timeout`` of a distributed run). Any other change is refused, naming the keys, unless the resume is
forced; a forced resume is recorded in the run folder (``config.yaml``, ``metrics.jsonl``, ``report.md`` and the
checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewshot.config import RunConfig
from fewshot.engine.logs import describe_changes
from fewshot.errors import FewShotError

FREE_ON_RESUME = ("train.threads", "train.device", "train.val_every", "train.val_episodes", "train.checkpoint_every",
                  "train.keep_best", "train.log_every", "train.dist_timeout", "data.root")
"""Settings a resume may change without ``--force``."""
BUDGET_SCHEDULES = ("linear", "cosine", "inverse")
"""Schedules whose learning rate at an iteration depends on ``train.iterations``."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (component options too: ``method.options.x``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(saved: dict[str, Any], config: RunConfig, done: int, force: bool = False,
                   run_dir: Path | str = "the run", budget_bound: str | None = None) -> dict[str, list[Any]]:
    """The settings of ``config`` that differ from the checkpoint's ``saved`` config in a way that could change the
    result, as ``key -> [before, after]``; a clear error unless ``force``. ``done``: iterations already trained (a
    budget below it is refused even with ``force``). ``budget_bound``: why the run's kind of experiment makes other
    batches under another ``train.iterations`` (its ``budget_bound``), if it does."""
    try:
        before = flatten(RunConfig.from_dict(saved).to_dict())
    except FewShotError:  # a config this fewshot cannot read any more: compare what it says
        before = flatten(saved)
    after = flatten(config.to_dict())
    keys = sorted(before.keys() | after.keys(), key=lambda k: (not (k.endswith(".name") or k == "experiment"), k))
    changed = {key: [before.get(key), after.get(key)] for key in keys  # names first: the biggest change
               if before.get(key) != after.get(key) and key not in FREE_ON_RESUME}
    why = ""
    if "train.iterations" in changed:
        iterations = config.train.iterations
        if iterations < done:
            raise FewShotError(f"cannot resume {run_dir}: train.iterations={iterations} but the run has already "
                               f"trained {done} iterations; resume with train.iterations >= {done}")
        schedules = {before.get("train.schedule"), config.train.schedule}
        spanning = sorted(schedules & set(BUDGET_SCHEDULES))
        if spanning:
            why = (f" (the {spanning[0]} learning-rate schedule spans train.iterations, so another budget changes the "
                   f"learning rates)")
        elif budget_bound:
            why = f" (this kind of run follows the budget: {budget_bound})"
        else:
            del changed["train.iterations"]
    if changed and not force:
        shown = dict(list(changed.items())[:6])
        listed = describe_changes({"changed": shown}) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise FewShotError(
            f"cannot resume {run_dir}: these settings differ from the run's ({done} iterations done): {listed}{why}; "
            f"a resume may change only {', '.join(FREE_ON_RESUME)} and train.iterations (under a constant or step "
            f"schedule, in a kind of run that does not follow the budget). Start a new run with another --out, or "
            f"pass --force to continue with the new settings (recorded in the run folder)")
    return changed


def forced_comment(forced: list[dict[str, Any]]) -> str:
    """``config.yaml``'s header lines recording forced resumes (YAML comments: the file stays a config)."""
    return "".join(f"# resumed with --force at iteration {f['iteration']}: {describe_changes(f)}\n" for f in forced)
