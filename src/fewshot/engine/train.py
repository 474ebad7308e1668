"""The one training loop, for every method and kind of run.

Resuming is exact: batches are a function of the iteration number, and the checkpoint holds the weights, the
optimizer state and the RNG state, so a run killed (or stopped by SIGINT / SIGTERM) and resumed ends bit-identical
to one never interrupted, as long as the resume keeps the settings that shape the result (:mod:`.resume`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.config import RunConfig, TrainConfig
from fewshot.data.tasks import Episode
from fewshot.engine import distributed
from fewshot.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fewshot.engine.ensemble import check_keep_best, keep_top, prune_top, read_top
from fewshot.engine.evaluate import EvalResult
from fewshot.engine.experiment import Experiment
from fewshot.engine.logs import RunLogger, other_machines, plot_curves, write_report
from fewshot.engine.mirror import Mirror
from fewshot.engine.resume import forced_comment, resume_changes
from fewshot.engine.run_folder import WriteError, check_run_folder, lock_run_folder, writing
from fewshot.errors import FewShotError, Interrupted
from fewshot.hardware import bf16_autocast, machine
from fewshot.io import atomic_write

LAST, BEST = "last.safetensors", "best.safetensors"


class TrainingDiverged(FewShotError):
    """The loss or the meta-gradient became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_accuracy: float
    best_val_iteration: int
    wall_seconds: float


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """The outer learning rate at ``iteration`` under the configured schedule."""
    frac = iteration / max(1, cfg.iterations)
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.lr_final - cfg.lr) * frac
    if cfg.schedule == "cosine":
        return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (iteration // cfg.step_size)
    if cfg.schedule == "inverse":
        return cfg.lr / (1 + cfg.anneal_alpha * frac) ** cfg.anneal_beta
    return cfg.lr


def train(
    experiment: Experiment, run_dir: Path, resume: bool = False, progress: bool = True, stop_after: int | None = None,
    time_limit: float | None = None, force: bool = False, mirror: Path | None = None,
) -> TrainResult:
    """Train ``experiment`` into ``run_dir``; with ``resume``, continue from ``run_dir/checkpoints/last``.

    ``stop_after`` ends the loop early after that many iterations, ``time_limit`` after the first iteration that
    ends that many seconds (of this call's training loop) in; either way the run can be resumed later. A resume may
    change only the settings :mod:`fewshot.engine.resume` allows, unless ``force`` (then the change is recorded); a
    finished run is not trained again. A new run goes only into a new or empty folder (or one a run left before its
    first checkpoint). The folder is locked while this writes it (:mod:`fewshot.engine.run_folder`).

    SIGINT and SIGTERM stop the loop at the end of the iteration under way, after saving ``last`` there (a
    validation under way is dropped and runs again on resume), raising :class:`~fewshot.errors.Interrupted`; a
    second signal stops at once, keeping the previous checkpoint. Either way the resumed run stays bit-identical.

    ``mirror``: a folder kept a copy of the run folder after every ``last`` checkpoint and at the end
    (:mod:`fewshot.engine.mirror`), so that the run survives the machine.
    """
    if time_limit is not None and not time_limit > 0:
        raise FewShotError(f"the time limit must be > 0 seconds, got {time_limit}")
    if stop_after is not None and not stop_after >= 1:
        raise FewShotError(f"stop_after must be >= 1 iteration, got {stop_after}")
    check_keep_best(experiment.config.train.keep_best, type(experiment), experiment.config.experiment)
    run_dir = Path(run_dir)
    if not distributed.is_main():  # under torchrun rank 0 holds and checks the folder; the others only read it
        return _train(experiment, run_dir, resume, progress, stop_after, time_limit, force, None)
    with lock_run_folder(run_dir):
        check_run_folder(run_dir, resume)
        copy = Mirror(run_dir, Path(mirror)) if mirror is not None else None
        try:
            return _train(experiment, run_dir, resume, progress, stop_after, time_limit, force, copy)
        finally:  # however the run ended (its budget, a time limit, a signal, an error): curves and reports too
            if copy is not None:
                copy.sync_all()


def _train(experiment: Experiment, run_dir: Path, resume: bool, progress: bool, stop_after: int | None,
           time_limit: float | None, force: bool, mirror: Mirror | None) -> TrainResult:
    config: RunConfig = experiment.config
    cfg = config.train
    cfg.use_threads()
    method = experiment.method
    params = method.meta_parameters()
    optimizer = make_optimizer(params, cfg)
    ckpt_dir = run_dir / "checkpoints"
    start, best, best_it, wall_before, saved_at = 0, -1.0, -1, 0.0, -1
    top: list[list[Any]] = []  # the kept best validations, [iteration, accuracy], best first (train.keep_best > 1)
    forced: list[dict[str, Any]] = []
    changed: dict[str, list[Any]] = {}
    pending_validation = False
    if resume:
        ckpt = _read_last(ckpt_dir / LAST)
        distributed.check_resume(ckpt.config, ckpt_dir / LAST)  # the number of processes first: its own message
        changed = resume_changes(ckpt.config, config, ckpt.iteration, force, run_dir,
                                 getattr(experiment, "budget_bound", None))
        _restore(ckpt, ckpt_dir / LAST, method, optimizer)
        start = saved_at = ckpt.iteration
        best, best_it = ckpt.extra.get("best_val_accuracy", -1.0), ckpt.extra.get("best_val_iteration", -1)
        wall_before = float(ckpt.extra.get("wall_seconds", 0.0))
        top = read_top(ckpt.extra, ckpt_dir / LAST)
        forced = list(ckpt.extra.get("forced_resumes", []))
        pending_validation = bool(ckpt.extra.get("validation_pending")) and cfg.val_episodes > 0
        if changed:
            forced.append({"iteration": start, "changed": changed})
        elif start >= cfg.iterations and not pending_validation and (ckpt_dir / BEST).is_file():
            return TrainResult(run_dir, start, best, best_it, wall_before)  # finished: nothing to train or rewrite
    else:
        torch.manual_seed(cfg.seed)
    main = distributed.is_main()  # under torchrun only rank 0 writes the run folder
    machines = distributed.gather_objects(machine())  # every process's: a job can span machines
    config_yaml = config.to_yaml()
    logger: RunLogger | None = None
    if main:
        with writing(run_dir / "config.yaml"):
            atomic_write(run_dir / "config.yaml", forced_comment(forced) + config_yaml)
        logger = RunLogger(run_dir, resume_from=start, redo_validation=pending_validation)
        if changed:
            logger.log({"iteration": start, "phase": "resume", "forced": True, "changed": changed})
        logger.log({"iteration": start, "phase": "start", "machine": {
            **machines[0], "world_size": cfg.world_size, "device": str(cfg.torch_device()), "precision": cfg.precision,
            **other_machines(machines)}})
    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc=config.name, unit="it", dynamic_ncols=True)
    began = time.perf_counter()
    status = "running"

    def save(path: Path, iteration: int, **flags: Any) -> None:
        nonlocal saved_at
        rng = distributed.random_states()  # every process's (a collective), so a resumed run continues exactly
        if not main:
            saved_at = iteration if path.name == LAST else saved_at
            return
        extra = {"best_val_accuracy": best, "best_val_iteration": best_it, "top_validations": top,
                 "wall_seconds": wall_before + time.perf_counter() - began, "forced_resumes": forced, **flags}
        with writing(path):  # a failed write leaves the previous checkpoint as it was
            save_checkpoint(path, Checkpoint(method.state_dict(), iteration, config.to_dict(),
                                             optimizer.state_dict(), rng, extra))
        if path.name == LAST:
            saved_at = iteration
            prune_top(ckpt_dir, top)  # kept weights that this last checkpoint no longer lists
            if mirror is not None:
                mirror.sync_checkpoint()

    stop = _StopSignals()

    def keep_weights(path: Path, iteration: int) -> None:  # the weights alone, for an ensemble of the best
        with writing(path):
            save_checkpoint(path, Checkpoint(method.state_dict(), iteration, config.to_dict()))

    def validate(done: int) -> None:
        nonlocal best, best_it, top
        with torch.random.fork_rng(), stop.interruptible():
            val = experiment.validate(cfg.val_episodes)
        method.train()
        if logger is not None:
            logger.log({"iteration": done, "phase": "val", "accuracy": val.accuracy, "ci95": val.to_dict()["ci95"],
                        "seconds": wall_before + time.perf_counter() - began})
        if bar is not None:
            bar.write(f"[{config.name}] iteration {done}: validation {val}")
        if (cfg.keep_best > 1 or top) and main:
            top = keep_top(ckpt_dir, top, done, val.accuracy, cfg.keep_best, lambda p: keep_weights(p, done))
        if val.accuracy > best:
            best, best_it = val.accuracy, done
            save(ckpt_dir / BEST, done)

    device = method.device
    device_type = device.type  # for bf16 autocast
    method.train()
    distributed.broadcast_weights(method)
    try:
        with stop:
            if pending_validation:  # the run was stopped during this validation: do it now, as it would have run
                try:
                    validate(start)
                except _StopNow:
                    raise stop.interrupted(ckpt_dir / LAST, start) from None
                save(ckpt_dir / LAST, start)  # done: no longer pending
            for it in range(start, end):
                lr = learning_rate(cfg, it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch, share = distributed.training_batch(experiment, it, method)  # this process's share
                metrics = {"loss": 0.0}
                if batch is not None:  # None: this kind of run has nothing to train
                    optimizer.zero_grad(set_to_none=True)
                    with bf16_autocast(device_type, cfg.precision == "bf16", "train.precision"), \
                            distributed.shared_statistics(method):
                        metrics = method.training_gradient(batch_to(batch, device))
                    metrics = distributed.reduce_gradients(params, metrics, share)
                    _check_finite(metrics, params, it, ckpt_dir / LAST)
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                done = it + 1
                if logger is not None and (done % cfg.log_every == 0 or done == end):
                    logger.log({"iteration": done, "phase": "train", "lr": lr,
                                "seconds": wall_before + time.perf_counter() - began, **metrics})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                    acc=f"{metrics.get('accuracy', float('nan')):.3f}")
                if cfg.val_episodes and (done % cfg.val_every == 0 or done == cfg.iterations):
                    try:
                        validate(done)
                    except _StopNow:  # the weights are those after iteration `done`: keep them, validate on resume
                        save(ckpt_dir / LAST, done, validation_pending=True)
                        raise stop.interrupted(ckpt_dir / LAST, done) from None
                out_of_time = time_limit is not None and distributed.any_process(
                    time.perf_counter() - began >= time_limit)
                if done % cfg.checkpoint_every == 0 or done == end or out_of_time or stop.signum:
                    save(ckpt_dir / LAST, done)
                if stop.signum:
                    raise stop.interrupted(ckpt_dir / LAST, done)
                if out_of_time:
                    end = done
                    break
        status = "finished" if end == cfg.iterations else f"stopped at iteration {end}"
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            status = (f"interrupted; the checkpoint of iteration {saved_at} is kept (resume with --resume)"
                      if saved_at >= 0 else "interrupted before its first checkpoint")
        elif isinstance(exc, TrainingDiverged):
            status = f"diverged: {exc}"
        elif isinstance(exc, distributed.ProcessFailure):
            status = f"stopped: {exc}"
        else:
            status = f"stopped: {exc}"
        _finish(run_dir, config, bar, logger, status, best, best_it, top, forced, config_yaml,
                wall_before + time.perf_counter() - began, quiet=True)
        if isinstance(exc, WriteError):
            kept = (f"the checkpoint of iteration {saved_at} is kept: continue with --resume after that"
                    if saved_at >= 0 else "no checkpoint was written")
            raise WriteError(f"{exc}; {kept}") from exc
        raise
    _finish(run_dir, config, bar, logger, status, best, best_it, top, forced, config_yaml,
            wall_before + time.perf_counter() - began)
    if saved_at < 0:  # nothing to train (a pretrained backbone): the run folder still holds its weights
        save(ckpt_dir / LAST, end)
    if best_it < 0 and (end > start or not distributed.from_main((ckpt_dir / BEST).is_file)):
        save(ckpt_dir / BEST, end)  # no validation: the last weights are the best
    distributed.barrier("waiting for rank 0 to write the checkpoints")
    return TrainResult(run_dir, end, best, best_it, wall_before + time.perf_counter() - began)


