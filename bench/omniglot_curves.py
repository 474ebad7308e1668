"""Validation accuracy against training time, one plot per Omniglot cell (N-way K-shot) with every run given.

    python bench/omniglot_curves.py training/omniglot_* results/curves/runs/* --out results/curves \
        --time-to-accuracy results/time_to_accuracy.json

reads each run folder's ``config.yaml`` and ``metrics.jsonl`` (the ``val`` rows: accuracy on the run's validation
episodes, and the training wall time at that point) and writes ``<out>/omniglot_<N>w<K>s.png`` per cell and
``<out>/omniglot_curves.json`` (every point, and the machine of each stretch of training where the run recorded it:
its ``start`` rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fewshot.config import load_raw
from fewshot.engine.logs import describe_machine, read_metrics, segments


def curve(run: Path) -> dict[str, Any]:
    """One run's cell, method and validation curve."""
    raw = load_raw(run / "config.yaml")
    evaluation, train = raw.get("eval") or {}, raw.get("train") or {}
    rows = read_metrics(run)
    val = [r for r in rows if r["phase"] == "val" and r.get("seconds") is not None]
    return {
        "run": str(run), "recipe": raw.get("name"), "method": (raw.get("method") or {}).get("name"),
        "cell": f"{evaluation.get('way')}w{evaluation.get('shot')}s",
        "iterations": train.get("iterations"),
        "trained": max((r["iteration"] for r in rows if r["phase"] == "train"), default=0),
        "val_episodes": train.get("val_episodes"),
        "points": [{"iteration": r["iteration"], "seconds": r["seconds"], "accuracy": r["accuracy"],
                    "ci95": r.get("ci95")} for r in val],
        "machines": [{"from": s["from"], "to": s["to"], "machine": describe_machine(s["machine"])}
                     for s in segments(rows)],
    }


def plot(cell: str, runs: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        if not run["points"]:
            continue
        minutes = [p["seconds"] / 60 for p in run["points"]]
        ax.plot(minutes, [100 * p["accuracy"] for p in run["points"]], marker=".",
                label=f"{run['recipe']} ({run['trained']:,} of {run['iterations']:,} it)")
    way, shot = cell.split("w")
    ax.set(xlabel="training wall time (minutes)", ylabel="validation accuracy (%)",
           title=f"Omniglot {way}-way {shot[:-1]}-shot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path = out / f"omniglot_{cell}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_time_to_accuracy(measured: dict[str, Any], out: Path) -> Path:
    """Test accuracy (600 episodes, 95% interval as error bars) at each mark of ``bench/time_to_accuracy.py``, every
    measured method in one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in sorted(measured.items()):
        points = run["points"]
        ax.errorbar([p["train_seconds"] / 60 for p in points], [100 * p["accuracy"] for p in points],
                    yerr=[100 * p["ci95"] for p in points], marker="o", capsize=3,
                    label=f"{label} ({run['threads']} threads, {run['cpu']}"
                          + (f", {run['cpu_generation']})" if run.get("cpu_generation") else ")"))
    ax.set(xlabel="training time (minutes, scoring not counted)", ylabel="test accuracy (%), 600 episodes",
           title="Omniglot 5-way 1-shot: time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path = out / "time_to_accuracy_5w1s.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml + metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/curves"))
    parser.add_argument("--time-to-accuracy", type=Path, metavar="JSON",
                        help="also plot bench/time_to_accuracy.py's measurements (results/time_to_accuracy.json)")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "config.yaml").is_file() or not (r / "metrics.jsonl").is_file()]
    if missing:
        print(f"omniglot_curves: error: not a run folder (config.yaml + metrics.jsonl): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    curves = [curve(run) for run in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[dict[str, Any]]] = {}
    for c in curves:
        cells.setdefault(c["cell"], []).append(c)
    for cell, runs in sorted(cells.items()):
        print(plot(cell, runs, args.out))
    if args.time_to_accuracy is not None:
        print(plot_time_to_accuracy(json.loads(args.time_to_accuracy.read_text()), args.out))
    (args.out / "omniglot_curves.json").write_text(json.dumps({"cells": cells}, indent=1) + "\n")
    print(args.out / "omniglot_curves.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
