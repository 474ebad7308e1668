"""Time to accuracy: train a recipe and score it on the fixed test episodes after every few minutes of training.

What users feel is not iterations per second but how good the model is after N minutes. This script trains one recipe
with the engine's time limit, stops at each mark (minutes of training-loop wall time; validation is switched off so
every second counted is training), scores the checkpoint on the recipe's fixed test episodes (not counted), resumes,
and writes JSON plus a markdown table::

    FEWSHOT_DATA=../shared/data python bench/time_to_accuracy.py omniglot_5w1s_maml --minutes 4 8 12 --threads 2
    FEWSHOT_DATA=../shared/data python bench/time_to_accuracy.py omniglot_5w1s_protonet data.options.scheme=maml \
        --minutes 4 8 12 --threads 2 --label protonet_finn

Run it on an otherwise idle machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from fewshot.config import load_config
from fewshot.engine import scoring
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import train
from fewshot.hardware import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, nargs="+", default=[4, 8, 12], help="marks, in training minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--label", help="name of this curve (default: the recipe)")
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/time_to_accuracy"))
    args = parser.parse_args()

    label = args.label or args.recipe
    overrides = [*args.overrides, "train.val_episodes=0", f"train.threads={args.threads}",
                 "train.checkpoint_every=1000000"]
    config = load_config(args.recipe, overrides)
    run_dir = args.out / label / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    load_before = os.getloadavg()
    experiment = build_experiment(config, args.data_root)  # each resume reloads weights, optimizer and RNG
    points, trained = [], 0.0
    for i, mark in enumerate(sorted(args.minutes)):
        result = train(experiment, run_dir, resume=i > 0, progress=False, time_limit=max(1e-9, 60 * mark - trained))
        trained = result.wall_seconds
        began = time.perf_counter()
        score = scoring.score(experiment, episodes=args.episodes)
        points.append({"minutes": mark, "train_seconds": round(result.wall_seconds, 1),
                       "iterations": result.iterations, "accuracy": score.accuracy, "ci95": score.ci95,
                       "episodes": score.episodes, "eval_seconds": round(time.perf_counter() - began, 1)})
        print(json.dumps(points[-1]), flush=True)
    report = {"label": label, "recipe": args.recipe, "overrides": args.overrides, "threads": args.threads,
              "cpu": machine()["cpu"], "torch": torch.__version__, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{label}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"| {label}: minutes of training | iterations | test accuracy (%) |", "|---|---|---|"]
    lines += [f"| {p['minutes']:g} ({p['train_seconds']:.0f} s) | {p['iterations']} | "
              f"{100 * p['accuracy']:.2f} ± {100 * p['ci95']:.2f} |" for p in points]
    (args.out / f"{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
