"""A plain Reptile written from the paper (Nichol, Achiam & Schulman 2018, Algorithm 2) and OpenAI's code
(openai/supervised-reptile: ``reptile.py``, ``models.py``), independent of ``fewshot.methods.reptile``.

Plain loops: tasks one after the other, each trained with ``torch.optim.Adam(betas=(0, 0.999))`` on a copy of the
weights, then ``theta += epsilon * (mean(phi) - theta)``. Its own Conv-4 forward (4 x [3x3 conv stride 2, batch norm
with batch statistics, ReLU], flatten, dense). ``adam_state`` says what happens to Adam's state between tasks:

* ``"task"`` — a fresh Adam for every task (and every test task);
* ``"shared"`` — what OpenAI's code does: one Adam whose second moment and step count run on across tasks and
  meta-iterations (only the weights are reset to theta before a task: ``Reptile._model_state`` holds the trainable
  variables only); a test task adapts from a copy of that state, which is then thrown away
  (``Reptile._full_state``).

Inner mini-batches: OpenAI's ``_mini_batches`` (successive shuffles of the task's examples, a batch may straddle
two), shuffled by ``torch.randperm`` from the generator given per task; :func:`task_generators` seeds them as
fewshot's Reptile does, so both draw the same batches.

The learning curve (``python bench/reptile_reference.py``) trains fewshot's Reptile and this one from the same seed,
on the same tasks (fewshot's ``TaskSampler``), and scores both every ``--val-every`` iterations on the same fixed
validation tasks; it writes ``results/reptile_check.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def conv4_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """OpenAI's ``OmniglotModel``: 4 x (conv 3x3 stride 2, batch norm on the batch, ReLU), flatten, dense."""
    h = x.unsqueeze(1) if x.dim() == 3 else x
    for i in range(4):
        w, b, gamma, beta = params[4 * i : 4 * i + 4]
        h = F.relu(F.batch_norm(F.conv2d(h, w, b, stride=2, padding=1), None, None, gamma, beta, training=True))
    return F.linear(h.flatten(1), params[16], params[17])


