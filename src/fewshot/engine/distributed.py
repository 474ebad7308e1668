"""Several processes on one run (``torchrun``): the process group, and the collective steps of training and scoring.

``torchrun --nproc_per_node=N -m fewshot train RECIPE ...`` (with ``--nnodes`` and ``--rdzv-backend c10d
--rdzv-endpoint HOST:PORT`` across machines) starts N processes per machine and sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` and the rendezvous address; :func:`init` (called by ``build_experiment``) joins them into one
``torch.distributed`` process group: gloo on CPUs, NCCL on GPUs, each process on the GPU of its ``LOCAL_RANK``.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is the identity and costs nothing.

* **Training.** Every process takes its contiguous slice of the same global batch (a function of the iteration:
  :func:`training_batch`; an episodic kind samples only that slice's tasks, others are cut by :func:`shard`) and
  trains on it; the method averages over its own tasks as always, so each gradient is weighted by its share of the
  batch and the shares are summed by one ``all_reduce`` of a flat buffer: the gradients, which parameters have one,
  and the metrics (:func:`reduce_gradients`).
  Every process then clips and steps identically, so the weights stay the same everywhere and equal those of one
  process on the whole batch, to float rounding. A method whose step runs the backbone over the whole batch at once
  (``Method.whole_batch_statistics``: ProtoNet, MetaOptNet, supervised pre-training, DANN) gets batch statistics
  over every share (:func:`shared_statistics`, a differentiable all-reduce inside ``models.base.batch_norm``).
* **Scoring** (:class:`EpisodeShards`): the fixed test episodes ``first..first+count-1`` are split into contiguous
  slices, each process scores its slice, and the scores are gathered in episode order: exactly the per-episode
  scores of one process. A method that draws from torch's global random state while scoring (Reptile's test-time
  mini-batches, dropout while fine-tuning a text encoder) would draw differently on a slice, so when a process sees
  its random state move, the round is scored again, whole, on every process (exact, not faster).
* **Writing.** Only rank 0 writes run folders, logs, plots, checkpoints and evaluation records, and only rank 0
  prints to stdout (other ranks' stdout goes to ``/dev/null``; their stderr stays). :func:`from_main` runs a
  function on rank 0 and hands its result (or its error) to every process.
* **Failures.** A collective that fails because a process died, or waits longer than ``train.dist_timeout``
  seconds for a process that hangs, raises :class:`ProcessFailure` (a ``FewShotError``: the CLI prints it and exits
  2, and ``torchrun`` then stops the other processes). The last checkpoint is kept; ``--resume`` continues from it.

Why not ``DistributedDataParallel``: the engine reaches a method only through ``training_gradient(batch)``, which owns
its forward and backward passes — several backward calls per step (MAML's task chunks), ``autograd.grad`` with
``create_graph`` in inner loops (which DDP's reducer does not support), Reptile's update that is no backward pass at
all, DANN's gradient scaling after the backward. DDP's hooks assume one forward through the wrapper and one backward,
and average equal shares only; one bucketed ``all_reduce`` after the step is exact for all of them, weights unequal
shares, and costs one collective per iteration (DDP's gain, overlapping the reduction with the backward pass, is
small for these models: the all-reduce is 3% of a MAML step on 2 CPU processes, ``results/scale.md``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.models.base import batch_shared

T = TypeVar("T")


class ProcessFailure(FewShotError):
    """Another process of the job died, or did not answer within ``train.dist_timeout`` seconds."""


@dataclass
class _Group:
    rank: int
    world: int
    local_rank: int
    backend: str
    timeout: float
    healthy: bool = True
    reduced_bytes: int = 0
    """Bytes all-reduced by :func:`reduce_gradients` so far (the gradient traffic, for ``bench/scale.py``)."""
    reductions: int = 0


_GROUP: _Group | None = None
_WARNED: set[str] = set()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise FewShotError(f"${name} must be an integer, got {value!r}") from exc


def init(train: Any) -> None:
    """Join the job's processes when ``torchrun`` started this one (``WORLD_SIZE`` > 1), once per process.

    ``train`` is the run's :class:`~fewshot.config.TrainConfig`: its ``device`` picks the backend (NCCL for
    ``cuda``/``auto`` with a GPU, else gloo), ``dist_timeout`` bounds every wait, and ``world_size`` is set to the
    number of processes (recorded in ``config.yaml`` and checkpoints).
    """
    global _GROUP
    world = _env_int("WORLD_SIZE", 1)
    train.world_size = world
    if world == 1:
        return
    if _GROUP is not None:
        return
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = train.device.startswith("cuda") or (train.device == "auto" and torch.cuda.is_available())
    if cuda:
        if ":" in train.device:
            raise FewShotError(f"train.device={train.device}: under torchrun each process takes the GPU of its "
                               f"LOCAL_RANK; use train.device=cuda (or auto)")
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise FewShotError(f"process {rank} has LOCAL_RANK {local} but torch sees "
                               f"{torch.cuda.device_count()} GPU(s): start at most that many processes per machine "
                               f"(torchrun --nproc_per_node), or use train.device=cpu")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    started = time.perf_counter()
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=train.dist_timeout))
    except (RuntimeError, ValueError) as exc:  # DistStoreError, DistNetworkError, ... are RuntimeErrors
        raise ProcessFailure(
            f"process {rank} of {world} could not join the others within {time.perf_counter() - started:.0f} s "
            f"(train.dist_timeout={train.dist_timeout:g}): {_first_line(exc)}. Check that every process was "
            f"started (torchrun --nnodes / --nproc_per_node) and that the rendezvous address is reachable"
        ) from exc
    _GROUP = _Group(dist.get_rank(), dist.get_world_size(), local, backend, float(train.dist_timeout))
    atexit.register(close)
    if _GROUP.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- only rank 0 prints results


def close() -> None:
    """Leave the process group (at exit; after a failure there is nobody to say goodbye to)."""
    global _GROUP
    if _GROUP is not None and _GROUP.healthy and dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = None


def end_process(code: int) -> NoReturn:
    """End this process with exit status ``code``; in a job, leave the process group first and end at once.

    In a job the interpreter's teardown is skipped (``os._exit`` after flushing stdout and stderr): torch's gloo
    backend keeps its worker threads after ``destroy_process_group``, and one still releasing a finished
    collective's tensors while Python finalizes aborts the process ("terminate called without an active
    exception", SIGABRT), so ``torchrun`` reported a finished job as failed (seen about once in five 2-process jobs
    on a loaded machine). The ``fewshot`` command ends every process this way.
    """
    if _GROUP is None:
        sys.exit(code)
    with contextlib.suppress(Exception):  # the status is what this process has to say, whatever leaving costs
        close()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def world_size() -> int:
    return 1 if _GROUP is None else _GROUP.world


def rank() -> int:
    return 0 if _GROUP is None else _GROUP.rank


def launched_main() -> bool:
    """Whether this process is rank 0 of its launch (``RANK`` as torchrun sets it), readable before :func:`init`."""
    return _env_int("RANK", 0) == 0


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def traffic() -> tuple[int, int]:
    """``(bytes, calls)`` of the gradient all-reduces of this process so far."""
    return (0, 0) if _GROUP is None else (_GROUP.reduced_bytes, _GROUP.reductions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _collective(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one collective; a failed or timed-out one becomes a :class:`ProcessFailure` that says what happened."""
    assert _GROUP is not None
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        _GROUP.healthy = False
        waited = time.perf_counter() - started
        timed_out = waited >= 0.9 * _GROUP.timeout or "timed out" in str(exc).lower()
        cause = (f"another process did not answer within train.dist_timeout={_GROUP.timeout:g} s (it hangs)"
                 if timed_out else "another process died or closed its connection")
        raise ProcessFailure(
            f"process {_GROUP.rank} of {_GROUP.world}: {what} failed after {waited:.1f} s: {cause} "
            f"[{_first_line(exc)}]. The job stops here; its last checkpoint is kept: continue it with the same "
            f"torchrun command and --resume"
        ) from exc


