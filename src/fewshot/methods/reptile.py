"""Reptile (Nichol, Achiam & Schulman 2018).

Each task trains a copy of the weights with Adam (beta1 = 0, as the paper) on mini-batches of its support set; the
meta-gradient is ``theta - mean(phi)``, so the outer SGD step with learning rate ``epsilon`` is exactly Reptile's
``theta += epsilon * (mean(phi) - theta)`` (anneal ``epsilon`` with the engine's linear schedule, as the paper).

When the model offers the task-batched capability (:class:`fewshot.models.base.TaskBatched`, as Conv-4 does) and
each task has its own Adam (``adam_state: task``), the tasks of a meta-batch train together (each with its own
weights and batch-norm statistics, Adam batched over tasks), on exactly the mini-batches the per-task loop draws;
``reference=True`` keeps the per-task loop (same results to float tolerance). The model must offer the functional
forward of :class:`fewshot.models.base.Functional`.

Queries at test time (``adapt``'s predictor and ``predict``; training is the same either way), per ``transductive``:
``false`` (the default) scores each query in a batch of its own, the support set followed by that query, so that its
answer does not depend on the other queries (:func:`fewshot.models.base.each_query_with_support`); ``true`` scores
a task's queries in one batch, batch statistics over the query batch, as the paper's code evaluates ("transductive"
in its tables, and in the reproduction recipes). Configs written before the option existed (the shipped ``zoo/``
checkpoints) read as ``true`` (:func:`fewshot.config.upgrade`).

Adam's state between tasks, per ``adam_state``: ``"task"`` (the default, and what configs written before the option
existed did, the shipped ``zoo/`` checkpoint among them) starts every task, training and test alike, with a fresh
Adam; ``"shared"`` is what the paper's code does (openai/supervised-reptile resets only the trainable variables
before a task): one second-moment estimate and step count run on from task to task and across meta-iterations, the
tasks of a meta-batch trained one after the other, and a test task adapts from a copy of that state, which is then
dropped (its authors: "Reptile benefits from the Adam second moment estimate", openai/supervised-reptile#28). The
state is kept in buffers of the method, so checkpoints carry it and a resumed run continues exactly. ``"shared"``
trains tasks one at a time (the task-batched path does not apply: each task starts from the state the previous one
left) and cannot split a meta-batch over the processes of a distributed run. It also takes the paper's code's inner
loss, the sum over the mini-batch (TensorFlow's ``minimize`` of the per-example losses) rather than the mean: Adam
does not see the difference within a task, but with the state carried over, test-time steps on a smaller batch (5
support examples against 10 while training, at 5-way 1-shot) are smaller relative to the second moment, as there.

While meta-training, each task's inner mini-batches are drawn from its own generator, seeded by the episode's
``seeds[t]`` (a function of the run seed, the iteration and the task's place in the batch) mixed with one number drawn
from torch's global random state per step (so the draws still follow the global seed, and a resumed run replays
them), so a task trains the same whichever other tasks share its batch and whichever process of a distributed run
trains it (every process draws the same number: they share the global random state). Adapting to a test task
(:meth:`adapt`, :meth:`predict`) draws from torch's global random state, as before (the fixed evaluation protocol
seeds it), so scores of existing checkpoints do not change.

The output layer a task's weights start from, per ``head_init`` (so a model trained 5-way adapts to tasks of any
way; the model keeps the trained way's head, ``Method.builds_head``): ``trained`` (the default) is the meta-learned
head when the task's way is the trained way, for fewer classes its first rows
(:data:`fewshot.methods.heads.FEWER_WAY_INIT`) and for more a zero head
(:data:`fewshot.methods.heads.REPTILE_OTHER_WAY_INIT`), as measured on Omniglot's 3-way and 20-way tasks
(``results/omniglot.md``); ``rows`` the
trained head's first ``way`` rows (at most the trained way); ``zeros`` a zero head; ``prototypes`` Proto-MAML's head,
``w_c = 2 p_c``, ``b_c = -‖p_c‖²`` for the means ``p_c`` of the support features
under the current body (computed over the whole support set before the inner steps). When a task starts from a built
head (zeros, prototypes, or rows: a training task of fewer classes than the head has), training moves the body
alone; the trained head gets no update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Method, accuracy
from fewshot.methods.fast_weights import FastWeights
from fewshot.methods.heads import (
    REPTILE_OTHER_WAY_INIT,
    check_head_init,
    head_identity,
    prototype_head_params,
    resolve_head_init,
    task_head_plan,
    trained_rows,
    zero_head,
)
from fewshot.models.base import batches_tasks, each_query_with_support, require_functional

QUERY_CHUNK = 8
"""Tasks per no-grad query forward on the fast path (bounds its memory)."""
ADAM_STATES = ("task", "shared")


@dataclass
class ReptileConfig:
    inner_steps: int = 5
    inner_lr: float = 1e-3
    inner_batch: int = 10
    """Support examples per inner step (cycling through a shuffled support set)."""
    test_inner_steps: int = 50
    test_inner_batch: int = 5
    adam_beta2: float = 0.999
    reference: bool = False
    """Train the tasks one by one with ``torch.optim.Adam`` instead of all at once (same results, slower)."""
    adam_state: str = "task"
    """``"task"``: a fresh Adam for every task; ``"shared"``: Adam's second moment and step count carry over from task
    to task and into test-time adaptation (a copy), as the paper's code."""
    transductive: bool = False
    """Test time: score a task's queries in one batch (batch statistics over the query batch, as the paper's code;
    a query's answer then depends on the others) instead of each query with the support set alone."""
    head_init: str = "trained"
    """The output layer a task starts from: ``trained`` (the meta-learned one; for a task of fewer classes its first
    rows, of more ``prototypes``), ``zeros``, ``prototypes`` (Proto-MAML: ``2·p_c``, ``-‖p_c‖²`` from the support
    features), or ``rows`` (the trained head's first ``way`` rows; at most the trained way)."""

    def __post_init__(self) -> None:
        check_head_init(self.head_init)
        for name in ("inner_steps", "inner_batch", "test_inner_steps", "test_inner_batch"):
            if getattr(self, name) < 1:
                raise FewShotError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.inner_lr > 0:
            raise FewShotError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.adam_state not in ADAM_STATES:
            raise FewShotError(f"adam_state must be one of {ADAM_STATES}, got {self.adam_state!r}")


