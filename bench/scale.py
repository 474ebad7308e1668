"""Distributed training throughput with 1 and 2 processes on this machine, and a scaling model for 8 and 64 GPUs.

    python bench/scale.py                          # -> results/scale.json (about 10 minutes on 2 busy cores)
    python bench/scale.py --iterations 6 --repeats 1

Each measurement is ``torchrun --nproc_per_node=P bench/scale.py worker CASE ...``: every process builds the recipe's
experiment and runs the engine's training loop (``fewshot.engine.train.train``: sampling, the sharded step, the
gradient all-reduce, the optimizer) with one torch thread, logging every iteration; throughput is taken from the
logged seconds after ``--warmup`` iterations. The worker also measures, on rank 0, the bytes and the seconds of
the collectives of the step (``torch.distributed.all_reduce`` timed), and the time to sample a whole batch and one
task of it. 1- and 2-process runs alternate, ``--repeats`` times; medians are reported.

The scaling model (a model, not a measurement: no GPU machine was available) takes the measured per-task compute
time ``t_task`` and sampling times of one process and the measured gradient bytes, and assumes
a ring all-reduce ``2(p-1)/p * bytes / bandwidth + 2(p-1) * latency`` per step (plus, for methods whose batch
statistics span the batch, the 4 small all-reduces per batch-norm layer; latency-bound). With ``n = B/p`` tasks per
process, the efficiency (throughput per process relative to one process with the same load) is::

    E = (c + (a + b + t_task) * n) / (c + a * B + b * n + t_task * n + T_allreduce + T_batchnorm)

where sampling a process's n tasks of a batch of B costs ``c + a * B + b * n``: a fixed cost, the random numbers of
all B tasks (every process draws them) and sorting and loading its own n tasks, all measured. ``t_task`` is this CPU
core's compute per task; ``speedup`` S divides it (a GPU computing a task S times faster); sampling stays on the host
(it is not overlapped with the step) and is not sped up. ``speedup_at_75_percent``: the largest S at which E >= 75%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "scale.json"

CASES = {
    # recipe, overrides: the recipe's own model and tasks; one thread per process; no validation or checkpoints
    "maml_omniglot_5w1s": ("omniglot_5w1s_maml", []),
    # ProtoNet's recipe trains one 60-way task per step (meta_batch 1), which cannot be split: 2 tasks per step here
    "protonet_omniglot_5w1s": ("omniglot_5w1s_protonet", ["train.meta_batch=2"]),
}
COMMON = ["train.val_episodes=0", "train.threads=1", "train.checkpoint_every=100000", "train.log_every=1"]

LINKS = {
    # bus bandwidth (bytes/s) a ring all-reduce of a few hundred kB reaches, and the latency of one ring step (s)
    "nvlink_8": {"gpus": 8, "bandwidth": 300e9, "latency": 5e-6,
                 "what": "8 GPUs in one machine over NVLink (H100 SXM: 900 GB/s per GPU bidirectional; NCCL reaches "
                         "~300+ GB/s bus bandwidth on large messages), 5 us per ring step"},
    "infiniband_64": {"gpus": 64, "bandwidth": 40e9, "latency": 10e-6,
                      "what": "64 GPUs, 8 machines, one 400 Gb/s InfiniBand NIC per GPU (50 GB/s; 40 GB/s assumed "
                              "reached), a flat ring over all 64 at the slowest link's figures, 10 us per ring step"},
}
SPEEDUPS = (1, 10, 30, 100)
BATCH_NORM_LAYERS = 4
"""Conv-4's batch norm layers; with shared statistics each does 2 all-reduces forward and 2 backward."""


def machine() -> dict:
    import torch

    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg()}


# --- the worker (one process of a torchrun job) -----------------------------------------------------------------