def test_best(experiment: Experiment, run_dir: Path) -> EvalResult:
    """Score the run's best checkpoint with the test protocol (:func:`~fewshot.engine.scoring.score`, its per-episode
    record kept) and keep the result in ``<run_dir>/test.json``."""
    from fewshot.engine.scoring import load_weights, score

    best = Path(run_dir) / "checkpoints" / BEST
    load_weights(experiment.method, load_checkpoint(best).weights, best)
    result = score(experiment, best)
    if not distributed.is_main():  # under torchrun every process scored its share; rank 0 writes
        return result
    with writing(Path(run_dir) / "test.json"):
        atomic_write(Path(run_dir) / "test.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _finish(run_dir: Path, config: RunConfig, bar: Any, logger: RunLogger | None, status: str, best: float,
            best_it: int, top: list[list[Any]], forced: list[dict[str, Any]], config_yaml: str, wall: float,
            quiet: bool = False) -> None:
    """Close the logs, draw the curves and write the report; ``quiet`` (on the way out of an error): a failure here
    must not hide the error, so it is dropped."""
    if bar is not None:
        bar.close()
    if logger is None:  # not the process that writes the run folder
        return
    logger.close()
    summary = {"name": config.name, "method": config.method.name, "experiment": config.experiment,
               "iterations": config.train.iterations, "wall_seconds": round(wall, 1), "status": status,
               "best_val_accuracy": best, "best_val_iteration": best_it, "forced_resumes": forced,
               "command": " ".join(shlex.quote(a) for a in sys.argv)}
    if top:  # train.keep_best > 1: the kept validations, best first (fewshot eval --ensemble K)
        summary["kept_best"] = ", ".join(f"{iteration} ({100 * accuracy:.2f}%)" for iteration, accuracy in top)
    try:
        plot_curves(run_dir)
        write_report(run_dir, summary, config_yaml)
    except Exception:
        if not quiet:
            raise


