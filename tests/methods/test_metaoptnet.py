"""MetaOptNet's ridge head equals closed-form ridge regression, is differentiable end to end (lambda checked against
finite differences), answers each query on its own, and trains through the CLI to well above chance."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from torch.autograd.gradcheck import GradcheckError

from fewshot.cli import main
from fewshot.config import RunConfig, apply_overrides, load_raw
from fewshot.data.tasks import TaskSampler
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.experiment import build_experiment
from fewshot.errors import FewShotError
from fewshot.methods.metaoptnet import MetaOptNet, MetaOptNetConfig, ridge_logits, ridge_weights
from fewshot.models.conv4 import Conv4


def conv4(seed=0, double=False):
    torch.manual_seed(seed)
    model = Conv4(None, variant="maxpool", pool="flatten", running_stats=True)
    return model.double() if double else model


def warmed(model, dataset):
    """``model`` with running batch-norm statistics of real images (not the initial 0 / 1), in eval mode."""
    with torch.no_grad():
        model.train()
        for it in range(3):
            model(TaskSampler(dataset, 20, 5, 0, seed=7).sample(1, it).support_x[0].to(model.convs[0].weight.dtype))
    return model.eval()


def features(dataset, way, shot, query, seed=0):
    """Float64 Conv-4 features of one real task: support [n, 64], labels [n], query [q, 64], labels [q]."""
    ep = TaskSampler(dataset, way, shot, query, seed=seed).sample(1)
    model = warmed(conv4(double=True), dataset)
    with torch.no_grad():
        zs, zq = model(ep.support_x[0].double()), model(ep.query_x[0].double())
    return zs, ep.support_y[0], zq, ep.query_y[0]


@pytest.mark.parametrize("way, shot", [(5, 5), (20, 5)])  # n = 25 < d = 64 (dual) and n = 100 > d (primal)
def test_ridge_head_equals_closed_form_ridge(omniglot_test, way, shot):
    zs, ys, zq, _ = features(omniglot_test, way, shot, 3)
    x, y = zs.numpy(), np.eye(way)[ys.numpy()]
    lam, scale, bias = 3.7, 2.5, -0.3
    primal = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
    sk = Ridge(alpha=lam, fit_intercept=False, solver="svd").fit(x, y).coef_.T
    np.testing.assert_allclose(primal, sk, rtol=1e-8, atol=1e-10)
    onehot = torch.nn.functional.one_hot(ys, way).double()
    for solver in ("auto", "dual", "primal"):
        w = ridge_weights(zs, onehot, lam, solver)
        np.testing.assert_allclose(w.numpy(), primal, rtol=1e-8, atol=1e-10)
        logits = ridge_logits(zq, zs, ys, way, torch.tensor(lam, dtype=torch.float64), scale, bias, solver)
        np.testing.assert_allclose(logits.numpy(), scale * zq.numpy() @ primal + bias, rtol=1e-8, atol=1e-9)
    # negative control: a 10% different lambda is far outside the tolerance the comparison uses
    wrong = ridge_weights(zs, onehot, 1.1 * lam).numpy()
    assert not np.allclose(wrong, primal, rtol=1e-4, atol=1e-6)


def test_method_predict_uses_the_closed_form_with_its_learned_scalars(omniglot_test):
    """``predict`` (adapt task by task) and the batched solve of training give the same logits, which are the
    closed-form ones for the method's own lambda, alpha and beta."""
    ep = TaskSampler(omniglot_test, 5, 2, 3, seed=3).sample(3)
    ep.support_x, ep.query_x = ep.support_x.double(), ep.query_x.double()
    net = MetaOptNet(warmed(conv4(double=True), omniglot_test), MetaOptNetConfig(init_lambda=2.0, init_scale=3.0,
                                                                                   init_bias=0.5)).double().eval()
    predicted = net.predict(ep)
    with torch.no_grad():
        torch.testing.assert_close(net.episode_logits(ep), predicted, rtol=1e-10, atol=1e-10)
        for t in range(3):
            x, xq = net.model(ep.support_x[t]).numpy(), net.model(ep.query_x[t]).numpy()
            y = np.eye(5)[ep.support_y[t].numpy()]
            w = np.linalg.solve(x.T @ x + 2.0 * np.eye(64), x.T @ y)
            np.testing.assert_allclose(predicted[t].numpy(), 3.0 * xq @ w + 0.5, rtol=1e-7, atol=1e-8)


