"""Meta-training speed of MAML++ against MAML on Omniglot 5-way 1-shot (iterations/s, one process).

Each case builds the experiment of a recipe with overrides, runs one untimed iteration, then times ``--iters``
iterations (meta-gradient + Adam step) on the recipe's own training batches; cases alternate round by round and the
figure is the median over ``--rounds``. The MAML++ cases are timed at an early iteration (first order, multi-step
loss) and a late one (second order, last step's loss alone).

    PYTHONPATH=src python bench/mamlpp_speed.py --iters 3 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewshot.config import load_config
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import make_optimizer

MAMLPP_OFF = ["method.multi_step_loss=false", "method.per_step_lr=false", "method.per_step_bn_weights=false",
              "method.per_step_bn_stats=false", "method.first_order_iterations=0"]
CASES: dict[str, tuple[str, list[str], int]] = {
    # name: (recipe, overrides, first iteration timed)
    "maml (recipe: 1 step, strided)": ("omniglot_5w1s_maml", [], 0),
    "maml, mamlpp's net and 5 steps, fast path": ("omniglot_5w1s_mamlpp", MAMLPP_OFF, 30000),
    "maml, mamlpp's net and 5 steps, per-task path": ("omniglot_5w1s_mamlpp", [*MAMLPP_OFF, "method.reference=true"],
                                                       30000),
    "mamlpp early (first order, MSL)": ("omniglot_5w1s_mamlpp", [], 0),
    "mamlpp late (second order)": ("omniglot_5w1s_mamlpp", [], 30000),
}


def time_case(recipe: str, overrides: list[str], start: int, iters: int, meta_batch: int, root: str | None) -> float:
    config = load_config(recipe, [*overrides, f"train.meta_batch={meta_batch}", "train.device=cpu"])
    experiment = build_experiment(config, root)
    method = experiment.method
    method.train()
    optimizer = make_optimizer(method.meta_parameters(), config.train)

    def step(iteration: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        method.training_gradient(experiment.batch(iteration))
        optimizer.step()

    step(start)  # warm-up (and the data set's first load)
    began = time.perf_counter()
    for i in range(iters):
        step(start + 1 + i)
    return iters / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speeds: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, (recipe, overrides, start) in CASES.items():
            speeds[name].append(time_case(recipe, overrides, start, args.iters, args.meta_batch, args.data_root))
    print(f"meta_batch {args.meta_batch}, {args.threads} thread(s), {args.iters} timed iterations x {args.rounds} "
          f"rounds (median it/s)")
    for name, values in speeds.items():
        print(f"{name:48s} {statistics.median(values):7.3f} it/s")


if __name__ == "__main__":
    main()