def _read_last(last: Path) -> Checkpoint:
    try:
        return load_checkpoint(last)
    except FewShotError as exc:
        raise FewShotError(f"cannot resume: {exc}; {_RESTORE}") from exc


_RESTORE = "restore it from a copy, or start a new run with another --out"


def _restore(ckpt: Checkpoint, last: Path, method: Any, optimizer: torch.optim.Optimizer) -> None:
    """Put the checkpoint's weights, optimizer state and random state in place; a clear error if they do not fit."""
    from fewshot.engine.scoring import load_weights

    try:
        load_weights(method, ckpt.weights, last)
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.rng is not None:
            torch.set_rng_state(distributed.own_random_state(ckpt.rng))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # FewShotError is a ValueError
        cause = " ".join(str(exc).split())
        raise FewShotError(f"cannot resume: {last} holds a state this run cannot take ({cause}); {_RESTORE}") from exc


class _StopNow(BaseException):
    """Raised by the signal handler into a validation under way (dropped; it runs again on resume)."""


class _StopSignals:
    """SIGINT and SIGTERM while the loop runs (main thread only): the first asks the loop to stop at the end of the
    iteration under way (a validation under way is dropped at once); a second stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise Interrupted(signum, f"{name} again: stopped at once; the previous checkpoint is kept (continue "
                                      f"with --resume)")
        self.signum = signum
        if self._interruptible:
            raise _StopNow
        if signum == signal.SIGINT:
            print(f"\nfewshot: {name}: stopping at the end of this iteration to save a checkpoint ({name} again to "
                  f"stop at once)", file=sys.stderr)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block a signal ends at once (by raising :class:`_StopNow`)."""
        if self.signum is not None:
            raise _StopNow
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def interrupted(self, last: Path, iteration: int) -> Interrupted:
        signum = self.signum if self.signum is not None else signal.SIGINT
        return Interrupted(signum, f"the checkpoint of iteration {iteration} is saved in {last} (continue with "
                                   f"--resume)")


def batch_to(batch: Any, device: torch.device) -> Any:
    """A training batch with its tensors on ``device``: an episode, a tensor, a tuple/list of them, a dataclass of
    them (the domain kind's batches), or ``None``; strings and numbers stay as they are."""
    if batch is None or isinstance(batch, (str, int, float)):
        return batch
    if isinstance(batch, (torch.Tensor, Episode)):  # an episode keeps its class ids on the CPU
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(batch_to(b, device) for b in batch)
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: batch_to(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def _check_finite(metrics: dict[str, float], params: list[torch.nn.Parameter], iteration: int, last: Path) -> None:
    bad = not math.isfinite(metrics["loss"])
    if not bad:
        bad = any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params)
    if bad:
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss became {metrics['loss']} (or the meta-gradient non-finite) at iteration {iteration + 1}; "
            f"training stopped and {kept}. Lower train.lr or the inner learning rate, or set train.grad_clip"
        )
