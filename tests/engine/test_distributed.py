"""Distributed training and scoring against one process, with real processes on localhost (gloo, CPU).

Every run of ``RUNS`` trains 2 iterations with 2 processes (``torchrun``) and in this process with the whole batch;
the weights must agree to float rounding, and the negative controls (ranks training on the same tasks, batch norm
without shared statistics, Reptile drawing from the global random state) must not. Then: the fixed test episodes
scored by 2 processes give one process's per-episode scores; a batch smaller than the number of processes is
refused; a run launched in the multi-node form, one whose second process dies (then resumed under torchrun) and an
uninterrupted one end bit-identical; a hanging process ends the job within ``train.dist_timeout``.

Float tolerance: runs use SGD, whose step follows the gradient linearly. Entries whose exact gradient is 0 — a conv
bias followed by batch norm, which subtracts it — carry only rounding noise in either run (and Adam, in Reptile's
inner loop or as the outer optimizer, turns that noise into steps of +-lr); they change no output, so the comparison
leaves them out (``INERT``). What is compared is the update: ``|w_2 - w_1| / |w_1 - w_0|`` over everything else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_worker import SECOND_MACHINE

import fewshot
from fewshot.engine.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("dist_worker.py")
SRC = Path(fewshot.__file__).resolve().parents[1]
INERT = re.compile(r"convs\.\d+\.bias$")
TOLERANCE = 1e-4
"""Largest relative difference of the update allowed between 2 processes and 1 (measured: <= 1e-5, ProtoNet)."""
CONTROL_GAP = 1e-2
"""Smallest relative difference a negative control must show (measured: >= 0.14)."""

COMMON = ["train.iterations=2", "train.val_episodes=0", "train.threads=1", "train.optimizer=sgd",
          "train.checkpoint_every=100", "train.log_every=1"]
CONV = ["model.hidden=16"]
MAML = [*CONV, "train.meta_batch=4", "train.query=2"]
REPTILE = [*CONV, "train.meta_batch=3", "train.shot=5", "method.inner_steps=2", "method.inner_batch=5",
           "train.lr=1.0", "method.adam_state=task"]  # meta_batch 3: unequal shares (2 + 1 tasks); a fresh Adam per
# task (the recipe's shared Adam state trains the tasks one after the other, so it does not split over processes)
PROTONET = [*CONV, "train.way=5", "train.meta_batch=2", "train.query=3"]


def run(name: str, recipe: str, *overrides: str, control: str | None = None, score: int | None = None,
        train: bool = True) -> dict:
    spec = {"name": name, "recipe": recipe,
            "overrides": ([*COMMON, "train.lr=0.1"] if train else ["train.iterations=0"]) + list(overrides)}
    if control:
        spec["control"] = control
    if score:
        spec["eval"] = score
    return spec


RUNS = [
    run("maml", "omniglot_5w1s_maml", *MAML, "train.val_every=1", "train.val_episodes=4", "eval.query=2"),
    run("fomaml", "omniglot_5w1s_fomaml", *CONV, "train.meta_batch=3", "train.query=2"),
    run("meta_sgd", "omniglot_5w1s_maml", *CONV, "method.learn_inner_lr=true", "train.meta_batch=2",
        "train.query=2"),
    run("anil", "omniglot_5w1s_anil", *MAML),
    run("reptile", "omniglot_5w1s_reptile", *REPTILE),
    run("protonet", "omniglot_5w1s_protonet", *PROTONET),
    run("metaoptnet", "omniglot_5w1s_metaoptnet", *PROTONET),
    run("prompt", "banking77_5w1s_prompt_minilm", "train.meta_batch=2", "train.query=2", "method.inner_steps=1",
        "method.length=2"),
    run("supervised_finetune", "omniglot_5w1s_baseline_finetune_conv4", *CONV, "train.batch_size=8"),
    run("dann", "mnist_usps_dann_5shot", "train.batch_size=8", "train.lr=0.05"),
    run("mamlpp", "omniglot_5w1s_mamlpp", *CONV, "train.meta_batch=4", "train.query=2", "method.inner_steps=2",
        "method.test_inner_steps=2", "method.msl_iterations=2", "method.first_order_iterations=1"),
]
PER_PROCESS = {"mamlpp": re.compile(r"running_(mean|var)$")}
"""Buffers each process keeps for itself: MAML++'s per-step running statistics follow its own tasks (they normalise
nothing, as in the authors' code, and rank 0's are saved); its parameters must still equal one process's."""
CONTROLS = [
    run("maml_same_tasks", "omniglot_5w1s_maml", *MAML, control="same_tasks"),
    run("protonet_unsynced_bn", "omniglot_5w1s_protonet", *PROTONET, control="unsynced_bn"),
    run("supervised_unsynced_bn", "omniglot_5w1s_baseline_finetune_conv4", *CONV, "train.batch_size=8",
        control="unsynced_bn"),
    run("reptile_global_rng", "omniglot_5w1s_reptile", *REPTILE, control="global_rng"),
]
SCORES = [
    run("score_maml", "omniglot_5w1s_maml", *CONV, "eval.query=3", "method.test_inner_steps=2", score=7,
        train=False),
    run("score_protonet", "omniglot_5w1s_protonet", *CONV, "eval.query=3", score=5, train=False),
    run("score_reptile", "omniglot_5w1s_reptile", *CONV, "eval.query=3", "method.test_inner_steps=3", score=5,
        train=False),  # draws from the global random state while scoring: every process scores every episode
]
REFUSED = [run("protonet_meta_batch_1", "omniglot_5w1s_protonet", *PROTONET[:-2], "train.meta_batch=1")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(data_root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, FEWSHOT_DATA=str(data_root), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, **extra}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def load_worker():
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, data_root):
    """The runs with 2 processes (one torchrun job) and with 1 (in this process): ``(two, one)`` folders."""
    root = tmp_path_factory.mktemp("distributed")
    spec = root / "spec.json"
    spec.write_text(json.dumps(RUNS + CONTROLS + SCORES + REFUSED))
    job = subprocess.run(
        torchrun("--nproc_per_node=2", f"--master-port={free_port()}", str(WORKER), "runs", str(spec),
                 str(root / "two")),
        env=environment(data_root), capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    single = root / "single.json"
    single.write_text(json.dumps(RUNS + SCORES))
    threads, data = torch.get_num_threads(), os.environ.get("FEWSHOT_DATA")
    os.environ["FEWSHOT_DATA"] = str(data_root)
    try:
        load_worker().runs(str(single), str(root / "one"))
    finally:
        torch.set_num_threads(threads)
        if data is None:
            os.environ.pop("FEWSHOT_DATA")
        else:
            os.environ["FEWSHOT_DATA"] = data
    return root / "two", root / "one"


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def relative_difference(one: Path, two: Path) -> float:
    """``|w_2 - w_1| / |w_1 - w_0|`` over the trained weights and buffers (``INERT`` and ``PER_PROCESS`` entries
    left out)."""
    initial = torch.load(one / "initial.pt")
    w1 = load_checkpoint(one / "checkpoints" / "last.safetensors").weights
    w2 = load_checkpoint(two / "checkpoints" / "last.safetensors").weights
    own = PER_PROCESS.get(one.name, INERT)
    keys = [k for k in sorted(w1) if w1[k].is_floating_point() and not INERT.search(k) and not own.search(k)]
    flat = lambda w: torch.cat([w[k].double().flatten() for k in keys])  # noqa: E731
    update = flat(w1) - flat(initial)
    assert update.norm() > 0, "the run did not train"
    return float((flat(w2) - flat(w1)).norm() / update.norm())


@pytest.mark.parametrize("name", [r["name"] for r in RUNS])
def test_two_processes_train_as_one(jobs, name):
    two, one = jobs
    assert result(two / name) == {"world_size": 2, "seconds": result(two / name)["seconds"]}
    assert relative_difference(one / name, two / name) < TOLERANCE
    assert load_checkpoint(two / name / "checkpoints" / "last.safetensors").config["train"]["world_size"] == 2
    assert "world_size: 2" in (two / name / "config.yaml").read_text()
    rows = [[row for row in map(json.loads, (folder / name / "metrics.jsonl").read_text().splitlines())
             if row["phase"] != "start"] for folder in (one, two)]
    assert [r["phase"] for r in rows[1]] == [r["phase"] for r in rows[0]]
    start = next(row for row in map(json.loads, (two / name / "metrics.jsonl").read_text().splitlines())
                 if row["phase"] == "start")  # each process's machine: process 1 says it ran elsewhere
    assert [(m["ranks"], m["cpu"]) for m in start["machine"]["other_machines"]] == [([1], SECOND_MACHINE)]
    assert f"rank 1 on {SECOND_MACHINE}" in (two / name / "report.md").read_text()
    for a, b in zip(*rows, strict=True):  # the logged metrics are reduced over the processes
        key = "loss" if a["phase"] == "train" else "accuracy"  # validation: its episodes split over the processes
        assert b[key] == pytest.approx(a[key], rel=1e-4)


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: c["name"])
def test_negative_controls_do_not_train_as_one(jobs, control):
    """Ranks on the same tasks, batch statistics per share, Reptile's global random state: each breaks equality."""
    two, one = jobs
    reference = {"maml_same_tasks": "maml", "protonet_unsynced_bn": "protonet",
                 "supervised_unsynced_bn": "supervised_finetune", "reptile_global_rng": "reptile"}[control["name"]]
    assert relative_difference(one / reference, two / control["name"]) > CONTROL_GAP


