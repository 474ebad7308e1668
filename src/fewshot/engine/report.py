"""``fewshot report RUN``: what a run folder holds, gathered for one self-contained HTML page
(:mod:`fewshot.engine.html_report` draws it).

Everything on the page is read from the run folder, never recomputed differently: the learning curves from
``metrics.jsonl``, the test figures from the evaluation records of the best checkpoint (``checkpoints/eval/``, valid
records of the run's own settings and of the weights the best checkpoint holds now), the confusion data from the
per-query predictions kept beside them (:mod:`fewshot.engine.predictions`), ``test.json`` and ``config.yaml``.
Accuracy at other shot counts (``--shots``) is scored by :func:`fewshot.engine.scoring.score`, the one scoring path,
which records it, so a second call reuses it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewshot.engine.evaluate import mean_ci95
from fewshot.engine.logs import read_metrics, segments
from fewshot.engine.predictions import confusion_counts, read_predictions
from fewshot.engine.records import read_record, run_record_files, run_settings
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, atomic_write, read_json

REPORT_NAME = "report.html"
MARKER = "<!-- fewshot-report: written by `fewshot report`; safe to overwrite -->"
"""The first line of every page this module writes; a file without it is never overwritten."""
FORMAT = "fewshot-report-v1"


def check_run_folder(run_dir: Path) -> None:
    if not (Path(run_dir) / "config.yaml").is_file():
        what = "does not exist" if not Path(run_dir).exists() else "is not a run folder (it has no config.yaml)"
        raise FewShotError(f"{run_dir} {what}")


def is_report(path: Path) -> bool:
    """Whether ``path`` is a page this module wrote (its first line is :data:`MARKER`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def write_report(run_dir: Path, out: Path | None = None, note: Callable[[str], None] | None = None,
                 best_sha256: str | None = None) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN/report.html``), atomically; refuses to replace
    a file that is not a fewshot report. ``best_sha256``: the best checkpoint's weights hash when the caller holds
    those weights already (``fewshot train`` after its test), so the checkpoint is not read again."""
    from fewshot.engine.html_report import render

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    if out.is_dir():
        raise FewShotError(f"{out} is a folder; give --out a file name")
    if out.exists() and not is_report(out):
        raise FewShotError(f"{out} exists and is not a fewshot report; not overwriting it (choose another --out)")
    data = collect(run_dir, note, best_sha256)
    atomic_write(out, render(data))
    return out


def collect(run_dir: Path, note: Callable[[str], None] | None = None, best_sha256: str | None = None,
            ) -> dict[str, Any]:
    """The report's content (plain JSON data; the page embeds it too)."""
    from fewshot import __version__
    from fewshot.config import load_raw

    run_dir = Path(run_dir)
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8", errors="replace")
    raw = load_raw(run_dir / "config.yaml")
    rows = read_metrics(run_dir)
    evaluations, notes = current_evaluations(run_dir, raw, best_sha256)
    for message in notes:
        if note is not None:
            note(message)
    e = raw.get("eval") or {}
    main_key = (e.get("way"), e.get("query"), e.get("seed"))
    main = next((r for r in evaluations if (r["way"], r["query"], r["seed"]) == main_key
                 and r["shot"] == e.get("shot")), None)
    shots = sorted((r for r in evaluations if (r["way"], r["query"], r["seed"]) == main_key), key=lambda r: r["shot"])
    test = _read_json(run_dir / "test.json")
    return {
        "format": FORMAT, "fewshot": __version__, "run": raw.get("name") or run_dir.name, "folder": str(run_dir),
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "summary": summary(raw, rows, test),
        "metrics": rows,
        "evaluation": _without_predictions(main),
        "shots": [_without_predictions(r) | {"scores": None} for r in shots],
        "confusion": confusion(main) if main is not None else None,
        "notes": notes,
        "config_yaml": config_text,
        "environment": environment(raw),
        "segments": segments(rows),
    }


def summary(raw: dict[str, Any], rows: list[dict[str, Any]], test: Any) -> dict[str, Any]:
    train = raw.get("train") or {}
    planned = train.get("iterations")
    done = max((r["iteration"] for r in rows if r.get("phase") == "train"), default=0)
    val = [r for r in rows if r.get("phase") == "val"]
    best = max(val, key=lambda r: r["accuracy"], default=None)  # the first best, as training picks it
    return {
        "method": (raw.get("method") or {}).get("name"), "experiment": raw.get("experiment"),
        "data": (raw.get("data") or {}).get("name"), "model": (raw.get("model") or {}).get("name"),
        "iterations": planned, "iterations_done": done,
        "status": "finished" if done == planned else f"stopped at iteration {done} of {planned}",
        "wall_seconds": max((r.get("seconds") or 0.0 for r in rows), default=None),
        "best_val_accuracy": best["accuracy"] if best else None,
        "best_val_ci95": best.get("ci95") if best else None,
        "best_val_iteration": best["iteration"] if best else None,
        "test": test if isinstance(test, dict) else None,
    }


