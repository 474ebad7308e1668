"""MAML's meta-gradient against finite differences (float64, with batch norm), FOMAML against its formula."""

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.tasks import TaskSampler
from fewshot.methods.maml import MAML, MAMLConfig, inner_loop
from fewshot.models.conv4 import Conv4


def tiny_task(omniglot_train, seed=0):
    ep = TaskSampler(omniglot_train, way=3, shot=2, query=3, seed=seed).sample(1)
    down = lambda x: F.avg_pool2d(x.double().unsqueeze(1), 2)  # 14x14 real characters  # noqa: E731
    ep.support_x, ep.query_x = down(ep.support_x[0]).unsqueeze(0), down(ep.query_x[0]).unsqueeze(0)
    return ep


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Conv4(3, hidden=4, blocks=2, image_size=14).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for norm in model.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return model


def meta_loss(model, params, ep, steps, lr):
    fast = inner_loop(model, params, ep.support_x[0], ep.support_y[0], steps, [lr] * len(params), create_graph=False)
    return F.cross_entropy(model(ep.query_x[0], fast), ep.query_y[0])


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(omniglot_train, steps):
    ep, model, lr = tiny_task(omniglot_train), tiny_model(), 0.4
    maml = MAML(model, MAMLConfig(inner_steps=steps, inner_lr=lr))
    maml.training_gradient(ep)
    params = model.meta_parameters()
    grads = [p.grad.clone() for p in params]
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    # random directions over all parameters, and directions over the batch-norm weights alone
    bn_ids = {id(n.weight) for n in model.norms}
    for only_bn in (False, True):
        for _ in range(3):
            dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * (id(p) in bn_ids or not only_bn)
                    for p in params]
            minus = meta_loss(model, [(p - eps * d).detach().requires_grad_() for p, d in zip(params, dirs)], ep,
                              steps, lr)
            plus = meta_loss(model, [(p + eps * d).detach().requires_grad_() for p, d in zip(params, dirs)], ep,
                             steps, lr)
            fd = (plus - minus).item() / (2 * eps)
            analytic = sum((g * d).sum() for g, d in zip(grads, dirs)).item()
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_second_order_terms_matter(omniglot_train):
    """The check above can fail: the first-order gradient differs from the true one by far more than tolerance."""
    ep = tiny_task(omniglot_train)
    full, first = tiny_model(), tiny_model()
    MAML(full, MAMLConfig(inner_steps=1)).training_gradient(ep)
    MAML(first, MAMLConfig(inner_steps=1, first_order=True)).training_gradient(ep)
    diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(full.meta_parameters(), first.meta_parameters()))
    assert diff > 1e-3


def test_first_order_update_equals_formula(omniglot_train):
    ep, model, lr = tiny_task(omniglot_train, seed=2), tiny_model(3), 0.4
    MAML(model, MAMLConfig(inner_steps=1, inner_lr=lr, first_order=True)).training_gradient(ep)
    theta = [p.detach().clone().requires_grad_() for p in model.meta_parameters()]
    support_grads = torch.autograd.grad(F.cross_entropy(model(ep.support_x[0], theta), ep.support_y[0]), theta)
    phi = [(t - lr * g).detach().requires_grad_() for t, g in zip(theta, support_grads)]
    expected = torch.autograd.grad(F.cross_entropy(model(ep.query_x[0], phi), ep.query_y[0]), phi)
    for p, e in zip(model.meta_parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)


def test_meta_sgd_learns_inner_rates(omniglot_train):
    ep, model = tiny_task(omniglot_train), tiny_model()
    maml = MAML(model, MAMLConfig(inner_steps=1, inner_lr=0.4, learn_inner_lr=True)).double()
    maml.training_gradient(ep)
    assert all(lr.grad is not None and lr.grad.abs().sum() > 0 for lr in maml.inner_lrs)
    # with all rates equal to inner_lr, the weights' meta-gradient is plain MAML's
    ref = tiny_model()
    MAML(ref, MAMLConfig(inner_steps=1, inner_lr=0.4)).training_gradient(ep)
    for a, b in zip(model.meta_parameters(), ref.meta_parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_meta_gradient_averages_tasks(omniglot_train):
    """A meta-batch's gradient is the mean of its tasks' gradients."""
    sampler = TaskSampler(omniglot_train, 3, 1, 2, seed=5)
    ep = sampler.sample(3)
    ep.support_x, ep.query_x = ep.support_x.double(), ep.query_x.double()
    torch.manual_seed(0)
    model = Conv4(3, hidden=4, blocks=2).double()
    maml = MAML(model, MAMLConfig(inner_steps=2))
    maml.training_gradient(ep)
    batch = [p.grad.clone() for p in model.meta_parameters()]
    total = [torch.zeros_like(g) for g in batch]
    for t in range(3):
        model.zero_grad()
        maml.training_gradient(ep.task(t))
        total = [a + p.grad / 3 for a, p in zip(total, model.meta_parameters())]
    for a, b in zip(batch, total):
        torch.testing.assert_close(a, b)