def test_gradients_reach_body_and_scalars_and_lambda_matches_finite_differences(omniglot_train):
    ep = TaskSampler(omniglot_train, 10, 1, 2, seed=0).sample(2)
    ep.support_x, ep.query_x = ep.support_x.double(), ep.query_x.double()
    net = MetaOptNet(conv4(double=True), MetaOptNetConfig(init_lambda=5.0, init_scale=2.0)).double()
    metrics = net.training_gradient(ep)
    assert metrics["loss"] > 0 and 0 <= metrics["accuracy"] <= 1 and metrics["lambda"] == pytest.approx(5.0)
    assert {id(p) for p in net.meta_parameters()} >= {id(net.log_lambda), id(net.scale), id(net.bias)}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.model.parameters())
    assert net.log_lambda.grad.abs() > 1e-6 and net.scale.grad.abs() > 1e-6
    # beta shifts every logit equally, which softmax cross-entropy ignores: its gradient is zero up to rounding...
    assert net.bias.grad is not None and net.bias.grad.abs() < 1e-10
    # ...though it is in the graph: d(sum of logits)/d(beta) is the number of logits (tasks * queries * way)
    net.zero_grad()
    net.episode_logits(ep).sum().backward()
    assert net.bias.grad.item() == pytest.approx(2 * (10 * 2) * 10)

    # the training loss's derivative in log(lambda), by central differences (float64, same batch statistics)
    net.zero_grad()
    net.training_gradient(ep)
    analytic, h = net.log_lambda.grad.item(), 1e-5
    losses = []
    with torch.no_grad():
        for step in (h, -h):
            net.log_lambda.add_(step)
            logits = net.episode_logits(ep)
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ep.query_y.flatten()).item())
            net.log_lambda.sub_(step)
    assert analytic == pytest.approx((losses[0] - losses[1]) / (2 * h), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("solver", ["dual", "primal"])
def test_head_gradcheck(omniglot_test, solver):
    """torch.autograd.gradcheck (analytic vs finite differences, float64) of the head in lambda, alpha, beta and the
    support and query features, on real Conv-4 features."""
    zs, ys, zq, _ = features(omniglot_test, 5, 2, 2)
    zs, zq = zs[:, :16].clone().requires_grad_(), zq[:, :16].clone().requires_grad_()  # 16 of 64 dims: fast
    log_lam = torch.tensor(math.log(0.8), dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def head(log_lam, scale, bias, zs, zq):
        return ridge_logits(zq, zs, ys, 5, log_lam.exp(), scale, bias, solver)

    assert torch.autograd.gradcheck(head, (log_lam, scale, bias, zs, zq))

    # negative control: the same values with a lambda gradient 1% too large fail the check
    def wrong(log_lam, scale, bias, zs, zq):
        return head(log_lam + 0.01 * (log_lam - log_lam.detach()), scale, bias, zs, zq)

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(wrong, (log_lam, scale, bias, zs, zq))


def test_query_answer_does_not_depend_on_other_queries(omniglot_test):
    ep = TaskSampler(omniglot_test, 5, 1, 6, seed=2).sample(1)
    net = MetaOptNet(warmed(conv4(), omniglot_test)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predictor = net.adapt(ep.support_x[0], ep.support_y[0], 5)
    with torch.no_grad():
        together = predictor(ep.query_x[0])
        for i in range(len(together)):
            torch.testing.assert_close(predictor(ep.query_x[0][i : i + 1])[0], together[i], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # adapt changed no weight
    # negative control: with batch statistics (train mode) the answer does depend on the other queries
    net.train()
    with torch.no_grad():
        together, pair = predictor(ep.query_x[0]), predictor(ep.query_x[0][:2])
    assert (together[:2] - pair).abs().max() > 1e-3


@pytest.mark.parametrize("key, value", [
    ("init_lambda", 0.0), ("init_lambda", -1.0), ("init_lambda", float("nan")), ("init_scale", 0.0),
    ("init_scale", float("inf")), ("init_bias", float("nan")), ("solver", "qr"), ("learn_lambda", "yes"),
    ("learn_bias", 1),
])
def test_bad_options_raise(key, value):
    with pytest.raises(FewShotError, match=f"method.{key}"):
        MetaOptNetConfig(**{key: value})


@pytest.mark.parametrize("override, message", [
    ("method.solver=qr", "method.solver"), ("method.init_lambda=-2", "method.init_lambda"),
    ("method.learn_scale=maybe", "method.learn_scale"), ("method.lambda=3", "method.lambda"),
])
def test_bad_recipe_options_raise(override, message):
    with pytest.raises(FewShotError, match=message):
        RunConfig.from_dict(apply_overrides(load_raw("omniglot_5w1s_metaoptnet"), [override]))


def test_recipes_load():
    for shot in (1, 5):
        config = RunConfig.from_dict(load_raw(f"omniglot_5w{shot}s_metaoptnet"))
        assert config.method.name == "metaoptnet" and config.train.way == 60 and config.train.shot == shot
        assert (config.eval.way, config.eval.shot, config.eval.query, config.eval.episodes) == (5, shot, 15, 600)


def test_short_cli_training_beats_chance(data_root, tmp_path, capsys, one_thread):
    run, common = tmp_path / "run", ["--data-root", str(data_root)]
    overrides = ["train.iterations=50", "train.way=20", "train.query=5", "train.threads=1", "train.val_every=50",
                 "train.val_episodes=10", "train.checkpoint_every=50"]
    assert main(["train", "omniglot_5w1s_metaoptnet", *overrides, "--out", str(run), "--no-progress", "--no-test",
                 *common]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "20", "--json", "train.threads=1", *common]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 20 and result["method"] == "metaoptnet"
    # the same network before training (same seed, same test episodes) is near chance (0.2)
    untrained = build_experiment(RunConfig.from_dict(apply_overrides(load_raw("omniglot_5w1s_metaoptnet"),
                                                                     overrides)), str(data_root)).test(20).accuracy
    assert result["accuracy"] > 0.6 and result["accuracy"] > untrained + 0.2
    weights = load_checkpoint(run / "checkpoints" / "best.safetensors").weights
    assert weights["log_lambda"].item() != pytest.approx(math.log(50.0), abs=1e-3)  # the optimizer moved lambda...
    assert weights["scale"].item() != pytest.approx(10.0, abs=1e-3)  # ...and alpha
