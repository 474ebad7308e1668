"""The one training loop, for every method and kind of run.

Resuming is exact: batches are a function of the iteration number, and the checkpoint holds the weights, the
optimizer state and the RNG state, so a run killed and resumed ends bit-identical to one never interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.config import RunConfig, TrainConfig, upgrade
from fewshot.data.tasks import Episode
from fewshot.engine import distributed
from fewshot.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fewshot.engine.experiment import Experiment
from fewshot.engine.logs import RunLogger, plot_curves, write_report
from fewshot.errors import FewShotError
from fewshot.hardware import bf16_autocast

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
    time_limit: float | None = None,
) -> TrainResult:
    """Train ``experiment`` into ``run_dir``; with ``resume``, continue from ``run_dir/checkpoints/last``.

    ``stop_after`` ends the loop early after that many iterations, ``time_limit`` after the first iteration that
    ends that many seconds (of this call's training loop) in; either way the run can be resumed later.
    """
    if time_limit is not None and not time_limit > 0:
        raise FewShotError(f"the time limit must be > 0 seconds, got {time_limit}")
    config: RunConfig = experiment.config
    cfg = config.train
    cfg.use_threads()
    method = experiment.method
    params = method.meta_parameters()
    optimizer = make_optimizer(params, cfg)
    ckpt_dir = run_dir / "checkpoints"
    start, best, best_it, wall_before = 0, -1.0, -1, 0.0
    if resume:
        if not (ckpt_dir / LAST).exists():
            raise FewShotError(f"cannot resume: {ckpt_dir / LAST} does not exist")
        ckpt = load_checkpoint(ckpt_dir / LAST)
        _check_same_config(ckpt.config, config)
        distributed.check_resume(ckpt.config, ckpt_dir / LAST)
        try:
            method.load_state_dict(ckpt.weights)
            if ckpt.optimizer is not None:
                optimizer.load_state_dict(ckpt.optimizer)
            if ckpt.rng is not None:
                torch.set_rng_state(distributed.own_random_state(ckpt.rng))
            best = float(ckpt.extra.get("best_val_accuracy", -1.0))
            best_it = int(ckpt.extra.get("best_val_iteration", -1))
            wall_before = float(ckpt.extra.get("wall_seconds", 0.0))
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise FewShotError(f"cannot resume from {ckpt_dir / LAST}: its state does not fit this run "
                               f"({' '.join(str(exc).split())[:300]})") from exc
        start = ckpt.iteration
    else:
        if (ckpt_dir / LAST).exists():
            raise FewShotError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        torch.manual_seed(cfg.seed)
    main = distributed.is_main()  # under torchrun only rank 0 writes the run folder
    config_yaml = config.to_yaml()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
    logger = RunLogger(run_dir, resume_from=start) if main else None
    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc=config.name, unit="it", dynamic_ncols=True)
    began = time.perf_counter()
    status = "running"

    def save(path: Path, iteration: int) -> None:
        rng = distributed.random_states()  # every process's (a collective), so a resumed run continues exactly
        if not main:
            return
        extra = {"best_val_accuracy": best, "best_val_iteration": best_it,
                 "wall_seconds": wall_before + time.perf_counter() - began}
        save_checkpoint(path, Checkpoint(method.state_dict(), iteration, config.to_dict(), optimizer.state_dict(),
                                         rng, extra))

    device = method.device
    device_type = device.type  # for bf16 autocast
    method.train()
    distributed.broadcast_weights(method)
    try:
        for it in range(start, end):
            lr = learning_rate(cfg, it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch, share = distributed.training_batch(experiment, it, method)  # this process's share (torchrun)
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
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('accuracy', float('nan')):.3f}")
            if cfg.val_episodes and (done % cfg.val_every == 0 or done == cfg.iterations):
                with torch.random.fork_rng():
                    val = experiment.validate(cfg.val_episodes)
                method.train()
                if logger is not None:
                    logger.log({"iteration": done, "phase": "val", "accuracy": val.accuracy, "ci95": val.ci95,
                                "seconds": wall_before + time.perf_counter() - began})
                if bar is not None:
                    bar.write(f"[{config.name}] iteration {done}: validation {val}")
                if val.accuracy > best:
                    best, best_it = val.accuracy, done
                    save(ckpt_dir / BEST, done)
            out_of_time = time_limit is not None and distributed.any_process(
                time.perf_counter() - began >= time_limit)
            if done % cfg.checkpoint_every == 0 or done == end or out_of_time:
                save(ckpt_dir / LAST, done)
            if out_of_time:
                end = done
                break
        status = "finished" if end == cfg.iterations else f"stopped at iteration {end}"
    except KeyboardInterrupt:
        status = "interrupted (resume with --resume)"
        raise
    except (TrainingDiverged, distributed.ProcessFailure) as exc:
        status = f"diverged: {exc}" if isinstance(exc, TrainingDiverged) else f"stopped: {exc}"
        raise
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        wall = wall_before + time.perf_counter() - began
        if main:
            plot_curves(run_dir)
        summary = {"name": config.name, "method": config.method.name, "experiment": config.experiment,
                   "iterations": cfg.iterations, "wall_seconds": round(wall, 1), "status": status,
                   "best_val_accuracy": best, "best_val_iteration": best_it,
                   "command": " ".join(shlex.quote(a) for a in sys.argv)}
        if main:
            write_report(run_dir, summary, config_yaml)
    if end == 0:  # nothing to train (a pretrained backbone): the run folder still holds its weights
        save(ckpt_dir / LAST, end)
    if best_it < 0:  # no validation ran: the last weights are the ones to use
        save(ckpt_dir / BEST, end)
    distributed.barrier("waiting for rank 0 to write the checkpoints")
    return TrainResult(run_dir, end, best, best_it, wall_before + time.perf_counter() - began)


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


def _check_same_config(saved: dict, config: RunConfig) -> None:
    saved, current = upgrade(saved), config.to_dict()
    for section in ("data", "model", "method", "experiment"):
        if saved.get(section) != current.get(section):
            raise FewShotError(f"cannot resume: the checkpoint's {section} config differs from this run's "
                               f"({saved.get(section)} vs {current.get(section)})")

