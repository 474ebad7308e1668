"""ANIL on real Omniglot tasks: meta-gradient against finite differences, fast path against the per-task reference,
head-only adaptation, first order against its formula, a short real training run, and option errors.

The hand-written references below use the closed-form gradient of a linear head under cross-entropy,
``dW = (softmax(logits) - onehot)^T h / B``, ``db = mean(softmax(logits) - onehot)``, so they share no code with
:mod:`fewshot.methods.anil`.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from fewshot.cli import main
from fewshot.config import load_config
from fewshot.data.tasks import TaskSampler
from fewshot.errors import FewShotError
from fewshot.methods.anil import ANIL, ANILConfig
from fewshot.methods.maml import MAML, MAMLConfig
from fewshot.models.conv4 import Conv4

CONV_BIASES = (1, 5, 9, 13)
"""Conv biases feed batch norm, which cancels them: their exact gradient is 0 and any path computes rounding noise."""


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (the machine is shared)."""


def episode(dataset, way=5, shot=1, query=5, tasks=3, seed=0, dtype=torch.float64):
    return TaskSampler(dataset, way, shot, query, seed=seed).sample(tasks).to("cpu", dtype)


def tiny_task(dataset, seed=0):
    """A 3-way 2-shot task of real characters at 14x14 (float64), small enough for finite differences."""
    ep = TaskSampler(dataset, way=3, shot=2, query=3, seed=seed).sample(1)
    down = lambda x: F.avg_pool2d(x.double().unsqueeze(1), 2)  # noqa: E731
    ep.support_x, ep.query_x = down(ep.support_x[0]).unsqueeze(0), down(ep.query_x[0]).unsqueeze(0)
    return ep


def model(way=5, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = Conv4(way, **kwargs).to(dtype)
    with torch.no_grad():  # non-trivial batch-norm affine parameters and head bias
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        net.head.bias.uniform_(-0.1, 0.1)
    return net


def sgd_head(h, y, w, b, steps, lr):
    """``steps`` of SGD on the head by the closed-form gradient; ``h`` is ``[B, D]``. Differentiable."""
    onehot = F.one_hot(y, w.shape[0]).to(h.dtype)
    for _ in range(steps):
        err = (F.softmax(F.linear(h, w, b), -1) - onehot) / len(y)
        w, b = w - lr * err.T @ h, b - lr * err.sum(0)
    return w, b


def anil_loss(net, params, ep, steps, lr, t=0):
    """Task ``t``'s query loss after head-only adaptation, written out by hand (second order when differentiated)."""
    body, (w, b) = params[:-2], params[-2:]
    w, b = sgd_head(net.features(ep.support_x[t], body), ep.support_y[t], w, b, steps, lr)
    return F.cross_entropy(F.linear(net.features(ep.query_x[t], body), w, b), ep.query_y[t])


def gradients(config, net, ep):
    net.zero_grad(set_to_none=True)
    metrics = ANIL(net, config).training_gradient(ep)
    return [p.grad.clone() for p in net.meta_parameters()], metrics


def assert_same_gradients(a, b, rtol=1e-9, atol=1e-11):
    scale = max(g.abs().max().item() for g in b)
    assert scale > 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        tol = dict(rtol=0.0, atol=1e-9 * scale) if i in CONV_BIASES else dict(rtol=rtol, atol=atol * scale)
        torch.testing.assert_close(x, y, **tol, msg=lambda m, i=i: f"parameter {i}: {m}")


# --- (1) the second-order meta-gradient is the true gradient ------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences(omniglot_train, steps):
    ep, lr = tiny_task(omniglot_train), 0.4
    net = model(3, hidden=4, blocks=2, image_size=14)
    grads, _ = gradients(ANILConfig(inner_steps=steps, inner_lr=lr, reference=True), net, ep)
    params = net.meta_parameters()
    assert grads[-2].abs().max() > 1e-3 and grads[0].abs().max() > 1e-3  # head and body both get a gradient
    gen, eps = torch.Generator().manual_seed(1), 1e-6
    head = {id(p) for p in params[-2:]}
    for part in ("all", "body", "head"):
        for _ in range(2):
            dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype)
                    * (part == "all" or (id(p) in head) == (part == "head")) for p in params]
            with torch.no_grad():
                plus = anil_loss(net, [p + eps * d for p, d in zip(params, dirs)], ep, steps, lr)
                minus = anil_loss(net, [p - eps * d for p, d in zip(params, dirs)], ep, steps, lr)
            fd = (plus - minus).item() / (2 * eps)
            analytic = sum((g * d).sum() for g, d in zip(grads, dirs)).item()
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9), part