# --- training ---------------------------------------------------------------------------------------------------------

def _length(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _bounds(n: int, part: int | None = None, parts: int | None = None) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of ``n`` items that process ``part`` of ``parts`` takes (the first
    ``n % parts`` processes take one more)."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    base, extra = divmod(n, parts)
    lo = part * base + min(part, extra)
    return lo, lo + base + (part < extra)


def training_batch(experiment: Any, iteration: int, method: Any) -> tuple[Any, float]:
    """This process's share of iteration ``iteration``'s training batch, and its weight (its fraction of the batch).

    One process: ``experiment.batch(iteration)`` and 1. Several: a kind that says how many tasks its batches hold
    (``tasks_per_batch``, the episodic kinds) computes only this process's contiguous slice of the tasks
    (``batch(iteration, tasks=slice)``, the same tasks as in the whole batch, not drawn again on every process);
    any other kind's batch is drawn whole and cut by :func:`shard`.
    """
    if world_size() == 1:
        return experiment.batch(iteration), 1.0
    total = getattr(experiment, "tasks_per_batch", None)
    if not isinstance(total, int):
        return shard(experiment.batch(iteration), method)
    _check_split([total], {"tasks": total}, True, method)
    lo, hi = _bounds(total)
    return experiment.batch(iteration, tasks=slice(lo, hi)), (hi - lo) / total


def shard(batch: Any, method: Any) -> tuple[Any, float]:
    """This process's slice of a whole training batch, and its share of the batch (1 with one process).

    A batch is a dataclass (``Episode``, ``LabelledBatch``, ``DomainBatch``); every field with a leading dimension
    (tasks or examples) is cut to the same slice, scalars (DANN's progress) stay.
    """
    if world_size() == 1 or batch is None:
        return batch, 1.0
    if not dataclasses.is_dataclass(batch):
        raise FewShotError(f"a distributed run splits dataclass batches; this kind of run makes "
                           f"{type(batch).__name__}")
    fields = [f.name for f in dataclasses.fields(batch) if f.init]
    sizes = {name: n for name in fields if (n := _length(getattr(batch, name))) is not None}
    lengths = sorted(set(sizes.values()) - {0})
    _check_split(lengths, sizes, isinstance(batch, Episode), method)
    local = {}
    for name, n in sizes.items():
        lo, hi = _bounds(n)
        local[name] = getattr(batch, name)[lo:hi]
    lo, hi = _bounds(lengths[0])
    share = (hi - lo) / lengths[0] if len(lengths) == 1 else 1.0 / world_size()
    return dataclasses.replace(batch, **local), share


def _check_split(lengths: list[int], sizes: dict[str, int], episodic: bool, method: Any) -> None:
    """Refuse, naming the setting to change, a split where a process would get nothing, or that cannot be exact:
    unequal shares for a method whose statistics span the batch, or parts of different sizes (DANN's source, target
    and labelled examples) that do not all split evenly."""
    world = world_size()
    unit, setting = ("tasks", "train.meta_batch") if episodic else ("examples", "train.batch_size")
    if not lengths or lengths[0] < world:
        raise FewShotError(
            f"a batch of {lengths[0] if lengths else 0} {unit} cannot be split over {world} processes: each process "
            f"trains on whole {unit}, so {setting} must be at least {world} (a multiple of {world} for equal work)"
            + (". A recipe with meta_batch 1 (ProtoNet, MetaOptNet: one 60-way task per step) cannot be split: "
               "raise train.meta_batch (more tasks per step, a different training) or run it on one process"
               if episodic else ""))
    uneven = [n for n in lengths if n % world]
    if uneven and (len(lengths) > 1 or getattr(method, "whole_batch_statistics", False)):
        why = ("its batch statistics span the batch, so every process needs an equal share"
               if len(lengths) == 1 else f"its parts ({', '.join(f'{k}: {v}' for k, v in sizes.items())}) must "
                                         f"all split evenly for the losses to weigh the same")
        raise FewShotError(f"a batch of {lengths[-1]} {unit} cannot be split exactly over {world} processes: {why}; "
                           f"use a {setting} that is a multiple of {world}")


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` that autograd differentiates: the gradient of a sum taken on every process is the sum of
    the gradients every process computed (what ``torch.distributed.nn.functional.all_reduce`` does, with this
    module's failure messages)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        _collective("the batch-norm statistics all-reduce", dist.all_reduce, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        _collective("the batch-norm gradient all-reduce", dist.all_reduce, out)
        return out


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every process (differentiable)."""
    return tensor if world_size() == 1 else _SumOverProcesses.apply(tensor)


def shared_statistics(method: nn.Module) -> Any:
    """Context for one training step: batch statistics over every process's share when the method's step runs the
    backbone over its whole batch (``whole_batch_statistics``), else nothing."""
    if world_size() == 1 or not getattr(method, "whole_batch_statistics", False):
        return nullcontext()
    return _shared_statistics(method)


@contextmanager
def _shared_statistics(method: nn.Module) -> Iterator[None]:
    def warn(module: nn.Module, _: Any) -> None:
        name = type(module).__name__
        if module.training and name not in _WARNED and is_main():
            _WARNED.add(name)
            print(f"warning: the backbone's {name} layers normalise each process's share of the batch with that "
                  f"share's statistics (nn.BatchNorm modules are synchronised only by torch's SyncBatchNorm, on "
                  f"GPUs): this distributed run equals one process on the whole batch only in expectation",
                  file=sys.stderr)

    hooks = [m.register_forward_pre_hook(warn) for m in method.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    try:
        with batch_shared(sum_over_processes):
            yield
    finally:
        for hook in hooks:
            hook.remove()


def reduce_gradients(params: list[nn.Parameter], metrics: dict[str, float], share: float) -> dict[str, float]:
    """Sum ``share`` x each process's gradients (and metrics) over the processes, in place; one ``all_reduce``.

    A parameter keeps no gradient (``None``, which optimizers skip) only if no process gave it one. Returns the
    reduced metrics (each the batch-weighted mean over the processes).
    """
    if world_size() == 1:
        return metrics
    assert _GROUP is not None
    keys = sorted(metrics)
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32
    pieces = [p.grad.detach().reshape(-1).to(dtype) * share if p.grad is not None
              else torch.zeros(p.numel(), dtype=dtype, device=device) for p in params]
    flags = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=device)
    values = torch.tensor([float(metrics[k]) * share for k in keys], dtype=dtype, device=device)
    buffer = torch.cat([*pieces, flags, values])
    _collective("the gradient all-reduce", dist.all_reduce, buffer)
    _GROUP.reduced_bytes += buffer.numel() * buffer.element_size()
    _GROUP.reductions += 1
    offset = 0
    grads = []
    for p in params:
        grads.append(buffer[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    flags, values = buffer[offset : offset + len(params)], buffer[offset + len(params) :]
    for p, grad, has in zip(params, grads, flags.tolist(), strict=True):
        p.grad = grad.to(p.dtype) if has > 0 else None
    return dict(zip(keys, values.tolist(), strict=True))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (so that every process takes the same decision)."""
    if world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if _GROUP and _GROUP.backend == "nccl" else "cpu"
    value = torch.tensor([float(flag)], device=device)
    _collective("agreeing on a decision", dist.all_reduce, value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(value: T) -> list[T]:
    """``value`` from every process, in rank order (a collective: every process calls it)."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    _collective("gathering every process's description", dist.all_gather_object, out, value)
    return out


def barrier(what: str = "waiting for the other processes") -> None:
    if world_size() > 1:
        _collective(what, dist.barrier)


def from_main(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run on rank 0 only, its result handed to every process (a ``FewShotError`` raised there is
    raised everywhere): reading a checkpoint or a record once, on the machine that wrote it."""
    if world_size() == 1:
        return fn(*args)
    message: list[Any] = [None]
    error: FewShotError | None = None
    if is_main():
        try:
            message = [("ok", fn(*args))]
        except FewShotError as exc:
            error, message = exc, [("error", str(exc))]
    _collective("receiving rank 0's data", dist.broadcast_object_list, message, src=0)
    kind, value = message[0]
    if kind == "error":
        raise error if error is not None else FewShotError(value)
    return value


def broadcast_weights(module: nn.Module) -> None:
    """Every process takes rank 0's weights and buffers (they are built alike from the seed; this makes sure)."""
    if world_size() == 1:
        return
    for tensor in module.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            _collective("receiving rank 0's weights", dist.broadcast, tensor, src=0)


def check_resume(saved_config: dict[str, Any], source: Any) -> None:
    """A run resumes only with the number of processes it was trained with (so it continues bit-identically)."""
    saved = int((saved_config.get("train") or {}).get("world_size", 1) or 1)
    world = world_size()
    if saved != world:
        how = (f"torchrun with {saved} processes in all (e.g. torchrun --nproc_per_node={saved} -m fewshot train "
               f"RUN --resume)" if saved > 1 else "one process (fewshot train RUN --resume, without torchrun)")
        raise FewShotError(
            f"cannot resume: {source} was trained by {saved} process(es) and this job has {world}. Each process's "
            f"share of every batch and its random state are part of the run, so it continues bit-identically only "
            f"with the same number: resume it with {how}, or start a new run")


def random_states() -> torch.Tensor:
    """This process's torch random state (one process), or every process's, stacked ``[world, n]`` (a collective:
    every process calls it at the same point)."""
    state = torch.get_rng_state()
    if world_size() == 1:
        return state
    states: list[Any] = [None] * world_size()
    _collective("gathering the random states", dist.all_gather_object, states, state)
    return torch.stack(states)


def own_random_state(saved: torch.Tensor) -> torch.Tensor:
    """This process's row of a checkpoint's random states (see :func:`random_states`)."""
    return saved[rank()].clone() if saved.dim() == 2 else saved  # a copy: torch reads a state from its storage


# --- scoring ----------------------------------------------------------------------------------------------------------

def _random_snapshot() -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    return states


class EpisodeShards:
    """Scores a range of fixed episodes with every process taking a contiguous slice, gathered in episode order.

    ``processes`` is how many processes share a round (1 once a method was seen drawing random numbers while
    scoring: then every process scores every episode, from the same random state a single process would have).
    """

    def __init__(self) -> None:
        self.split = world_size() > 1

    @property
    def processes(self) -> int:
        return world_size() if self.split else 1

    def score(self, score_range: Callable[[int, int], tuple[list[float], float]], first: int,
              count: int) -> tuple[list[float], float]:
        """Scores of episodes ``first .. first + count - 1`` and the seconds the slowest process spent;
        ``score_range(first, count)`` scores a range on this process and says how long it took."""
        if not self.split:
            return score_range(first, count)
        lo, hi = _bounds(count)
        before = _random_snapshot()
        mine, seconds = score_range(first + lo, hi - lo) if hi > lo else ([], 0.0)
        drew = any(not torch.equal(a, b) for a, b in zip(before, _random_snapshot(), strict=True))
        gathered: list[Any] = [None] * world_size()
        _collective("gathering episode scores", dist.all_gather_object, gathered, (mine, drew, seconds))
        if any(g[1] for g in gathered):
            self.split = False
            torch.set_rng_state(before[0])
            if len(before) > 1:
                torch.cuda.set_rng_state(before[1])
            if is_main():
                print("note: this method draws random numbers while scoring, so each process scores every episode "
                      "(the scores equal one process's; the evaluation is not faster)", file=sys.stderr)
            return score_range(first, count)
        return [s for g in gathered for s in g[0]], max(g[2] for g in gathered)