def mini_batches(size: int, batch: int, steps: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """OpenAI's ``_mini_batches`` (without replacement): walk successive shuffles, ``steps`` batches of ``batch``."""
    picks, current = [], []
    while True:
        for i in torch.randperm(size, generator=generator).tolist():
            current.append(i)
            if len(current) == batch:
                picks.append(torch.tensor(current))
                current = []
                if len(picks) == steps:
                    return picks


def task_generators(seeds: torch.Tensor) -> list[torch.Generator]:
    """One generator per task: one draw from torch's global state per meta-iteration, mixed with each task's seed."""
    step = int(torch.randint(2**62, (1,)))
    return [torch.Generator().manual_seed(step ^ int(s)) for s in seeds]


class PlainReptile:
    def __init__(self, params: list[torch.Tensor], adam_state: str = "shared", inner_lr: float = 1e-3,
                 inner_steps: int = 5, inner_batch: int = 10, test_steps: int = 50, test_batch: int = 5,
                 reduction: str = "sum") -> None:
        """``reduction``: the inner loss over a mini-batch; ``"sum"`` as OpenAI's code (TensorFlow's ``minimize`` of
        the vector of per-example losses differentiates their sum)."""
        assert adam_state in ("task", "shared") and reduction in ("sum", "mean")
        self.reduction = reduction
        self.theta = [p.detach().clone() for p in params]
        self.fast = [p.clone().requires_grad_() for p in self.theta]
        self.adam_state, self.inner_lr = adam_state, inner_lr
        self.inner_steps, self.inner_batch, self.test_steps, self.test_batch = (inner_steps, inner_batch,
                                                                                test_steps, test_batch)
        self.optimizer = self.new_adam()

    def new_adam(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.fast, lr=self.inner_lr, betas=(0.0, 0.999), eps=1e-8)

    def train_task(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
                   generator: torch.Generator | None, optimizer: torch.optim.Adam) -> list[torch.Tensor]:
        with torch.no_grad():
            for f, p in zip(self.fast, self.theta, strict=True):
                f.copy_(p)
        for pick in mini_batches(len(y), batch, steps, generator):
            loss = F.cross_entropy(conv4_forward(self.fast, x[pick]), y[pick], reduction=self.reduction)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return [f.detach().clone() for f in self.fast]

    def meta_step(self, support_x: torch.Tensor, support_y: torch.Tensor, epsilon: float,
                  generators: list[torch.Generator | None]) -> None:
        """Algorithm 2: train each task from theta in turn, then move theta towards the mean of the task weights."""
        phis = []
        for t in range(len(support_y)):
            optimizer = self.optimizer if self.adam_state == "shared" else self.new_adam()
            phis.append(self.train_task(support_x[t], support_y[t], self.inner_steps, self.inner_batch,
                                        generators[t], optimizer))
        for i, p in enumerate(self.theta):
            p += epsilon * (torch.stack([phi[i] for phi in phis]).mean(0) - p)

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Adapt to one test task (``test_steps`` Adam steps), then score its queries in one batch (transductive)."""
        optimizer = self.new_adam()
        if self.adam_state == "shared":  # continue from the training state; the copy is dropped afterwards
            optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        batch = min(self.test_batch, len(support_y))
        fast = self.train_task(support_x, support_y, self.test_steps, batch, None, optimizer)
        with torch.no_grad():
            return conv4_forward(fast, query_x)


def curve(args: argparse.Namespace) -> dict:
    from fewshot.data.omniglot import omniglot
    from fewshot.data.tasks import TaskSampler, fixed_episodes
    from fewshot.engine.evaluate import evaluate
    from fewshot.methods.reptile import Reptile, ReptileConfig
    from fewshot.models.conv4 import Conv4

    torch.set_num_threads(args.threads)
    train_set, val_set = omniglot("train", args.data), omniglot("val", args.data)
    sampler = TaskSampler(train_set, 5, 10, 0, seed=0)
    val_tasks = list(fixed_episodes(val_set, 5, 1, 15, args.val_episodes, seed=1))
    out: dict = {}
    for arm in args.arms:
        torch.manual_seed(0)
        model = Conv4(5, variant="strided", pool="flatten")
        shared = {"adam_state": "shared"} if arm == "fewshot_shared" else {}
        ours = None if arm.startswith("plain") else Reptile(model, ReptileConfig(transductive=True, **shared))
        plain = PlainReptile(model.meta_parameters(), "shared" if arm == "plain_shared" else "task",
                             reduction="sum" if arm == "plain_shared" else "mean")
        torch.manual_seed(0)
        points, began, trained = [], time.perf_counter(), 0.0
        for it in range(args.iterations + 1):
            if it % args.val_every == 0:
                with torch.random.fork_rng():  # scoring draws nothing from the training's random stream
                    if ours is not None:
                        acc = evaluate(ours, val_set, 5, 1, 15, args.val_episodes, seed=1).accuracy
                    else:
                        right = [(plain.predict(e.support_x[t], e.support_y[t], e.query_x[t]).argmax(-1)
                                  == e.query_y[t]).float().mean().item()
                                 for e in val_tasks for t in range(e.num_tasks)]
                        acc = sum(right) / len(right)
                points.append({"iteration": it, "val_accuracy": acc, "train_seconds": round(trained, 1)})
                print(arm, points[-1], flush=True)
            if it == args.iterations:
                break
            start = time.perf_counter()
            episode = sampler.sample(5, it)
            epsilon = 1.0 - it / args.schedule_iterations  # meta step 1 annealed linearly to 0 (paper)
            if ours is not None:
                ours.train()
                for p in model.meta_parameters():
                    p.grad = None
                ours.training_gradient(episode)
                with torch.no_grad():
                    for p in model.meta_parameters():
                        p -= epsilon * p.grad
            else:
                plain.meta_step(episode.support_x, episode.support_y, epsilon, task_generators(episode.seeds))
            trained += time.perf_counter() - start
        out[arm] = {"points": points, "seconds_per_iteration": trained / args.iterations,
                    "wall_seconds": time.perf_counter() - began}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data root (else $FEWSHOT_DATA)")
    parser.add_argument("--arms", nargs="+", default=["fewshot_task", "plain_shared"],
                        choices=["fewshot_task", "fewshot_shared", "plain_task", "plain_shared"])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--schedule-iterations", type=int, default=100_000, help="the annealing horizon")
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/reptile_check.json")
    args = parser.parse_args()
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    arms = curve(args)
    results.setdefault("curves", {}).update(arms)
    results["curve_settings"] = {k: v for k, v in vars(args).items() if k not in ("arms", "out", "data")}
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