def current_evaluations(run_dir: Path, raw: dict[str, Any], best_sha256: str | None = None,
                        ) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid test records of the best checkpoint under the run's own settings and the weights it holds now,
    with their predictions; and notes on the records left out."""
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.hashing import weights_sha256

    split = (raw.get("eval") or {}).get("split", "test")
    files = run_record_files(run_dir, "best", split)
    best = run_dir / "checkpoints" / "best.safetensors"
    if not files:
        return [], []
    if not best.is_file():
        return [], [f"{run_dir} has evaluation records but no best checkpoint; they are left out"]
    sha = best_sha256 or weights_sha256(load_checkpoint(best).weights)
    own = run_settings(run_dir)
    out, notes = [], []
    for path in files:
        try:
            identity, scores = read_record(path)
        except FewShotError as exc:
            notes.append(f"{exc}; left out")
            continue
        if identity.get("config") != own:
            continue  # scored under other settings (`fewshot eval RUN method.x=y`): not this run's figures
        if identity.get("weights_sha256") != sha:
            notes.append(f"{path} holds scores of other weights than the best checkpoint's; left out")
            continue
        if not scores:
            continue
        mean, ci = mean_ci95(scores)
        found = read_predictions(path, identity, scores)
        out.append({"record": str(path.relative_to(run_dir)), "way": identity.get("way"),
                    "shot": identity.get("shot"), "query": identity.get("query"), "seed": identity.get("seed"),
                    "split": identity.get("split"), "episodes": len(scores), "accuracy": mean,
                    "ci95": None if ci != ci else ci, "scores": scores,
                    "predictions": found})
    return out, notes


def confusion(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """Counts of (true class, predicted class) over the evaluation's queries, in the data set's class ids, with
    the names of the classes; ``None`` when no predictions were kept."""
    if evaluation.get("predictions") is None:
        return None
    episodes, names = evaluation["predictions"]
    counts = confusion_counts(episodes)
    queries = sum(counts.values())
    correct = sum(n for (t, p), n in counts.items() if t == p)
    per_class: dict[int, list[int]] = {}
    for (t, p), n in counts.items():
        total = per_class.setdefault(t, [0, 0])
        total[0] += n
        total[1] += n if t == p else 0
    return {
        "queries": queries, "correct": correct, "episodes": len(episodes),
        "classes": len(per_class), "names": {str(c): names[str(c)] for c in sorted(per_class)},
        "counts": [[t, p, n] for (t, p), n in sorted(counts.items())],
        "per_class": [[c, n, ok] for c, (n, ok) in sorted(per_class.items())],
    }


def environment(raw: dict[str, Any]) -> dict[str, Any]:
    """The machine writing the report (the training machine when ``fewshot train`` writes it)."""
    from fewshot import __version__
    from fewshot.hardware import machine

    train = raw.get("train") or {}
    return {
        "fewshot": __version__, **machine(),
        "world_size": train.get("world_size", 1), "train_precision": train.get("precision"),
        "train_device": train.get("device"),
    }


def score_shots(run_dir: Path, shots: list[int], episodes: int | None = None, data_root: str | None = None,
                progress: bool = False, note: Callable[[str], None] | None = None) -> list[int]:
    """Score the best checkpoint at each of ``shots`` not yet recorded with at least ``episodes`` (default the
    run's ``eval.episodes``) episodes, through :func:`fewshot.engine.scoring.score` (which records them); the shot
    counts scored. A shot count the data cannot serve (too few examples per class) is noted and skipped."""
    from fewshot.config import RunConfig, apply_overrides, load_raw
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.scoring import load_weights, score

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    if any(s < 1 for s in shots):
        raise FewShotError(f"--shots must be counts >= 1, got {','.join(map(str, shots))}")
    best = run_dir / "checkpoints" / "best.safetensors"
    if not best.is_file():
        raise FewShotError(f"{run_dir} has no best checkpoint ({best}) to score")
    raw = load_raw(run_dir / "config.yaml")
    want = episodes or (raw.get("eval") or {}).get("episodes") or 600
    e = raw.get("eval") or {}
    have = {r["shot"]: r["episodes"] for r in current_evaluations(run_dir, raw)[0]
            if (r["way"], r["query"], r["seed"]) == (e.get("way"), e.get("query"), e.get("seed"))}
    missing = [s for s in dict.fromkeys(shots) if have.get(s, 0) < want]
    if not missing:
        return []
    ckpt = load_checkpoint(best)
    done = []
    for shot in missing:
        config = RunConfig.from_dict(apply_overrides(ckpt.config, [f"eval.shot={shot}"]))
        config.train.use_threads()
        try:
            experiment = build_experiment(config, data_root)
            load_weights(experiment.method, ckpt.weights, best)
            result = score(experiment, best, want, progress=progress)
        except FewShotError as exc:
            if note is not None:
                note(f"{shot}-shot not scored: {exc}")
            continue
        if note is not None:
            note(f"{shot}-shot: {result}")
        if not any(p.name.startswith(f"best_{config.eval.split}_{config.eval.way}w{shot}s")
                   for p in run_record_files(run_dir, "best", config.eval.split)):
            if note is not None:
                note("this kind of run keeps no per-episode records (it scores in one pass), so the report cannot "
                     "show accuracy against shots; --shots is for episodic runs")
            break
        done.append(shot)
    return done


def _without_predictions(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {k: v for k, v in evaluation.items() if k != "predictions"} | {
        "predictions_kept": evaluation.get("predictions") is not None}


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except JSONReadError:
        return None