# --- (2) the task-batched fast path is the per-task reference -----------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
def test_fast_path_equals_reference(omniglot_train, first_order):
    ep = episode(omniglot_train, query=2, tasks=3)
    config = dict(inner_steps=3, first_order=first_order)
    fast_method = ANIL(model(), ANILConfig(**config, task_chunk=2))  # chunks of 2 and 1
    assert fast_method.fast_path(ep)
    fast, fast_metrics = gradients(fast_method.config, fast_method.model, ep)
    ref, ref_metrics = gradients(ANILConfig(**config, reference=True), model(), ep)
    assert_same_gradients(fast, ref)
    assert fast_metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-10)
    assert fast_metrics["accuracy"] == pytest.approx(ref_metrics["accuracy"])
    # the comparison can fail: another inner learning rate gives other gradients
    other, _ = gradients(ANILConfig(**config, inner_lr=0.3, task_chunk=2), model(), ep)
    with pytest.raises(AssertionError):
        assert_same_gradients(other, ref)


def test_fast_predict_equals_reference_and_adapt(omniglot_test):
    ep = episode(omniglot_test, shot=2, query=3, tasks=3, seed=4)
    net = model(seed=1)
    fast = ANIL(net, ANILConfig(test_inner_steps=4, task_chunk=2))
    ref = ANIL(net, ANILConfig(test_inner_steps=4, reference=True))
    assert fast.fast_path(ep) and not ref.fast_path(ep)
    batched = fast.predict(ep)
    per_task = torch.stack([fast.adapt(ep.support_x[t], ep.support_y[t], 5)(ep.query_x[t]) for t in range(3)])
    torch.testing.assert_close(batched, ref.predict(ep), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched, per_task.detach(), rtol=1e-10, atol=1e-12)
    other = ANIL(net, ANILConfig(test_inner_steps=4, inner_lr=0.3)).predict(ep)
    assert (other - batched).abs().max() > 1e-3  # the check above can fail


# --- (3) the inner loop adapts the head only ------------------------------------------------------------------------


def test_adapt_changes_only_the_head(omniglot_test):
    ep = episode(omniglot_test, shot=1, query=4, tasks=1, seed=2)
    net, steps, lr = model(seed=2), 5, 0.4
    # transductive: the query features in one batch, as `expected` below computes them (the default scores each
    # query with the support set alone: tests/methods/test_transductive.py)
    anil = ANIL(net, ANILConfig(test_inner_steps=steps, inner_lr=lr, transductive=True))
    before = {k: v.clone() for k, v in anil.state_dict().items()}
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    logits = anil.adapt(sx, sy, 5)(qx)
    with torch.no_grad():
        w, b = sgd_head(net.features(sx), sy, net.head.weight, net.head.bias, steps, lr)  # unchanged body
        expected = F.linear(net.features(qx), w, b)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
    assert (w - net.head.weight).abs().max() > 1e-3  # the head did move
    for key, value in anil.state_dict().items():
        assert torch.equal(value, before[key]), key
    # adapting the body too (MAML, same steps and rate) gives other logits: the check above tells them apart
    maml_logits = MAML(net, MAMLConfig(test_inner_steps=steps, inner_lr=lr, transductive=True)).adapt(sx, sy, 5)(qx)
    assert (maml_logits - expected).abs().max() > 1e-3
    with pytest.raises(FewShotError, match="a 3-way task has labels 0..2, but its support set has label 4"):
        anil.adapt(sx, sy, 3)  # another way builds a head (method.head_init); the labels must fit it


# --- (4) first order drops exactly the terms through the head updates ---------------------------------------------


