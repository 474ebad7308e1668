"""One process of a distributed test job (started by torchrun, or by the test with WORLD_SIZE/RANK/MASTER_* set).

``python dist_worker.py runs SPEC.json OUT``: train (and score) each run of the spec into ``OUT/<name>``; a run may
name a ``control`` that breaks one part of the distributed step on purpose (the negative controls):

* ``same_tasks``: every process trains on rank 0's slice of the batch (as if the ranks drew the same tasks);
* ``unsynced_bn``: batch statistics per process's share (no all-reduce inside batch norm);
* ``global_rng``: Reptile's inner mini-batches drawn from the global random state instead of per-task seeds.

``python dist_worker.py cli [--die RANK:STEP:exit|hang] ARGS...``: ``fewshot ARGS`` (the command line), where
process RANK, with ``--die``, exits (or hangs) at its training step STEP (counted from 1 in this process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

SECOND_MACHINE = "process 1's machine (dist_worker)"


def runs(spec_path: str, out: str) -> int:
    from fewshot.config import load_config
    from fewshot.engine import distributed
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.scoring import score
    from fewshot.engine.train import train
    from fewshot.errors import FewShotError

    data_root = os.environ["FEWSHOT_DATA"]
    shards: list[distributed.EpisodeShards] = []
    original_init = distributed.EpisodeShards.__init__

    def tracked_init(self: distributed.EpisodeShards) -> None:
        original_init(self)
        shards.append(self)

    distributed.EpisodeShards.__init__ = tracked_init  # type: ignore[method-assign]
    if os.environ.get("RANK") == "1":  # as if process 1 ran on another machine: its start rows must name it
        import fewshot.engine.train as training

        own = training.machine
        training.machine = lambda: {**own(), "cpu": SECOND_MACHINE}  # type: ignore[assignment]
    try:
        for run in json.loads(Path(spec_path).read_text()):
            began = time.perf_counter()
            folder = Path(out) / run["name"]
            config = load_config(run["recipe"], run["overrides"])
            initial = None
            try:
                experiment = build_experiment(config, data_root)
                initial = {k: v.clone() for k, v in experiment.method.state_dict().items()}
                result = {"world_size": distributed.world_size()}
                with _control(run.get("control"), experiment):
                    if config.train.iterations:
                        train(experiment, folder, progress=False)
                    if run.get("eval"):
                        shards.clear()
                        scores = score(experiment, episodes=run["eval"]).per_episode
                        result.update(scores=scores, sharded=bool(shards) and shards[-1].split)
            except FewShotError as exc:
                result = {"error": str(exc)}
            result["seconds"] = round(time.perf_counter() - began, 2)
            if distributed.is_main():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "result.json").write_text(json.dumps(result))
                if initial is not None:
                    torch.save(initial, folder / "initial.pt")
    finally:
        distributed.EpisodeShards.__init__ = original_init  # type: ignore[method-assign]
    return 0


@contextlib.contextmanager
def _control(name: str | None, experiment):
    from fewshot.engine import distributed

    saved: dict = {}
    if name == "same_tasks":
        bounds = distributed._bounds
        saved["_bounds"] = bounds
        distributed._bounds = lambda n, part=None, parts=None: bounds(n, 0, parts)
    elif name == "unsynced_bn":
        saved["shared_statistics"] = distributed.shared_statistics
        distributed.shared_statistics = lambda method: contextlib.nullcontext()
    elif name == "global_rng":
        batch = experiment.batch
        experiment.batch = lambda iteration, **kw: dataclasses.replace(batch(iteration, **kw), seeds=None)
    elif name is not None:
        raise ValueError(f"unknown control {name!r}")
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(distributed, key, value)


def cli(args: list[str]) -> int:
    import fewshot.engine.train as engine_train
    from fewshot.cli import main

    if args and args[0] == "--die":
        who, step, how = args[1].split(":")
        args = args[2:]
        if int(os.environ.get("RANK", "0")) == int(who):
            original = engine_train.batch_to
            calls = [0]

            def batch_to(batch, device):
                calls[0] += 1
                if calls[0] == int(step):
                    print(f"test: process {who} {'exits' if how == 'exit' else 'hangs'} at step {step}",
                          file=sys.stderr, flush=True)
                    if how == "exit":
                        os._exit(3)
                    time.sleep(3600)
                return original(batch, device)

            engine_train.batch_to = batch_to
    return main(args)


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        if sys.argv[1] == "runs":
            code = runs(sys.argv[2], sys.argv[3])
        else:
            code = cli(sys.argv[2:])
    except Exception:
        traceback.print_exc()
        code = 1
    from fewshot.engine.distributed import end_process

    end_process(code)  # as the `fewshot` command ends: leave the process group, skip the interpreter's teardown
