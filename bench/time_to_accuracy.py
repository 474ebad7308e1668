"""Time to accuracy: train a recipe and score it on the fixed test episodes after every few minutes of training.

What users feel is not iterations per second but how good the model is after N minutes. This script trains one recipe
with the engine's time limit, stops at each mark (minutes of training-loop wall time; validation is switched off so
every second counted is training), scores the checkpoint on the recipe's fixed test episodes (not counted), resumes,
and writes JSON plus a markdown table::

    FEWSHOT_DATA=../shared/data python bench/time_to_accuracy.py omniglot_5w1s_maml --minutes 4 8 12 --threads 2
    FEWSHOT_DATA=../shared/data python bench/time_to_accuracy.py omniglot_5w1s_protonet data.options.scheme=maml \
        --minutes 4 8 12 --threads 2 --label protonet_finn

With ``--peer learn2learn`` the same recipe's tasks train learn2learn's MAML instead (its Omniglot example's step,
``bench/peers.py``, on the standard-module copy of the recipe's Conv-4 with the same first weights, the same
batches, inner steps, learning rates and Adam), and at each mark its weights are copied into the recipe's model and
scored exactly as ours (the recipe's test-time steps, transduction and episodes). Needs ``scripts/setup_bench.sh``::

    FEWSHOT_DATA=../shared/data python bench/time_to_accuracy.py omniglot_5w1s_maml train.lr=0.003 \
        method.inner_lr=0.5 --peer learn2learn --minutes 4 8 12 --threads 2 --label learn2learn_maml

Run it on an otherwise idle machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.config import load_config
from fewshot.engine import scoring
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import train
from fewshot.hardware import machine

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import Case, learn2learn, load_standard_conv4, standard_conv4  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, nargs="+", default=[4, 8, 12], help="marks, in training minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--label", help="name of this curve (default: the recipe)")
    parser.add_argument("--peer", choices=["learn2learn"], help="train the recipe's tasks with this library's MAML")
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
    if args.peer:
        trainer = PeerTrainer(experiment, args.peer)
    points, trained = [], 0.0
    for i, mark in enumerate(sorted(args.minutes)):
        if args.peer:
            trained, iterations = trainer.train_until(60 * mark)
        else:
            result = train(experiment, run_dir, resume=i > 0, progress=False,
                           time_limit=max(1e-9, 60 * mark - trained))
            trained, iterations = result.wall_seconds, result.iterations
        began = time.perf_counter()
        score = scoring.score(experiment, episodes=args.episodes)
        points.append({"minutes": mark, "train_seconds": round(trained, 1),
                       "iterations": iterations, "accuracy": score.accuracy, "ci95": score.ci95,
                       "episodes": score.episodes, "eval_seconds": round(time.perf_counter() - began, 1)})
        print(json.dumps(points[-1]), flush=True)
    here = machine()
    report = {"label": label, "recipe": args.recipe, "overrides": args.overrides, "peer": args.peer,
              "threads": args.threads,
              "cpu": here["cpu"], "cpu_generation": here["cpu_generation"], "torch": torch.__version__,
              "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{label}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"| {label}: minutes of training | iterations | test accuracy (%) |", "|---|---|---|"]
    lines += [f"| {p['minutes']:g} ({p['train_seconds']:.0f} s) | {p['iterations']} | "
              f"{100 * p['accuracy']:.2f} ± {100 * p['ci95']:.2f} |" for p in points]
    (args.out / f"{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def refuse(message: str) -> None:
    """One line naming the problem, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


class PeerTrainer:
    """A peer library's MAML trained on the experiment's batches; its weights scored through the experiment."""

    def __init__(self, experiment: Any, peer: str) -> None:
        config, method = experiment.config, experiment.method
        mc = method.config
        if config.method.name != "maml" or mc.head_init != "trained" or mc.learn_inner_lr or mc.plus_plus:
            refuse(f"--peer {peer} trains plain MAML: use a MAML recipe with its trained head and no "
                   f"learned rates or MAML++ options")
        self.experiment, self.model = experiment, method.model
        self.net = standard_conv4(self.model)
        case = Case("fomaml" if mc.first_order else "maml", inner_steps=mc.inner_steps, inner_lr=mc.inner_lr,
                    outer_lr=config.train.lr)
        if config.train.optimizer != "adam" or config.train.schedule != "constant" or config.train.precision != "fp32":
            refuse("--peer: the peer's step uses Adam at a constant rate in fp32, as the recipe must")
        self.step = learn2learn(self.model, case, net=self.net)
        self.iterations, self.seconds = 0, 0.0

    def train_until(self, seconds: float) -> tuple[float, int]:
        """Train (drawing batches included) until ``seconds`` of training in all; copy the weights into ours."""
        while self.seconds < seconds:
            began = time.perf_counter()
            loss = self.step(self.experiment.batch(self.iterations))
            self.seconds += time.perf_counter() - began
            self.iterations += 1
            if loss != loss:
                refuse(f"--peer: the loss is NaN at iteration {self.iterations}")
        load_standard_conv4(self.net, self.model)
        return self.seconds, self.iterations


if __name__ == "__main__":
    main()
