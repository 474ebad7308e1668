"""The training engine: exact resume after a kill, atomic checkpoints, the NaN guard, override validation."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fewshot.io
from fewshot import registry
from fewshot.config import RunConfig, apply_overrides, component_options, load_config, load_raw
from fewshot.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fewshot.engine.experiment import build_experiment
from fewshot.engine.logs import read_metrics
from fewshot.engine.train import TrainingDiverged, train
from fewshot.errors import FewShotError

TINY_REPTILE = ["model.hidden=16", "train.meta_batch=2", "method.inner_steps=2", "method.inner_batch=5",
                "method.test_inner_steps=2", "train.shot=1", "train.val_every=6", "train.val_episodes=4",
                "train.checkpoint_every=2", "train.log_every=1", "eval.episodes=10", "train.threads=1"]


def tiny(recipe="omniglot_5w1s_reptile", *extra):
    return load_config(recipe, TINY_REPTILE + list(extra))


def test_resume_after_kill_is_bit_identical(tmp_path, data_root):
    iterations = 60
    overrides = TINY_REPTILE + [f"train.iterations={iterations}"]
    reference = train(build_experiment(tiny("omniglot_5w1s_reptile", f"train.iterations={iterations}"), data_root),
                      tmp_path / "ref", progress=False)
    assert reference.iterations == iterations

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fewshot", "train", "omniglot_5w1s_reptile", *overrides, "--out", str(run),
           "--data-root", str(data_root), "--no-progress", "--no-test"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last).iteration >= 10:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = load_checkpoint(last).iteration
            break
        time.sleep(0.02)
    assert killed_at is not None and killed_at < iterations, proc.stderr.read().decode()[-2000:]

    resumed = train(build_experiment(load_config(run / "config.yaml"), data_root), run, resume=True, progress=False)
    assert resumed.iterations == iterations
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.safetensors").weights
    b = load_checkpoint(last).weights
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(rows) == iterations  # logs continue where the checkpoint was, without duplicates


def test_run_folder_contents(tmp_path, data_root):
    run = tmp_path / "run"
    train(build_experiment(tiny("omniglot_5w1s_reptile", "train.iterations=6"), data_root), run, progress=False)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "report.md",
                 "checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        assert (run / name).exists(), name
    assert RunConfig.from_dict(load_raw(run / "config.yaml")).train.iterations == 6
    with pytest.raises(FewShotError, match="already holds a run"):
        train(build_experiment(tiny("omniglot_5w1s_reptile", "train.iterations=6"), data_root), run, progress=False)


def test_time_limit_stops_and_the_run_resumes(tmp_path, data_root):
    run = tmp_path / "run"
    config = tiny("omniglot_5w1s_reptile", "train.iterations=6", "train.checkpoint_every=100")
    first = train(build_experiment(config, data_root), run, progress=False, time_limit=1e-9)
    assert first.iterations == 1  # the limit is checked after each iteration
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").iteration == 1
    assert train(build_experiment(config, data_root), run, resume=True, progress=False).iterations == 6
    starts = [row for row in read_metrics(run) if row["phase"] == "start"]  # each segment records its machine
    assert [row["iteration"] for row in starts] == [0, 1]
    for row in starts:
        assert row["machine"]["torch"] == torch.__version__ and row["machine"]["device"] == "cpu"
        assert row["machine"]["torch_threads"] == config.train.threads and row["machine"]["world_size"] == 1
    report = (run / "report.md").read_text()
    assert "## Where it trained" in report and "- iterations 0-1: " in report and "- iterations 1-6: " in report
    with pytest.raises(FewShotError, match="time limit must be > 0"):
        train(build_experiment(config, data_root), tmp_path / "other", progress=False, time_limit=0)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root):
    experiment = build_experiment(tiny("omniglot_5w1s_reptile", "train.iterations=20"), data_root)
    clean_batch = experiment.batch

    def poisoned(iteration):
        batch = clean_batch(iteration)
        if iteration == 5:
            batch.support_x[0, 0, 0, 0] = float("nan")
        return batch

    experiment.batch = poisoned
    with pytest.raises(TrainingDiverged, match="iteration 6"):
        train(experiment, tmp_path / "run", progress=False)
    good = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert good.iteration == 4
    assert all(torch.isfinite(v).all() for v in good.weights.values())
    assert "diverged" in (tmp_path / "run" / "report.md").read_text()


def test_a_split_that_cannot_validate_stops_the_run_before_its_first_step(tmp_path, data_root):
    config = tiny("omniglot_5w1s_reptile", "train.iterations=20", "train.val_every=20", "data.options.trainval=true")
    with pytest.raises(FewShotError, match="cannot validate"):
        train(build_experiment(config, data_root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists(), "no step was trained"
    no_validation = tiny("omniglot_5w1s_reptile", "train.iterations=2", "train.val_episodes=0",
                         "data.options.trainval=true")
    assert train(build_experiment(no_validation, data_root), tmp_path / "other", progress=False).iterations == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, Checkpoint({"w": torch.ones(3)}, iteration=1))

    def crash(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(fewshot.io.os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, Checkpoint({"w": torch.zeros(3)}, iteration=2))
    kept = load_checkpoint(path)
    assert kept.iteration == 1 and torch.equal(kept.weights["w"], torch.ones(3))


def test_checkpoint_roundtrip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), 7, {"name": "x"}, opt.state_dict(), torch.get_rng_state()))
    loaded = load_checkpoint(path)
    assert loaded.iteration == 7 and loaded.config == {"name": "x"}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual file permissions, not owner-only
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(loaded.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(FewShotError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.safetensors")
    torch.save({"x": 1}, tmp_path / "pickle.pt")
    with pytest.raises(FewShotError):
        load_checkpoint(tmp_path / "pickle.pt")


def test_overrides_are_validated(monkeypatch):
    raw = load_raw("omniglot_5w1s_maml")
    cfg = RunConfig.from_dict(apply_overrides(raw, ["method.inner_steps=5", "meta_batch=16", "train.lr=1e-4"]))
    assert cfg.method.options["inner_steps"] == 5 and cfg.train.meta_batch == 16 and cfg.train.lr == 1e-4
    with pytest.raises(FewShotError, match="method.inner_stepz"):
        RunConfig.from_dict(apply_overrides(raw, ["method.inner_stepz=5"]))
    with pytest.raises(FewShotError, match="train.meta_batch must be an integer"):
        RunConfig.from_dict(apply_overrides(raw, ["train.meta_batch=lots"]))
    words = RunConfig.from_dict(apply_overrides(load_raw("hwu64_5w1s_features_minilm"), ["method.cache=off"]))
    assert words.method.options["cache"] == "off"  # not YAML 1.1's False
    switched = RunConfig.from_dict(apply_overrides(raw, ["method.first_order=on"]))
    assert component_options(switched.method, registry.METHODS, "method").first_order is True
    with pytest.raises(FewShotError, match="method.first_order must be true or false"):
        RunConfig.from_dict(apply_overrides(raw, ["method.first_order=maybe"]))
    with pytest.raises(FewShotError, match="unknown override key 'nonsense'"):
        apply_overrides(raw, ["nonsense=1"])
    with pytest.raises(FewShotError, match="ambiguous"):
        apply_overrides(raw, ["way=20"])
    with pytest.raises(FewShotError, match="key=value"):
        apply_overrides(raw, ["inner_steps"])
    # MAML builds each task's head (method.head_init): the model keeps the trained 5-way one, tasks are 20-way
    twenty = build_experiment(RunConfig.from_dict(apply_overrides(raw, ["eval.way=20"])))
    assert twenty.method.model.head.out_features == 5
    from fewshot.methods.maml import MAML

    monkeypatch.setattr(MAML, "builds_head", False)  # a method with a fixed-way head is still refused
    with pytest.raises(FewShotError, match="train.way .5. must equal eval.way .20."):
        build_experiment(RunConfig.from_dict(apply_overrides(raw, ["eval.way=20"])))


def test_lr_schedules():
    from fewshot.config import TrainConfig
    from fewshot.engine.train import learning_rate

    linear = TrainConfig(iterations=100, lr=1.0, lr_final=0.0, schedule="linear")
    assert learning_rate(linear, 0) == 1.0 and learning_rate(linear, 50) == pytest.approx(0.5)
    step = TrainConfig(iterations=10000, lr=1e-3, schedule="step", step_size=2000, gamma=0.5)
    assert learning_rate(step, 1999) == 1e-3 and learning_rate(step, 4000) == pytest.approx(2.5e-4)


def test_inverse_schedule_is_the_dann_papers():
    """``inverse``: mu_p = mu_0 / (1 + alpha p) ** beta, p = iteration / iterations (Ganin & Lempitsky 2015)."""
    from fewshot.config import TrainConfig
    from fewshot.engine.train import learning_rate

    paper = TrainConfig(iterations=2000, lr=0.01, schedule="inverse")
    assert (paper.anneal_alpha, paper.anneal_beta) == (10.0, 0.75)
    assert learning_rate(paper, 0) == 0.01
    assert learning_rate(paper, 200) == pytest.approx(0.01 / 2 ** 0.75)  # p = 0.1
    assert learning_rate(paper, 1000) == pytest.approx(0.01 / 6 ** 0.75)  # p = 0.5
    assert learning_rate(paper, 2000) == pytest.approx(0.01 / 11 ** 0.75)  # p = 1
    assert learning_rate(paper, 2000) == pytest.approx(0.0016556, rel=1e-4)
    rates = [learning_rate(paper, it) for it in range(0, 2001, 100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    other = TrainConfig(iterations=100, lr=1.0, schedule="inverse", anneal_alpha=3.0, anneal_beta=0.5)
    assert learning_rate(other, 100) == pytest.approx(0.5)
    assert learning_rate(other, 25) == pytest.approx(1 / 1.75 ** 0.5)
    flat = TrainConfig(iterations=100, lr=0.1, schedule="inverse", anneal_alpha=0.0)
    assert learning_rate(flat, 73) == 0.1
    for key in ("anneal_alpha", "anneal_beta"):
        with pytest.raises(FewShotError, match=f"train.{key} must be >= 0"):
            TrainConfig(schedule="inverse", **{key: -0.5})
    with pytest.raises(FewShotError, match="train.schedule must be one of"):
        TrainConfig(schedule="dann")


def test_sgd_gets_its_momentum():
    from fewshot.config import TrainConfig
    from fewshot.engine.train import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(params, TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert make_optimizer(params, TrainConfig(optimizer="sgd")).param_groups[0]["momentum"] == 0.0


def test_unreadable_recipe_and_unknown_names(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(FewShotError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FewShotError, match="no recipe or file named"):
        load_config("omniglot_5w1s_nosuchmethod")
    with pytest.raises(FewShotError, match="unknown method.name"):
        RunConfig.from_dict(apply_overrides(load_raw("omniglot_5w1s_maml"), ["method.name=foo"]))


@pytest.fixture(autouse=True)
def _threads():
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class _StopAfter:
    """Wraps a method so that its ``chunks``-th predict call dies like a killed process."""

    def __init__(self, method, chunks: int) -> None:
        self.method, self.left = method, chunks
        self.training = method.training
        self.sizes: list[int] = []  # tasks per predict call that returned

    @property
    def device(self):
        return self.method.device

    def eval(self):
        self.method.eval()

    def train(self, mode: bool = True):
        self.method.train(mode)

    def end_evaluation(self):
        self.method.end_evaluation()

    def predict(self, episode):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        self.sizes.append(episode.num_tasks)
        return self.method.predict(episode)


def test_interrupted_evaluation_resumes_where_it_stopped(tmp_path, data_root, capsys):
    from fewshot.engine.evaluate import evaluate
    from fewshot.engine.records import EvalRecord

    experiment = build_experiment(load_config("omniglot_5w1s_protonet", ["model.hidden=16"]), data_root)
    data, path = experiment.dataset("test"), tmp_path / "record.json"
    args = dict(way=5, shot=1, query=3, episodes=20, seed=0, chunk=5)
    full = evaluate(experiment.method, data, **args)

    stopped = _StopAfter(experiment.method, 2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(stopped, data, record=EvalRecord(path, {"run": "a"}), **args)
    kept = len(__import__("json").loads(path.read_text())["scores"])
    assert stopped.sizes[0] == 1 and kept == sum(stopped.sizes) > 1  # both finished chunks kept

    resumed = evaluate(_StopAfter(experiment.method, 20), data, record=EvalRecord(path, {"run": "a"}), **args)
    assert f"after {kept} recorded episodes" in capsys.readouterr().err
    assert resumed.per_episode == full.per_episode  # only the rest was scored now, and it matches

    with pytest.raises(KeyboardInterrupt):  # another identity (other weights, config): nothing is reused
        evaluate(_StopAfter(experiment.method, 0), data, record=EvalRecord(path, {"run": "b"}), **args)


def test_evaluation_chunks_follow_the_cost_of_a_task(data_root):
    """A method that takes seconds per task is scored (and its record saved) one task at a time; a fast one in
    chunks; the scores do not depend on the chunking."""
    from fewshot.engine.evaluate import evaluate

    experiment = build_experiment(load_config("omniglot_5w1s_protonet", ["model.hidden=16"]), data_root)
    data, args = experiment.dataset("test"), dict(way=5, shot=1, query=3, episodes=12, seed=0, chunk=5)
    fast, slow = _StopAfter(experiment.method, 100), _StopAfter(experiment.method, 100)
    chunked = evaluate(fast, data, **args)
    single = evaluate(slow, data, save_every=1e-9, **args)  # every task "too slow" to batch
    assert fast.sizes == [1, 5, 5, 1] and slow.sizes == [1] * 12
    assert chunked.per_episode == single.per_episode
    with pytest.raises(FewShotError, match="save_every"):
        evaluate(experiment.method, data, save_every=0, **args)


def test_bf16_precision_is_opt_in_and_trains(tmp_path, data_root):
    with pytest.raises(FewShotError, match="train.precision"):
        load_config("omniglot_5w1s_protonet", ["train.precision=fp16"])
    tiny_proto = ["model.hidden=16", "train.way=5", "train.iterations=3", "train.val_episodes=0", "eval.episodes=5",
                  "train.threads=1", "data.options.rotations=false"]
    weights = {}
    for precision in ("fp32", "bf16"):
        config = load_config("omniglot_5w1s_protonet", [*tiny_proto, f"train.precision={precision}"])
        train(build_experiment(config, data_root), tmp_path / precision, progress=False)
        weights[precision] = load_checkpoint(tmp_path / precision / "checkpoints" / "last.safetensors").weights
    first = "model.convs.1.weight"
    assert weights["bf16"][first].dtype == torch.float32  # the weights stay fp32
    assert torch.isfinite(weights["bf16"][first]).all()
    difference = (weights["bf16"][first] - weights["fp32"][first]).abs().max()
    assert 0 < difference < 1e-2  # bf16 arithmetic changed the steps, but only slightly
