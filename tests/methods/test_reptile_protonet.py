"""Reptile's update and ProtoNet's logits equal their formulas."""

import torch
import torch.nn.functional as F

from fewshot.data.tasks import TaskSampler
from fewshot.methods.protonet import ProtoNet
from fewshot.methods.reptile import Reptile, ReptileConfig
from fewshot.models.conv4 import Conv4


def adam_beta1_zero(params, loss_fn, steps, lr, beta2=0.999, eps=1e-8):
    """Reptile's inner optimiser written out: Adam with beta1 = 0 (RMSProp with bias correction)."""
    params = [p.detach().clone() for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        ps = [p.requires_grad_() for p in params]
        grads = torch.autograd.grad(loss_fn(ps), ps)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                params[i] = p - lr * g / ((v[i] / (1 - beta2**step)).sqrt() + eps)
    return params


def test_reptile_meta_gradient_is_theta_minus_mean_phi(omniglot_train):
    ep = TaskSampler(omniglot_train, 5, 2, 0, seed=0).sample(2)
    ep.support_x = ep.support_x.double()
    torch.manual_seed(0)
    model = Conv4(5, hidden=8, blocks=2).double()
    reptile = Reptile(model, ReptileConfig(inner_steps=4, inner_lr=0.01, inner_batch=10))
    reptile.training_gradient(ep)
    theta = [p.detach().clone() for p in model.meta_parameters()]
    phis = []
    for t in range(2):
        x, y = ep.support_x[t], ep.support_y[t]
        phis.append(adam_beta1_zero(theta, lambda ps, x=x, y=y: F.cross_entropy(model(x, ps), y), 4, 0.01))
    for i, p in enumerate(model.meta_parameters()):
        expected = theta[i] - (phis[0][i] + phis[1][i]) / 2
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-8)  # conv biases before BN get ~0 gradient
        assert expected.abs().max() > 0
    # an SGD step of size epsilon on this gradient is theta + epsilon * (mean phi - theta)
    torch.optim.SGD(model.meta_parameters(), lr=0.5).step()
    for i, p in enumerate(model.meta_parameters()):
        torch.testing.assert_close(p.detach(), theta[i] + 0.5 * ((phis[0][i] + phis[1][i]) / 2 - theta[i]))


def test_protonet_logits_are_negative_squared_distances(omniglot_test):
    ep = TaskSampler(omniglot_test, 5, 3, 4, seed=1).sample(1)
    torch.manual_seed(0)
    model = Conv4(None, variant="maxpool", pool="flatten", running_stats=True).eval()
    net = ProtoNet(model)
    logits = net.predict(ep)[0]
    with torch.no_grad():
        zs, zq = model(ep.support_x[0]).double(), model(ep.query_x[0]).double()
    for i in range(len(zq)):
        for c in range(5):
            proto = zs[ep.support_y[0] == c].mean(0)
            assert abs(logits[i, c].item() + ((zq[i] - proto) ** 2).sum().item()) < 1e-3 * (1 + logits[i, c].abs())


def test_protonet_meta_gradient_trains_embedding(omniglot_train):
    ep = TaskSampler(omniglot_train, 20, 1, 5, seed=0).sample(1)
    torch.manual_seed(0)
    net = ProtoNet(Conv4(None, variant="maxpool", pool="flatten", running_stats=True))
    metrics = net.training_gradient(ep)
    assert metrics["loss"] > 0 and 0 <= metrics["accuracy"] <= 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.meta_parameters())
