"""The task-batched fast paths give the plain per-task reference's meta-gradients, on real Omniglot tasks.

Full-size Conv-4 (64 filters, 28x28 images) in float32 and float64; the chunking is uneven on purpose (3 tasks in
chunks of 2). The two paths differ only in summation order: float64 agrees to ~1e-12, float32 to ~1e-6 relative.

The conv biases (parameters 1, 5, 9, 13) feed batch norm, which cancels them: their exact gradient is 0 and what
either path computes is rounding noise, so they are held to an absolute tolerance only (``BIAS_TOL``).
"""

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.tasks import TaskSampler
from fewshot.methods.maml import MAML, MAMLConfig
from fewshot.methods.reptile import Reptile, ReptileConfig
from fewshot.models.conv4 import Conv4

TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-9, 1e-11)}
"""(rtol, atol as a fraction of the largest gradient entry) per dtype."""
BIAS_TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
"""atol for the conv biases, as a fraction of the largest gradient entry."""
CONV_BIASES = (1, 5, 9, 13)


def episode(dataset, way=5, shot=1, query=5, tasks=3, seed=0, dtype=torch.float32):
    return TaskSampler(dataset, way, shot, query, seed=seed).sample(tasks).to("cpu", dtype)


def model(way=5, dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = Conv4(way, **kwargs).to(dtype)
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return net


def meta_gradients(method_cls, config, net, ep, seed=0):
    method = method_cls(net, config)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    metrics = method.training_gradient(ep)
    return [p.grad.clone() for p in method.parameters()], metrics


def assert_same_gradients(fast, reference, dtype, bias_tol=None, tol=None):
    rtol, atol = TOL[dtype] if tol is None else tol
    bias_tol = BIAS_TOL[dtype] if bias_tol is None else bias_tol
    scale = max(g.abs().max().item() for g in reference)
    assert scale > 0
    for i, (a, b) in enumerate(zip(fast, reference, strict=True)):
        close = dict(rtol=0.0, atol=bias_tol * scale) if i in CONV_BIASES else dict(rtol=rtol, atol=atol * scale)
        torch.testing.assert_close(a, b, **close, msg=lambda m, i=i: f"parameter {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_fast_equals_reference(omniglot_train, steps, dtype):
    ep = episode(omniglot_train, query=2, dtype=dtype)
    fast, fast_metrics = meta_gradients(MAML, MAMLConfig(inner_steps=steps, task_chunk=2), model(dtype=dtype), ep)
    ref, ref_metrics = meta_gradients(MAML, MAMLConfig(inner_steps=steps, reference=True), model(dtype=dtype), ep)
    assert_same_gradients(fast, ref, dtype)
    assert fast_metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)
    assert fast_metrics["accuracy"] == pytest.approx(ref_metrics["accuracy"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_order_fast_equals_reference(omniglot_train, dtype):
    ep = episode(omniglot_train, dtype=dtype, seed=1)
    config = dict(inner_steps=2, first_order=True)
    fast, _ = meta_gradients(MAML, MAMLConfig(**config, task_chunk=2), model(dtype=dtype), ep)
    ref, _ = meta_gradients(MAML, MAMLConfig(**config, reference=True), model(dtype=dtype), ep)
    assert_same_gradients(fast, ref, dtype)


def test_tolerance_separates_second_from_first_order(omniglot_train):
    """The comparison can fail: first-order gradients miss the float32 tolerance against second-order ones."""
    ep = episode(omniglot_train)
    second, _ = meta_gradients(MAML, MAMLConfig(reference=True), model(), ep)
    first, _ = meta_gradients(MAML, MAMLConfig(first_order=True, task_chunk=2), model(), ep)
    with pytest.raises(AssertionError):
        assert_same_gradients(first, second, torch.float32)


def test_meta_sgd_fast_equals_reference(omniglot_train):
    ep = episode(omniglot_train, dtype=torch.float64, seed=2)
    config = dict(inner_steps=2, learn_inner_lr=True)
    net_fast, net_ref = model(dtype=torch.float64), model(dtype=torch.float64)
    fast, _ = meta_gradients(MAML, MAMLConfig(**config, task_chunk=2), net_fast, ep)
    ref, _ = meta_gradients(MAML, MAMLConfig(**config, reference=True), net_ref, ep)
    assert len(fast) == 2 * len(net_fast.meta_parameters())  # the weights and their learned rates
    assert_same_gradients(fast, ref, torch.float64)


def test_maxpool_flatten_20way_fast_equals_reference(omniglot_train):
    ep = episode(omniglot_train, way=20, query=1, tasks=2, dtype=torch.float64, seed=3)
    kwargs = dict(way=20, dtype=torch.float64, variant="maxpool", pool="flatten", hidden=16)
    fast, _ = meta_gradients(MAML, MAMLConfig(inner_steps=2, task_chunk=0), model(**kwargs), ep)
    ref, _ = meta_gradients(MAML, MAMLConfig(inner_steps=2, reference=True), model(**kwargs), ep)
    assert_same_gradients(fast, ref, torch.float64)


def test_forward_tasks_uses_per_task_batch_statistics(omniglot_train):
    ep = episode(omniglot_train, tasks=4)
    net = model()
    params = net.meta_parameters()
    batched = net.forward_tasks(ep.support_x, [p.expand(4, *p.shape) for p in params])
    per_task = torch.stack([net(ep.support_x[t]) for t in range(4)])
    torch.testing.assert_close(batched, per_task, rtol=1e-5, atol=1e-5)
    shared_stats = net(ep.support_x.flatten(0, 1)).view_as(per_task)  # one batch: statistics over all tasks
    assert (shared_stats - per_task).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maml_predict_equals_per_task_adaptation(omniglot_train, dtype):
    ep = episode(omniglot_train, tasks=3, query=3, dtype=dtype, seed=4)
    net = model(dtype=dtype)
    maml = MAML(net, MAMLConfig(test_inner_steps=4, task_chunk=2))
    assert maml.fast_path(ep)
    batched = maml.predict(ep)
    per_task = torch.stack([maml.adapt(ep.support_x[t], ep.support_y[t], 5)(ep.query_x[t]) for t in range(3)])
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(batched, per_task.detach(), rtol=rtol * 10, atol=atol * 100)


def test_running_stats_model_falls_back_to_reference(omniglot_train):
    ep = episode(omniglot_train, tasks=2)
    maml = MAML(model(running_stats=True), MAMLConfig())
    assert not maml.fast_path(ep)
    assert maml.training_gradient(ep)["loss"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reptile_fast_equals_reference(omniglot_train, dtype):
    """Same mini-batches, same Adam arithmetic.

    Adam with beta1 = 0 makes its first step ``lr * sign(g)`` whatever the size of ``g``, so an entry whose gradient
    is within rounding noise of 0 (the conv biases, some batch-norm shifts) moves by ``+-lr`` on either path's
    rounding: in float32 the updates are compared through the losses and accuracies, in float64 entry by entry to
    ``1e-7`` of the largest entry (conv biases ``1e-6``); a different mini-batch draw changes entries by ~``lr``.
    """
    ep = episode(omniglot_train, shot=3, tasks=3, dtype=dtype, seed=5)
    config = dict(inner_steps=4, inner_lr=1e-3, inner_batch=4)
    fast, fast_metrics = meta_gradients(Reptile, ReptileConfig(**config), model(dtype=dtype), ep, seed=7)
    ref, ref_metrics = meta_gradients(Reptile, ReptileConfig(**config, reference=True), model(dtype=dtype), ep, seed=7)
    assert fast_metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6)
    assert fast_metrics["accuracy"] == pytest.approx(ref_metrics["accuracy"])
    if dtype == torch.float64:
        assert_same_gradients(fast, ref, dtype, bias_tol=1e-6, tol=(1e-6, 1e-7))
        # other mini-batches (another seed) give another update: the check above depends on them
        other, _ = meta_gradients(Reptile, ReptileConfig(**config), model(dtype=dtype), ep, seed=8)
        with pytest.raises(AssertionError):
            assert_same_gradients(other, ref, dtype, bias_tol=1e-6, tol=(1e-6, 1e-7))


def test_reptile_predict_equals_per_task_adaptation(omniglot_train):
    ep = episode(omniglot_train, shot=2, query=2, tasks=2, dtype=torch.float64, seed=6)
    reptile = Reptile(model(dtype=torch.float64), ReptileConfig(test_inner_steps=5, test_inner_batch=3))
    torch.manual_seed(3)
    batched = reptile.predict(ep)
    torch.manual_seed(3)
    per_task = torch.stack([reptile.adapt(ep.support_x[t], ep.support_y[t], 5)(ep.query_x[t]) for t in range(2)])
    torch.testing.assert_close(batched, per_task.detach(), rtol=1e-9, atol=1e-10)
    assert F.softmax(batched, -1).max() < 1  # non-degenerate logits


def test_fast_and_reference_give_the_same_training_run(tmp_path, data_root):
    """A short real MAML run through the engine: same validation accuracy curve, same final weights."""
    from fewshot.config import load_config
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.logs import read_metrics
    from fewshot.engine.train import train

    short = ["train.meta_batch=4", "train.iterations=12", "train.val_every=4", "train.val_episodes=10",
             "method.test_inner_steps=3", "method.task_chunk=3", "train.threads=1"]
    curves, weights = {}, {}
    for path in ("fast", "reference"):
        config = load_config("omniglot_5w1s_maml", [*short, f"method.reference={path == 'reference'}"])
        train(build_experiment(config, data_root), tmp_path / path, progress=False)
        curves[path] = [row["accuracy"] for row in read_metrics(tmp_path / path) if row["phase"] == "val"]
        weights[path] = load_checkpoint(tmp_path / path / "checkpoints" / "last.safetensors").weights
    assert len(curves["fast"]) == 3
    assert curves["fast"] == pytest.approx(curves["reference"], abs=1 / 750)  # at most one query of 750 differs
    for name, value in weights["reference"].items():
        if name.startswith("model.convs.") and name.endswith(".bias"):
            continue  # batch norm cancels these: their gradient is rounding noise, which Adam scales up to lr
        # atol: a fifth of one Adam step (lr 1e-3), so that a near-zero gradient entry whose rounding differs
        # between the paths on another CPU cannot fail the test, while a wrong meta-gradient (many steps apart) does
        torch.testing.assert_close(weights["fast"][name], value, rtol=1e-3, atol=2e-4, msg=name)
