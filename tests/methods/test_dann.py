"""DANN: gradient reversal, the paper's schedules, the MNIST/USPS loader, and adversarial training on real digits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fewshot.config import RunConfig, load_config, load_raw, upgrade
from fewshot.data.digits import digits, load_domain, stratified_halves
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import learning_rate, train
from fewshot.errors import FewShotError
from fewshot.methods.dann import DANNConfig, grad_reverse, lambda_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_flips_sign_and_scales(lambd):
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 7, dtype=torch.float64)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)  # identity forward
    y.backward(upstream)
    assert torch.equal(x.grad, -lambd * upstream)


def test_gradient_reversal_inside_a_network():
    """Through a linear layer: the reversed gradient is exactly -lambda times the plain one."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    layer(grad_reverse(x, 0.7)).pow(2).sum().backward()
    assert torch.allclose(x.grad, -0.7 * plain, rtol=0, atol=1e-12)


def test_paper_schedules():
    assert lambda_schedule(0.0) == 0.0
    assert lambda_schedule(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert lambda_schedule(1.0) == pytest.approx(0.99991, abs=1e-5)
    # the learning rate: the engine's inverse schedule, in every mnist_usps recipe with the paper's optimizer
    for recipe in ("mnist_usps_source_only", "mnist_usps_dann", "mnist_usps_target_oracle",
                   "mnist_usps_source_only_5shot", "mnist_usps_dann_5shot"):
        t = load_config(recipe).train
        assert (t.optimizer, t.momentum, t.schedule, t.anneal_alpha, t.anneal_beta) == ("sgd", 0.9, "inverse", 10, 0.75)
        assert learning_rate(t, t.iterations) == pytest.approx(t.lr / 11 ** 0.75)


def test_method_leaves_the_gradients_unscaled(data_root):
    """The learning-rate annealing is the optimizer's: with lambda = 0 (source-only) the gradient of a batch does
    not depend on the training progress (the method used to scale it by 1 / (1 + 10 p) ** 0.75)."""
    torch.manual_seed(0)
    experiment = build_experiment(load_config("mnist_usps_source_only", ["train.device=cpu"]), str(data_root))
    method, batch = experiment.method, experiment.batch(0)
    grads = []
    for progress in (0.0, 1.0):
        method.zero_grad(set_to_none=True)
        batch.progress = progress
        metrics = method.training_gradient(batch)
        grads.append([p.grad.clone() for p in method.parameters() if p.grad is not None])
    assert "lr_factor" not in metrics and len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_old_configs_move_the_annealing_to_the_engine():
    """Configs written when the method scaled its gradients (options anneal_lr, alpha, beta) load with the same
    annealing as ``train.schedule: inverse``; ``anneal_lr: false`` keeps the rate as it was."""
    raw = load_raw("mnist_usps_dann")
    raw["train"] = {k: v for k, v in raw["train"].items() if k not in ("schedule", "anneal_alpha", "anneal_beta")}
    old = {**raw, "method": {"name": "dann", "options": {"mode": "dann", "anneal_lr": True, "alpha": 5.0,
                                                            "beta": 0.5}}}
    config = RunConfig.from_dict(old)
    assert "anneal_lr" in old["method"]["options"]  # the caller's mapping is left alone
    assert config.method.options == {"mode": "dann"}
    assert (config.train.schedule, config.train.anneal_alpha, config.train.anneal_beta) == ("inverse", 5.0, 0.5)
    defaults = RunConfig.from_dict({**raw, "method": {"name": "dann", "options": {"alpha": 10.0}}})
    assert (defaults.train.schedule, defaults.train.anneal_alpha, defaults.train.anneal_beta) == ("inverse", 10, 0.75)
    off = RunConfig.from_dict({**raw, "method": {"name": "dann", "options": {"anneal_lr": False, "beta": 0.5}}})
    assert off.method.options == {} and off.train.schedule == "constant"
    cosine = {**old, "train": {**raw["train"], "schedule": "cosine"}}
    with pytest.raises(FewShotError, match="anneal_lr .removed. .*train.schedule=cosine"):
        RunConfig.from_dict(cosine)
    today = load_raw("mnist_usps_dann")
    assert upgrade(today) is today


def test_digits_loader_labels_and_split(data_root):
    mnist, usps = load_domain("mnist", data_root), load_domain("usps", data_root)
    assert mnist.images.shape == (2000, 16, 16) and usps.images.shape == (1800, 16, 16)
    assert 0.0 <= float(usps.images.min()) and float(usps.images.max()) <= 1.0
    # the README's per-class counts, with labels shifted from 1..10 to the digits 0..9
    assert torch.bincount(mnist.labels).tolist() == [196, 227, 207, 202, 196, 179, 191, 206, 195, 201]
    assert torch.bincount(usps.labels).tolist() == [352, 241, 165, 166, 166, 126, 139, 172, 129, 144]
    train, test = stratified_halves(usps.labels)
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == 1800
    assert (torch.bincount(usps.labels[train]) - torch.bincount(usps.labels[test])).abs().max() <= 1
    assert torch.equal(digits("usps", "test", data_root).images, usps.images[test])
    with pytest.raises(FewShotError, match="unknown digits domain"):
        load_domain("svhn", data_root)


def test_config_errors():
    with pytest.raises(FewShotError, match="target labels"):
        DANNConfig(mode="target_only", target_shots=0)
    with pytest.raises(FewShotError, match="mode"):
        DANNConfig(mode="adda")




def test_paper_optimizer_through_the_engine_and_resume(data_root, tmp_path):
    """The engine trains the DANN recipe with SGD momentum 0.9 at the inverse schedule's rate (logged per step), and
    a run stopped half-way and resumed (momentum buffers from the checkpoint) ends bit-identical."""
    from fewshot.engine.checkpoint import load_checkpoint

    overrides = ["train.iterations=40", "train.checkpoint_every=10", "train.log_every=1", "train.device=cpu"]
    config = load_config("mnist_usps_dann", overrides)
    whole = build_experiment(config, str(data_root))
    train(whole, tmp_path / "whole", progress=False)
    optimizer_state = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.safetensors").optimizer
    assert optimizer_state["param_groups"][0]["momentum"] == 0.9
    assert any("momentum_buffer" in state for state in optimizer_state["state"].values())
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    logged = [row["lr"] for row in rows if row.get("phase") == "train"]
    assert logged == pytest.approx([learning_rate(config.train, it) for it in range(40)], rel=1e-12)
    assert logged[-1] == pytest.approx(0.01 / (1 + 10 * 39 / 40) ** 0.75)
    train(build_experiment(load_config("mnist_usps_dann", overrides), str(data_root)), tmp_path / "split",
          progress=False, stop_after=20)
    # another budget would change every later rate (the inverse schedule) and lambda_p: refused without --force
    longer = build_experiment(load_config(tmp_path / "split" / "config.yaml", ["train.iterations=80"]), str(data_root))
    with pytest.raises(FewShotError, match=r"train.iterations 40 -> 80 \(the inverse learning-rate schedule spans"):
        train(longer, tmp_path / "split", resume=True, progress=False)
    train(build_experiment(load_config(tmp_path / "split" / "config.yaml"), str(data_root)), tmp_path / "split",
          resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.safetensors").weights
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.safetensors").weights
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


STEPS = 1000
"""Shortened runs: the recipes' settings (SGD, momentum 0.9, mu_0 = 0.01, the paper's lambda and learning-rate
schedules over the run) with ``train.iterations`` = 1,000 instead of 2,000. Measured (USPS test accuracy, %, source-
only -> DANN, same seed): 1,000 steps, seeds 0-3: 52.44 -> 70.29 (+17.85), 61.20 -> 74.17 (+12.97), 77.72 -> 78.16
(+0.44), 61.20 -> 70.95 (+9.75); 500 steps is too short: DANN is still behind (seeds 0-3: -4.21, -18.52, -20.95,
-17.85). The test takes the first two seeds; seed 2 shows that at this length a single seed can end level."""
SEEDS = (0, 1)
MARGIN = 0.05
"""DANN - source-only, as a fraction, that each seed must exceed (measured +0.18 and +0.13 on seeds 0 and 1)."""


@pytest.fixture(scope="module")
def short_runs(data_root, tmp_path_factory) -> dict[tuple[str, int], tuple[float, list[float]]]:
    """(mode, seed) -> (USPS test accuracy, the discriminator's accuracy at every step), trained by the engine as
    ``fewshot train mnist_usps_<mode> train.seed=S train.iterations=1000 train.log_every=1`` (the 4 runs took 128 s
    together on a shared 2-core Xeon, load average 3-6)."""
    threads = torch.get_num_threads()
    runs = {}
    try:
        for mode in ("source_only", "dann"):
            for seed in SEEDS:
                config = load_config(f"mnist_usps_{mode}", [f"train.seed={seed}", f"train.iterations={STEPS}",
                                                            "train.log_every=1", "train.device=cpu"])
                experiment = build_experiment(config, str(data_root))
                run_dir = tmp_path_factory.mktemp(f"{mode}_s{seed}")
                train(experiment, run_dir, progress=False)
                rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                curve = [row["domain_accuracy"] for row in rows if row.get("phase") == "train"]
                assert len(curve) == STEPS
                runs[mode, seed] = (experiment.test().accuracy, curve)
    finally:
        torch.set_num_threads(threads)
    return runs


def test_a_resume_keeps_the_budget_that_training_progress_follows(data_root, tmp_path):
    """Under a constant learning rate the schedule does not span the budget, but DANN's lambda_p does
    (``DomainExperiment.budget_bound``): a longer budget is refused unless forced, and the force is recorded."""
    overrides = ["train.iterations=4", "train.schedule=constant", "train.checkpoint_every=2", "train.device=cpu"]
    run = tmp_path / "run"
    train(build_experiment(load_config("mnist_usps_dann", overrides), str(data_root)), run, progress=False,
          stop_after=2)
    longer = lambda: build_experiment(load_config(run / "config.yaml", ["train.iterations=8"]), str(data_root))  # noqa: E731
    with pytest.raises(FewShotError, match=r"train.iterations 4 -> 8 \(this kind of run follows the budget: its "
                                           r"batches carry the training progress"):
        train(longer(), run, resume=True, progress=False)
    assert train(longer(), run, resume=True, progress=False, force=True).iterations == 8
    assert "resumed with --force at iteration 2: train.iterations 4 -> 8" in (run / "config.yaml").read_text()


def test_dann_beats_source_only_on_every_seed(short_runs):
    """What results/transfer.md claims, on the real digits: with the same seed (initial weights, batches), DANN
    scores higher on the USPS test half than source-only, by more than 5 points."""
    for seed in SEEDS:
        dann, source = short_runs["dann", seed][0], short_runs["source_only", seed][0]
        assert dann - source > MARGIN, (seed, dann, source)


def test_dann_domain_accuracy_moves_towards_chance(short_runs):
    """Same data, network, seed and discriminator: with the reversal layer on (DANN) the discriminator's accuracy
    over the last 100 steps stays far from perfect, while without it (source-only: the discriminator trains on the
    same features but cannot shape them) the domains become easy to tell apart. Measured (last 100 steps, seeds
    0-3): source-only 0.995 on every seed, DANN 0.652, 0.756, 0.705, 0.646."""
    late = slice(STEPS - 100, STEPS)
    for seed in SEEDS:
        dann, source = short_runs["dann", seed][1], short_runs["source_only", seed][1]
        dann_late, source_late = sum(dann[late]) / 100, sum(source[late]) / 100
        assert source_late > 0.95, (seed, source_late)
        assert dann_late < source_late - 0.15, (seed, dann_late, source_late)