def task_generators(episode: Episode) -> list[torch.Generator] | None:
    """One generator per task, seeded by ``episode.seeds`` and one draw from the global random state (``None`` when
    the episode carries no seeds: then the global random state is used, task after task)."""
    if episode.seeds is None:
        return None
    step = int(torch.randint(2**62, (1,)))
    return [torch.Generator().manual_seed(step ^ int(seed)) for seed in episode.seeds]


class Reptile(Method):
    name = "reptile"
    builds_head = True
    needs_query = False  # trains on the support set; queries (if any) only measure accuracy

    def __init__(self, model: nn.Module, config: ReptileConfig | None = None) -> None:
        super().__init__()
        require_functional(model, "Reptile")
        self.model = model
        self.config = config or ReptileConfig()
        self.transductive = self.config.transductive
        self.shared_state = self.config.adam_state == "shared"
        if self.shared_state:  # buffers: in checkpoints, on the method's device
            self.register_buffer("adam_step", torch.zeros((), dtype=torch.float32))
            for i, p in enumerate(model.meta_parameters()):
                self.register_buffer(f"adam_second_{i}", torch.zeros_like(p, memory_format=torch.preserve_format))

    def adam_state(self) -> dict[str, torch.Tensor | list[torch.Tensor]] | None:
        """The shared Adam state (step count, second moments; the buffers themselves), ``None`` when per task."""
        if not self.shared_state:
            return None
        count = len(self.model.meta_parameters())
        return {"step": self.adam_step, "second": [getattr(self, f"adam_second_{i}") for i in range(count)]}

    def record_identity(self, way: int) -> dict[str, str]:
        return head_identity(self.config.head_init, way, self.model, more=REPTILE_OTHER_WAY_INIT)

    def fast_path(self, x: object) -> bool:
        """Whether the task-batched path applies (the model offers it, tensor inputs, not ``reference``)."""
        return (not self.config.reference and not self.shared_state and batches_tasks(self.model)
                and isinstance(x, torch.Tensor))

    def task_start(self, x: torch.Tensor, y: torch.Tensor, way: int,
                   batched: bool = False) -> tuple[list[torch.Tensor], bool] | None:
        """The weights a task of ``way`` classes starts from when ``head_init`` builds its head (``None``: the
        trained weights as they are), detached, and whether the head is one per task (``batched``: ``x [T, B, ...]``,
        prototypes per task)."""
        plan = task_head_plan(self.config.head_init, way, self.model, y, more=REPTILE_OTHER_WAY_INIT)
        if plan == "trained":
            return None
        params = [p.detach() for p in self.model.meta_parameters()]
        body = params[:-2]
        if plan == "rows":
            return body + trained_rows(params[-2:], way), False
        if plan == "zeros":
            return body + zero_head(params[-2:], way), False
        with torch.no_grad():
            if batched:
                feats = self.model.features_tasks(x, [p.expand(x.shape[0], *p.shape) for p in body])
            else:
                feats = self.model.features(x, body)
        return body + prototype_head_params(feats, y, way), batched

    @staticmethod
    def schedule(size: int, steps: int, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The support indices of each inner step: a shuffled pass, reshuffled when the next batch would not fit
        (drawn from ``generator``, else from torch's global random state)."""
        order = torch.randperm(size, generator=generator)
        position, picks = 0, []
        for _ in range(steps):
            if position + batch > len(order):
                order, position = torch.randperm(size, generator=generator), 0
            picks.append(order[position : position + batch])
            position += batch
        return picks

    def train_tasks(
        self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
        generators: list[torch.Generator] | None = None, way: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`train_task` for ``T`` tasks at once (``x`` is ``[T, N, ...]``): task weights ``[T, ...]``, losses.

        Draws the same mini-batches as calling :meth:`train_task` task after task (task ``t`` from
        ``generators[t]`` when given), and takes the same Adam (beta1 = 0) steps as ``torch.optim.Adam``, batched
        over tasks. ``way`` (the tasks' way) starts them from the head ``head_init`` says; ``None``: from the
        trained weights.
        """
        tasks = y.shape[0]
        gens = generators or [None] * tasks
        picks = torch.stack([torch.stack(self.schedule(y.shape[1], steps, batch, gens[t])) for t in range(tasks)],
                            dim=1)
        rows = torch.arange(tasks).unsqueeze(1)
        start = self.task_start(x, y, way, batched=True) if way is not None else None
        params, per_task = start or (self.model.meta_parameters(), False)
        shared = len(params) - 2 if per_task else len(params)
        fast = [p.detach().expand(tasks, *p.shape).clone() if i < shared else p.detach().clone()
                for i, p in enumerate(params)]
        second = [torch.zeros_like(p) for p in fast]
        lr, beta2, eps = self.config.inner_lr, self.config.adam_beta2, 1e-8
        losses = torch.zeros(tasks, device=y.device)
        for step in range(1, steps + 1):
            pick = picks[step - 1]
            xb, yb = x[rows, pick], y[rows, pick]
            with torch.enable_grad():
                leaves = [p.requires_grad_() for p in fast]
                logits = self.model.forward_tasks(xb, leaves)
                per_task = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape)
                grads = torch.autograd.grad(per_task.mean(1).sum(), leaves)
            losses = per_task.detach().mean(1)
            fast = [p.detach() for p in fast]
            bias_sqrt = (1 - beta2**step) ** 0.5
            # torch.optim.Adam's arithmetic with beta1 = 0 (so its first moment is the gradient itself)
            torch._foreach_mul_(second, beta2)
            torch._foreach_addcmul_(second, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(second)
            torch._foreach_div_(denom, bias_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(fast, grads, denom, value=-lr)
        return fast, losses

    def train_task(
        self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, generator: torch.Generator | None = None,
        way: int | None = None, keep_state: bool = False,
    ) -> tuple[list[torch.Tensor], float]:
        """Adam (beta1 = 0) from the current weights on mini-batches of ``(x, y)`` (drawn from ``generator``, else
        from torch's global random state); returns the task weights. ``way`` (the task's way) starts from the head
        ``head_init`` says; ``None``: from the trained weights.

        With ``adam_state: shared`` Adam starts from the shared state (a copy; a built head of another shape starts
        with a zero second moment), which the task's state then replaces when ``keep_state`` (meta-training); else it
        starts fresh."""
        start = self.task_start(x, y, way) if way is not None else None
        params = start[0] if start is not None else self.model.meta_parameters()
        fast = [p.detach().clone().requires_grad_() for p in params]
        optimizer = torch.optim.Adam(fast, lr=self.config.inner_lr, betas=(0.0, self.config.adam_beta2))
        shared = self.adam_state()
        reduction = "mean" if shared is None else "sum"  # shared: the summed loss, see the module's docstring
        if shared is not None:
            for f, second in zip(fast, shared["second"], strict=True):
                optimizer.state[f] = {"step": shared["step"].detach().clone(), "exp_avg": torch.zeros_like(f),
                                      "exp_avg_sq": second.detach().clone() if second.shape == f.shape
                                      else torch.zeros_like(f)}
        order = torch.randperm(len(y), generator=generator)
        position, loss = 0, torch.zeros(())
        with torch.enable_grad():
            for _ in range(steps):
                if position + batch > len(order):
                    order, position = torch.randperm(len(y), generator=generator), 0
                pick = order[position : position + batch]
                position += batch
                loss = F.cross_entropy(self.model(x[pick], fast), y[pick], reduction=reduction)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if shared is not None:
            loss = loss / len(pick)  # report the mean
        if shared is not None and keep_state:
            with torch.no_grad():
                shared["step"].copy_(optimizer.state[fast[0]]["step"])
                for f, second in zip(fast, shared["second"], strict=True):
                    if second.shape == f.shape:  # a built head of another way keeps no state
                        second.copy_(optimizer.state[f]["exp_avg_sq"])
        return [p.detach() for p in fast], float(loss.detach())

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        """Reptile's update ``theta - mean(phi)`` over a batch of tasks, accumulated into ``.grad``."""
        if not self.fast_path(episode.support_x):
            return self.meta_gradient_reference(episode)
        params = self.model.meta_parameters()
        tasks = episode.num_tasks
        fast, losses = self.train_tasks(episode.support_x, episode.support_y, self.config.inner_steps,
                                        self.config.inner_batch, task_generators(episode), episode.way)
        accuracy_sum = 0.0
        if episode.query_y.shape[1] > 0:
            with torch.no_grad():
                for start in range(0, tasks, QUERY_CHUNK):  # chunked: the query batch is the big activation
                    part = slice(start, start + QUERY_CHUNK)
                    logits = self.model.forward_tasks(episode.query_x[part], [f[part] for f in fast])
                    accuracy_sum += (logits.argmax(-1) == episode.query_y[part]).float().mean(1).sum().item()
        for p, f in zip(params[: self._updated(episode.way)], fast, strict=False):
            delta = p.detach() - f.mean(0)
            p.grad = delta if p.grad is None else p.grad + delta
        return {"loss": losses.mean().item(), "accuracy": accuracy_sum / tasks}

    def meta_gradient_reference(self, episode: Episode) -> dict[str, float]:
        """The plain implementation: tasks one at a time with ``torch.optim.Adam`` (with ``adam_state: shared``, each
        task's Adam continuing from the state the previous task left)."""
        if self.shared_state and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise FewShotError("Reptile with adam_state: shared trains a meta-batch's tasks one after the other, "
                               "so it cannot split them over processes; train it in one process")
        params = self.model.meta_parameters()
        tasks = episode.num_tasks
        deltas = [torch.zeros_like(p) for p in params]
        total_loss, total_acc = 0.0, 0.0
        generators = task_generators(episode) or [None] * tasks
        for t in range(tasks):
            x, y = episode.support_x[t], episode.support_y[t]
            fast, loss = self.train_task(x, y, self.config.inner_steps, self.config.inner_batch, generators[t],
                                         episode.way, keep_state=True)
            for d, p, f in zip(deltas[: self._updated(episode.way)], params, fast, strict=False):
                d.add_(p.detach() - f, alpha=1 / tasks)
            total_loss += loss
            if episode.query_y.shape[1] > 0:
                with torch.no_grad():
                    total_acc += accuracy(self.model(episode.query_x[t], fast), episode.query_y[t])
        for p, d in zip(params[: self._updated(episode.way)], deltas, strict=False):
            p.grad = d if p.grad is None else p.grad + d
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}

    def _updated(self, way: int) -> int:
        """How many of ``meta_parameters()`` training moves: all, or the body alone when tasks start from a built
        head."""
        params = len(self.model.meta_parameters())
        trained = resolve_head_init(self.config.head_init, way, self.model, more=REPTILE_OTHER_WAY_INIT) == "trained"
        return params if trained else params - 2

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> FastWeights:
        """``test_inner_steps`` Adam steps on support mini-batches from the trained weights, the head per
        ``head_init``."""
        batch = min(self.config.test_inner_batch, len(support_y))
        fast, _ = self.train_task(support_x, support_y, self.config.test_inner_steps, batch, way=way)
        return FastWeights(self, fast, support_x, self.transductive, self.fast_path(support_x))

    def restore(self, state: dict[str, torch.Tensor], way: int) -> FastWeights:
        return FastWeights.restore(self, state, way, self.transductive, self.fast_path(state.get("support_x")))

    def predict(self, episode: Episode) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``: all tasks adapted at once on the fast path (same as :meth:`adapt` per task)."""
        if not self.fast_path(episode.support_x):
            return super().predict(episode)
        batch = min(self.config.test_inner_batch, episode.support_y.shape[1])
        fast, _ = self.train_tasks(episode.support_x, episode.support_y, self.config.test_inner_steps, batch,
                                   way=episode.way)
        with torch.no_grad():
            if self.transductive:
                return self.model.forward_tasks(episode.query_x, fast)
            return torch.stack([each_query_with_support(self.model, [p[t] for p in fast], episode.support_x[t],
                                                        episode.query_x[t]) for t in range(episode.num_tasks)])