def worker(case: str, iterations: int, warmup: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from fewshot.config import load_config
    from fewshot.engine import distributed
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.train import train

    recipe, overrides = CASES[case]
    config = load_config(recipe, [*overrides, *COMMON, f"train.iterations={iterations}"])
    experiment = build_experiment(config, os.environ.get("FEWSHOT_DATA"))
    timed = {"seconds": 0.0, "calls": 0, "bytes": 0}
    original = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        began = time.perf_counter()
        try:
            return original(tensor, *args, **kwargs)
        finally:
            timed["seconds"] += time.perf_counter() - began
            timed["calls"] += 1
            timed["bytes"] += tensor.numel() * tensor.element_size()

    dist.all_reduce = all_reduce
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        distributed.barrier()
        train(experiment, run, progress=False)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
            if distributed.is_main() else []
    dist.all_reduce = original
    batch = config.train.meta_batch
    experiment.batch(0, tasks=slice(0, 1))
    sampler = experiment._sampler  # the episodic kinds' task sampler

    def sampling(tasks: int, mine: int) -> float:
        """Seconds to sample ``mine`` of a batch of ``tasks`` tasks (the median of 7)."""
        times = []
        for i in range(7):
            began = time.perf_counter()
            sampler.sample(tasks, 10_000 + i, slice(0, mine))
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    sample, sample_one, sample_one_of_more = sampling(batch, batch), sampling(batch, 1), sampling(8 * batch, 1)
    params = experiment.method.meta_parameters()
    if distributed.is_main():
        seconds = [r["seconds"] for r in rows if r["phase"] == "train"]
        per_iteration = (seconds[-1] - seconds[warmup - 1]) / (len(seconds) - warmup)
        gradient_bytes, reductions = distributed.traffic()
        Path(out).write_text(json.dumps({
            "processes": distributed.world_size(), "iterations": iterations, "warmup": warmup,
            "seconds_per_iteration": per_iteration, "iterations_per_second": 1 / per_iteration,
            "tasks_per_second": batch / per_iteration, "meta_batch": batch,
            "gradient_elements": sum(p.numel() for p in params),
            "gradient_allreduce_bytes_per_iteration": gradient_bytes / max(1, reductions),
            "allreduce_calls_per_iteration": timed["calls"] / iterations,
            "allreduce_bytes_per_iteration": timed["bytes"] / iterations,
            "allreduce_seconds_per_iteration": timed["seconds"] / iterations,
            "sample_seconds_per_batch": sample, "sample_seconds_one_task": sample_one,
            "sample_seconds_one_of_8x_batch": sample_one_of_more,
            "threads": torch.get_num_threads(),
        }))


# --- the driver -------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(case: str, processes: int, iterations: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master-port={free_port()}", str(Path(__file__).resolve()), "worker", case,
                   "--iterations", str(iterations), "--warmup", str(warmup), "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        return json.loads(out.read_text())


def ring_allreduce(nbytes: float, p: int, bandwidth: float, latency: float) -> float:
    """Seconds of one ring all-reduce of ``nbytes`` over ``p`` processes."""
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def model(one: dict, nbytes: float, batch: int, link: dict, speedup: float, shared_statistics: bool) -> dict:
    """Efficiency of ``link['gpus']`` processes on a global batch of ``batch`` tasks (see the module docstring)."""
    p, b1 = link["gpus"], one["meta_batch"]
    a, b, c = sampling_costs(one)
    t_task = max((one["seconds_per_iteration"] - (c + (a + b) * b1)) / b1, 0.0) / speedup
    n = batch / p
    reduce = ring_allreduce(nbytes, p, link["bandwidth"], link["latency"])
    statistics_ = (4 * BATCH_NORM_LAYERS * ring_allreduce(4 * 65, p, link["bandwidth"], link["latency"])
                   if shared_statistics else 0.0)
    step = c + a * batch + b * n + t_task * n + reduce + statistics_
    return {"gpus": p, "meta_batch": batch, "tasks_per_gpu": n, "speedup": speedup, "t_task_s": t_task,
            "sample_fixed_s": c, "sample_per_batch_task_s": a, "sample_per_own_task_s": b, "allreduce_s": reduce,
            "batchnorm_allreduce_s": statistics_, "step_s": step, "efficiency": (c + (a + b + t_task) * n) / step}


def sampling_costs(one: dict) -> tuple[float, float, float]:
    """``(a, b, c)``: sampling n tasks of a batch of B costs ``c + a * B + b * n`` (measured at (B, B), (B, 1) and
    (8B, 1))."""
    batch = one["meta_batch"]
    a = max(one["sample_seconds_one_of_8x_batch"] - one["sample_seconds_one_task"], 0.0) / (7 * batch)
    b = max(one["sample_seconds_per_batch"] - one["sample_seconds_one_task"], 0.0) / max(batch - 1, 1)
    c = max(one["sample_seconds_one_task"] - a * batch - b, 0.0)
    return a, b, c


def speedup_at(efficiency: float, one: dict, nbytes: float, batch: int, link: dict, shared: bool) -> float:
    """The largest ``speedup`` (up to 10000) at which the model still gives ``efficiency`` (bisection, log scale)."""
    low, high = 1.0, 1e4
    if model(one, nbytes, batch, link, low, shared)["efficiency"] < efficiency:
        return 0.0
    for _ in range(60):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if model(one, nbytes, batch, link, mid, shared)["efficiency"] >= efficiency \
            else (low, mid)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "worker"))
    parser.add_argument("case", nargs="?")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.mode == "worker":
        from fewshot.engine.distributed import end_process

        worker(args.case, args.iterations, args.warmup, args.out)
        end_process(0)  # as the fewshot command ends a process of a job (gloo can abort it at interpreter teardown)
    report = {"machine": machine(), "command": " ".join(["python", "bench/scale.py", *sys.argv[1:]]),
              "iterations": args.iterations, "warmup": args.warmup, "repeats": args.repeats, "cases": {}}
    for case in args.cases:
        recipe, overrides = CASES[case]
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for processes in (1, 2):
                runs[processes].append(measure(case, processes, args.iterations, args.warmup))
                print(case, processes, f"{runs[processes][-1]['iterations_per_second']:.3f} it/s", flush=True)
        median = {p: {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float) else rs[0][k]
                      for k in rs[0]} for p, rs in runs.items()}
        one, two = median[1], median[2]
        shared = case.startswith("protonet")
        batches = {"nvlink_8": one["meta_batch"] if not shared else 8,
                   "infiniband_64": max(64, one["meta_batch"]) if not shared else 64}
        report["cases"][case] = {
            "recipe": recipe, "overrides": [*overrides, *COMMON],
            "commands": {p: f"torchrun --nproc_per_node={p} bench/scale.py worker {case} --iterations "
                            f"{args.iterations} --warmup {args.warmup} --out OUT.json" for p in (1, 2)},
            "runs": runs, "median": median,
            "speedup_2_processes": two["iterations_per_second"] / one["iterations_per_second"],
            "efficiency_2_processes": two["iterations_per_second"] / one["iterations_per_second"] / 2,
            "model": {name: [model(one, two["gradient_allreduce_bytes_per_iteration"], batches[name], link, s, shared)
                             for s in SPEEDUPS]
                      for name, link in LINKS.items()},
            "speedup_at_75_percent": {
                name: speedup_at(0.75, one, two["gradient_allreduce_bytes_per_iteration"], batches[name], link, shared)
                      for name, link in LINKS.items()},
        }
    report["links"] = LINKS
    report["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
