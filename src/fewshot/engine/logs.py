"""Run folder logs: metrics.jsonl + metrics.csv, optional TensorBoard, PNG curves and a markdown report."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from fewshot.engine.run_folder import writing
from fewshot.io import JSONReadError, atomic_write, parse_json

FIELDS = ["iteration", "phase", "loss", "accuracy", "ci95", "lr", "seconds"]


class RunLogger:
    """Appends one row per logged step to ``metrics.jsonl`` and ``metrics.csv`` (resume-safe).

    On resume the rows up to the checkpoint's iteration are kept (see :func:`read_metrics`; with ``redo_validation``,
    not its validation row) and both files are rewritten atomically; a file that cannot be written is a
    :class:`~fewshot.engine.run_folder.WriteError`.
    """

    def __init__(self, run_dir: Path, resume_from: int = 0, redo_validation: bool = False) -> None:
        self.run_dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        rows = [r for r in read_metrics(run_dir, warn=True) if r["iteration"] <= resume_from] if resume_from else []
        if redo_validation:  # the validation of iteration `resume_from` runs again: no row of an earlier try stays
            rows = [r for r in rows if not (r["iteration"] == resume_from and r["phase"] == "val")]
        self._rewrite(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_from or None)
        except Exception:  # tensorboard is optional
            self.tb = None

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with writing(self.jsonl):
            atomic_write(self.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with writing(self.csv):
            atomic_write(self.csv, table.getvalue())

    def log(self, row: dict[str, Any]) -> None:
        with writing(self.jsonl), open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with writing(self.csv), open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, FIELDS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for key in ("loss", "accuracy", "lr"):
                if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
                    self.tb.add_scalar(f"{row['phase']}/{key}", row[key], row["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl``.

    A line that is not a metrics row (a JSON object with an integer ``iteration`` and a ``phase``) is skipped: a torn
    last line, which a process killed (or out of disk space) while appending leaves, and a damaged line anywhere else.
    The log is a record; the checkpoint is what a resume continues from, so a damaged log never blocks ``--resume``.
    With ``warn``, each skipped line is named on stderr (a resume rewrites the file without them).
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except JSONReadError:
            row = None
        if isinstance(row, dict) and type(row.get("iteration")) is int and isinstance(row.get("phase"), str):
            rows.append(row)
        elif warn:
            what = "its torn last line" if number == len(lines) else f"line {number}, which is not a metrics row"
            print(f"fewshot: warning: {path}: skipped {what}", file=sys.stderr)
    return rows


def plot_curves(run_dir: Path) -> Path | None:
    """``curves.png``: training loss and accuracy, and validation accuracy with its 95% CI, against iteration."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["phase"] == "train"]
    val = [r for r in rows if r["phase"] == "val"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], lw=1)
        ax_acc.plot([r["iteration"] for r in train], [r["accuracy"] for r in train], lw=1, label="train (query)")
    if val:
        its = [r["iteration"] for r in val]
        acc = [r["accuracy"] for r in val]
        ci = [r.get("ci95") or 0.0 for r in val]
        ax_acc.errorbar(its, acc, yerr=ci, marker="o", ms=3, capsize=2, label="validation ± 95% CI")
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="iteration", ylabel="accuracy", title="accuracy")
    if train or val:  # a run stopped before its first logged row has no curve to name
        ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    try:
        with writing(out):
            atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict[str, Any], config_yaml: str) -> Path:
    """``report.md``: what ran, how long, the best validation score (and the kept best ones), the machines each stretch
    of iterations ran on, and the config; the test score is in ``test.json`` and ``report.html``, written after it."""
    lines = [f"# Run report: {summary.get('name', run_dir.name)}", ""]
    for key in ("method", "experiment", "iterations", "wall_seconds", "iterations_per_second", "best_val_accuracy",
                "best_val_iteration", "kept_best", "status", "command"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
    for forced in summary.get("forced_resumes", []):
        lines.append(f"- **resumed with --force** at iteration {forced['iteration']}: {describe_changes(forced)}")
    stretches = segments(read_metrics(run_dir))
    if stretches:
        lines += ["", "## Where it trained", ""]
        lines += [f"- iterations {s['from']:,}-{s['to']:,}: {describe_machine(s['machine'])}" for s in stretches]
    if (run_dir / "curves.png").exists():
        lines += ["", "![curves](curves.png)"]
    lines += ["", "## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    out = run_dir / "report.md"
    with writing(out):
        atomic_write(out, "\n".join(lines))
    return out


def describe_changes(forced: dict[str, Any]) -> str:
    """``train.lr 0.001 -> 0.002, ...`` for one forced resume's ``changed`` mapping (key -> [before, after])."""
    return ", ".join(f"{key} {before} -> {after}" for key, (before, after) in forced["changed"].items())


def segments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stretches of a run's training, one per ``fewshot train`` that started or resumed it (its ``start`` row):
    ``{"from", "to", "machine"}``, the iterations it began at and reached and the machine it ran on."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if row["phase"] == "start":
            out.append({"from": row["iteration"], "to": row["iteration"], "machine": row.get("machine") or {}})
        elif row["phase"] == "train" and out:
            out[-1]["to"] = max(out[-1]["to"], row["iteration"])
    return out


def other_machines(machines: list[dict[str, Any]]) -> dict[str, Any]:
    """For a job's ``start`` row: ``{"other_machines": [...]}``, the machines (each with its ``ranks``) of the
    processes whose machine differs from rank 0's, or ``{}`` when every process ran where rank 0 did."""
    groups: list[dict[str, Any]] = []
    for rank, described in enumerate(machines[1:], start=1):
        if described == machines[0]:
            continue
        same = next((g for g in groups if {k: v for k, v in g.items() if k != "ranks"} == described), None)
        if same is None:
            groups.append({**described, "ranks": [rank]})
        else:
            same["ranks"].append(rank)
    return {"other_machines": groups} if groups else {}


def _hardware(machine: dict[str, Any]) -> str:
    cores = machine.get("cpu_cores_usable") or machine.get("cpu_cores")
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    cpu = machine.get("cpu") or "unknown CPU"
    if machine.get("cpu_generation"):
        cpu += f", {machine['cpu_generation']}"
    return f"{cpu} ({cores} cores usable), {machine.get('torch_threads')} torch " \
           f"thread(s), {gpus}"


def describe_machine(machine: dict[str, Any]) -> str:
    """One line: CPU (cores), torch threads, GPUs, processes, device / precision, torch version; then the processes
    that ran on other machines (``other_machines``), if any."""
    processes = machine.get("world_size", 1)
    line = (f"{_hardware(machine)}, {processes} process{'es' if processes != 1 else ''}, "
            f"train.device {machine.get('device')} / {machine.get('precision')}, torch {machine.get('torch')}")
    for other in machine.get("other_machines") or []:
        ranks = other.get("ranks") or []
        line += f"; rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))} on {_hardware(other)}"
    return line