@pytest.mark.parametrize("reference", [True, False])
def test_first_order_equals_formula(omniglot_train, reference):
    ep, steps, lr = episode(omniglot_train, shot=2, query=3, tasks=2, seed=3), 2, 0.4
    net = model(seed=3)
    grads, _ = gradients(ANILConfig(inner_steps=steps, inner_lr=lr, first_order=True, reference=reference), net, ep)
    params = net.meta_parameters()
    body = [p.detach().requires_grad_() for p in params[:-2]]
    expected = [torch.zeros_like(p) for p in params]
    for t in range(2):
        with torch.no_grad():  # support features and head steps are constants of the meta-gradient
            w, b = sgd_head(net.features(ep.support_x[t], body), ep.support_y[t], *params[-2:], steps, lr)
        head = [w.requires_grad_(), b.requires_grad_()]
        loss = F.cross_entropy(F.linear(net.features(ep.query_x[t], body), *head), ep.query_y[t]) / 2
        expected = [e + g for e, g in zip(expected, torch.autograd.grad(loss, body + head))]
    assert_same_gradients(grads, expected)
    # the head-update terms matter: the second-order gradient is far from the formula, in the body and the head
    second, _ = gradients(ANILConfig(inner_steps=steps, inner_lr=lr, reference=reference), model(seed=3), ep)
    assert (second[-2] - expected[-2]).abs().max() > 1e-3
    assert max((s - e).abs().max().item() for s, e in zip(second[:-2], expected[:-2])) > 1e-3


# --- (5) a short real training run learns ---------------------------------------------------------------------------


def test_short_training_beats_chance(tmp_path, data_root, capsys):
    from fewshot.engine.experiment import build_experiment

    short = ["train.iterations=40", "train.meta_batch=8", "train.val_every=20", "train.val_episodes=10",
             "train.checkpoint_every=20", "eval.episodes=20", "eval.query=5", "train.threads=1"]
    untrained = build_experiment(load_config("omniglot_5w1s_anil", short), data_root).test().accuracy
    run = tmp_path / "run"
    assert main(["train", "omniglot_5w1s_anil", *short, "--out", str(run), "--data-root", str(data_root),
                 "--no-progress"]) == 0
    assert "test accuracy (omniglot_5w1s_anil):" in capsys.readouterr().out
    result = json.loads((run / "test.json").read_text())
    assert result["episodes"] == 20
    assert result["accuracy"] > 0.45 and result["accuracy"] > untrained + 0.15  # chance is 0.2


def test_running_stats_model_falls_back_to_reference(omniglot_train):
    ep = episode(omniglot_train, tasks=2, dtype=torch.float32)
    anil = ANIL(model(running_stats=True, dtype=torch.float32))
    assert not anil.fast_path(ep)
    assert anil.training_gradient(ep)["loss"] > 0
    assert anil.predict(ep).shape == (2, 25, 5)


# --- (6) bad options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "key"), [
    (dict(inner_steps=0), "method.inner_steps"),
    (dict(test_inner_steps=0), "method.test_inner_steps"),
    (dict(inner_lr=0.0), "method.inner_lr"),
    (dict(inner_lr=-0.1), "method.inner_lr"),
    (dict(task_chunk=-1), "method.task_chunk"),
])
def test_bad_options_raise(options, key):
    with pytest.raises(FewShotError, match=key):
        ANILConfig(**options)


def test_recipes_and_bad_overrides():
    for shot in (1, 5):
        config = load_config(f"omniglot_5w{shot}s_anil")
        assert config.method.name == "anil" and config.train.way == config.eval.way == 5
        assert config.train.shot == config.eval.shot == shot
    with pytest.raises(FewShotError, match="method.inner_lr"):
        load_config("omniglot_5w1s_anil", ["method.inner_lr=0"])
    with pytest.raises(FewShotError, match="method.inner_stepz"):
        load_config("omniglot_5w1s_anil", ["method.inner_stepz=2"])


def test_model_without_head_or_functional_forward_is_refused():
    with pytest.raises(FewShotError, match="output layer"):
        ANIL(Conv4(None))
    with pytest.raises(FewShotError, match="functionally"):
        ANIL(torch.nn.Linear(4, 5))