@pytest.mark.parametrize("name", [r["name"] for r in SCORES])
def test_sharded_scores_equal_one_process(jobs, name):
    two, one = jobs
    assert result(two / name)["scores"] == result(one / name)["scores"]  # exactly, episode by episode
    assert result(two / name)["sharded"] is (name != "score_reptile")


def test_a_batch_smaller_than_the_job_is_refused(jobs):
    two, _ = jobs
    error = result(two / "protonet_meta_batch_1")["error"]
    assert "train.meta_batch must be at least 2" in error and "cannot be split" in error


TRAIN = ["train", "omniglot_5w1s_maml", *MAML, "train.iterations=4", "train.val_episodes=0", "train.threads=1",
         "train.checkpoint_every=1", "train.dist_timeout=30", "--no-test", "--no-progress"]


def processes(data_root: Path, args: list[str], die: str) -> list[subprocess.Popen]:
    """Two processes of one job started by hand (a free localhost port), process 1 dying or hanging as ``die``."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, str(WORKER), "cli", "--die", die, *args],
                             env=environment(data_root, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]


def test_a_dead_process_stops_the_job_and_the_resumed_run_is_bit_identical(tmp_path, data_root, capsys):
    env = environment(data_root)
    # the uninterrupted run, launched in the multi-node form: two torchrun agents meeting at a c10d rendezvous
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen(torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                                        f"--rdzv-endpoint={endpoint}", "--rdzv-id=whole", str(WORKER), "cli",
                                        *TRAIN, "--out", str(tmp_path / "whole")),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for agent in agents:
        assert agent.wait(timeout=300) == 0, agent.stderr.read()[-3000:]

    # the same run whose process 1 exits in its 3rd step, after the checkpoint of iteration 2
    rank0, rank1 = processes(data_root, [*TRAIN, "--out", str(tmp_path / "killed")], "1:3:exit")
    assert rank1.wait(timeout=300) == 3
    assert rank0.wait(timeout=60) == 2  # at once, not after train.dist_timeout
    message = rank0.stderr.read()
    assert "another process died" in message and "--resume" in message, message
    killed = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    assert load_checkpoint(killed).iteration == 2
    assert "stopped: process 0 of 2" in (tmp_path / "killed" / "report.md").read_text()

    # resumed under torchrun: bit-identical to the uninterrupted run (weights, optimizer, random states)
    resumed = subprocess.run(torchrun("--nproc_per_node=2", f"--master-port={free_port()}", str(WORKER), "cli",
                                      "train", str(tmp_path / "killed"), "--resume", "--no-test", "--no-progress"),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = (load_checkpoint(tmp_path / run / "checkpoints" / "last.safetensors") for run in ("whole", "killed"))
    assert whole.iteration == again.iteration == 4
    assert all(torch.equal(whole.weights[k], again.weights[k]) for k in whole.weights)
    assert torch.equal(whole.rng, again.rng) and whole.rng.shape[0] == 2
    assert whole.optimizer["state"].keys() == again.optimizer["state"].keys()
    for index, a in whole.optimizer["state"].items():  # by parameter index: a file's order is not the parameters'
        b = again.optimizer["state"][index]
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))

    # another number of processes is refused, saying how to resume
    from fewshot.cli import main

    assert main(["train", str(tmp_path / "killed"), "--resume", "--no-test", "--no-progress"]) == 2
    assert "trained by 2 process(es) and this job has 1" in capsys.readouterr().err


def test_a_hanging_process_ends_the_job_within_the_timeout(tmp_path, data_root):
    args = [*TRAIN, "train.dist_timeout=4", "--out", str(tmp_path / "hung")]
    rank0, rank1 = processes(data_root, args, "1:2:hang")
    try:
        began = time.monotonic()
        code = rank0.wait(timeout=300)
        message = rank0.stderr.read()
        assert code == 2, message
        assert "did not answer within train.dist_timeout=4 s" in message, message
        waited = float(re.search(r"failed after ([0-9.]+) s", message).group(1))
        assert 3.5 <= waited <= 12, message
        assert time.monotonic() - began < 240
    finally:
        rank1.kill()  # it hangs on purpose
        rank1.wait()


@pytest.mark.parametrize("recipe", ["omniglot_5w1s_maml", "banking77_5w1s_prompt_minilm"])
def test_a_slice_of_tasks_is_the_slice_of_the_batch(data_root, recipe):
    """What one process samples (its tasks only) is exactly its slice of the whole batch, for classes of equal size
    (Omniglot) and of unequal size (BANKING77's intents)."""
    from fewshot.config import load_config
    from fewshot.data.tasks import TaskSampler
    from fewshot.engine.experiment import build_dataset

    config = load_config(recipe, [])
    dataset = build_dataset(config, "train", str(data_root))
    sampler = TaskSampler(dataset, 5, 1, 2, seed=3)
    assert sampler._equal is (recipe.startswith("omniglot"))
    whole = sampler.sample(5, iteration=7)
    for tasks in (slice(0, 3), slice(3, 5), slice(2, 3)):
        part = sampler.sample(5, iteration=7, tasks=tasks)
        assert torch.equal(part.classes, whole.classes[tasks]) and torch.equal(part.seeds, whole.seeds[tasks])
        assert torch.equal(part.support_y, whole.support_y[tasks]) and torch.equal(part.query_y, whole.query_y[tasks])
        if isinstance(whole.support_x, torch.Tensor):
            assert torch.equal(part.support_x, whole.support_x[tasks])
            assert torch.equal(part.query_x, whole.query_x[tasks])
        else:
            assert part.support_x == whole.support_x[tasks] and part.query_x == whole.query_x[tasks]
