"""Run folder logs: metrics.jsonl + metrics.csv, optional TensorBoard, PNG curves and a markdown report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fewshot.io import atomic_write

FIELDS = ["iteration", "phase", "loss", "accuracy", "ci95", "lr", "seconds"]


class RunLogger:
    """Appends one row per logged step to ``metrics.jsonl`` and ``metrics.csv`` (resume-safe)."""

    def __init__(self, run_dir: Path, resume_from: int = 0) -> None:
        self.run_dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        rows = [r for r in read_metrics(run_dir) if r["iteration"] <= resume_from] if resume_from else []
        self._rewrite(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_from or None)
        except Exception:  # tensorboard is optional
            self.tb = None

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with open(self.jsonl, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, FIELDS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for key in ("loss", "accuracy", "lr"):
                if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
                    self.tb.add_scalar(f"{row['phase']}/{key}", row[key], row["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict[str, Any], config_yaml: str) -> Path:
    """``report.md``: what ran, how long, the best validation score and the test score if measured."""
    lines = [f"# Run report: {summary.get('name', run_dir.name)}", ""]
    for key in ("method", "kind", "iterations", "wall_seconds", "iterations_per_second", "best_val_accuracy",
                "best_val_iteration", "test", "status", "command"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
    if (run_dir / "curves.png").exists():
        lines += ["", "![curves](curves.png)"]
    lines += ["", "## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    out = run_dir / "report.md"
    atomic_write(out, "\n".join(lines))
    return out
