"""DANN: gradient reversal, the paper's schedules, the MNIST/USPS loader, and adversarial training on real digits."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.config import load_config
from fewshot.data.digits import digits, load_domain, stratified_halves
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import make_optimizer
from fewshot.errors import FewShotError
from fewshot.methods.dann import DANNConfig, grad_reverse, lambda_schedule, lr_factor

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
    assert lr_factor(0.0) == 1.0
    assert lr_factor(1.0) == pytest.approx(11 ** -0.75)


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


def _domain_accuracy(recipe: str, data_root, iterations: int) -> tuple[list[float], float]:
    config = load_config(recipe, [f"train.iterations={iterations}", "train.batch_size=32", "train.lr=0.05"])
    torch.manual_seed(0)
    experiment = build_experiment(config, str(data_root))
    method = experiment.method
    optimizer = make_optimizer(method.meta_parameters(), config.train)
    curve = []
    for it in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        metrics = method.training_gradient(experiment.batch(it))
        optimizer.step()
        curve.append(metrics["domain_accuracy"])
    return curve, experiment.test().accuracy


def test_dann_domain_accuracy_moves_towards_chance(data_root):
    """Same data, network, seed and discriminator: with the reversal layer on (DANN) the discriminator's accuracy
    stays near chance (0.5) as training goes on, while without it (source-only: the discriminator trains on the
    same features but cannot shape them) the domains become easy to tell apart."""
    iterations = 300
    dann, dann_acc = _domain_accuracy("mnist_usps_dann", data_root, iterations)
    source, source_acc = _domain_accuracy("mnist_usps_source_only", data_root, iterations)
    late = slice(iterations - 100, iterations)
    dann_late, source_late = sum(dann[late]) / 100, sum(source[late]) / 100
    assert source_late > 0.8, source_late
    assert dann_late < source_late - 0.15, (dann_late, source_late)
    assert abs(sum(dann) / iterations - 0.5) < 0.15, sum(dann) / iterations
    assert dann_acc > 0.2 and source_acc > 0.2  # both learn the digits (chance is 0.1)
