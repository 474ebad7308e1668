"""The MLP keeps every backbone contract (functional, task-batched, blocks), and MAML's meta-gradient through it
matches finite differences (float64, with batch norm), on real Office-Caltech SURF vectors."""

import pytest
import torch
import torch.nn.functional as F

from fewshot.config import load_config
from fewshot.data.tasks import TaskSampler
from fewshot.data.vectors import load_vectors
from fewshot.errors import FewShotError
from fewshot.methods.maml import MAML, MAMLConfig, inner_loop
from fewshot.models.base import Backbone, Blocks, Functional, TaskBatched, batches_tasks
from fewshot.models.mlp import MLP, MLPConfig, build

SURF = "domain_adaptation/office_caltech10_surf"


@pytest.fixture(scope="module")
def dslr(data_root):
    return load_vectors(data_root / SURF / "dslr_SURF_L10.mat", features_key="fts", labels_key="labels",
                        normalize="l2")


def tiny_model(out=3, seed=0, **kw):
    torch.manual_seed(seed)
    model = MLP(800, [6, 5], out, **kw).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for norm in model.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return model


def tiny_task(dslr, seed=0):
    ep = TaskSampler(dslr, way=3, shot=2, query=3, seed=seed).sample(1)
    ep.support_x, ep.query_x = ep.support_x.double() * 10, ep.query_x.double() * 10
    return ep


def test_contracts_and_parameter_order(dslr):
    model = MLP(800, [16, 8], 5, batch_norm=True)
    assert isinstance(model, Backbone) and isinstance(model, Functional) and isinstance(model, TaskBatched)
    assert isinstance(model, Blocks) and len(model.blocks) == 2 and batches_tasks(model)
    params = model.meta_parameters()
    assert len(params) == 2 * 4 + 2 and params[-2] is model.head.weight and params[-1] is model.head.bias
    x = dslr.images[:10]
    assert torch.allclose(model(x), F.linear(model.features(x), params[-2], params[-1]))
    assert torch.allclose(model(x, params), model(x)) and model.feature_dim == 8
    assert torch.allclose(model.forward_blocks(model.forward_blocks(x, 0, 1), 1), model.features(x))
    assert not batches_tasks(MLP(800, [4], running_stats=True))
    plain = MLP(800, [], 5, batch_norm=False)
    assert plain.feature_dim == 800 and len(plain.meta_parameters()) == 2


def test_task_batched_pass_equals_task_by_task(dslr):
    model = tiny_model()
    x = torch.stack([dslr.images[i * 7 : i * 7 + 6] for i in range(3)]).double()
    params = [torch.stack([p + 0.01 * t for t in range(3)]) for p in model.meta_parameters()]
    batched = model.forward_tasks(x, params)
    for t in range(3):
        assert torch.allclose(batched[t], model(x[t], [p[t] for p in params]), atol=1e-10)


def test_flattens_images_and_names_a_wrong_width():
    model = MLP(256, [4], batch_norm=False)
    assert model(torch.rand(3, 16, 16)).shape == (3, 4)
    with pytest.raises(FewShotError, match="takes 256 numbers per example"):
        model(torch.rand(3, 800))


def test_dropout_only_in_training(dslr):
    model = MLP(800, [32], dropout=0.5, batch_norm=False)
    x = dslr.images[:8]
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_options_are_checked():
    with pytest.raises(FewShotError, match="in_features"):
        MLPConfig()
    with pytest.raises(FewShotError, match="hidden"):
        MLPConfig(in_features=3, hidden=[0])
    with pytest.raises(FewShotError, match="dropout"):
        MLPConfig(in_features=3, dropout=1.0)
    with pytest.raises(FewShotError, match="running_stats"):
        MLPConfig(in_features=3, batch_norm=False, running_stats=True)
    assert build(MLPConfig(in_features=3, hidden=[4]), 2).head.out_features == 2


def meta_loss(model, params, ep, steps, lr):
    fast = inner_loop(model, params, ep.support_x[0], ep.support_y[0], steps, [lr] * len(params), create_graph=False)
    return F.cross_entropy(model(ep.query_x[0], fast), ep.query_y[0])


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_finite_differences(dslr, steps):
    ep, model, lr = tiny_task(dslr), tiny_model(activation="tanh"), 0.3
    maml = MAML(model, MAMLConfig(inner_steps=steps, inner_lr=lr))
    maml.training_gradient(ep)
    params = model.meta_parameters()
    grads = [p.grad.clone() for p in params]
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(4):
        dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        minus = meta_loss(model, [(p - eps * d).detach().requires_grad_() for p, d in zip(params, dirs)], ep, steps, lr)
        plus = meta_loss(model, [(p + eps * d).detach().requires_grad_() for p, d in zip(params, dirs)], ep, steps, lr)
        fd = (plus - minus).item() / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(grads, dirs)).item()
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", ["office_caltech_5w5s_protonet_mlp", "office_caltech_5w5s_maml_mlp"])
def test_vector_recipes_train_a_step(name, data_root, one_thread):
    from fewshot.engine.experiment import build_experiment

    config = load_config(name, ["train.device=cpu", "train.meta_batch=1"])
    experiment = build_experiment(config, str(data_root))
    stats = experiment.method.training_gradient(experiment.batch(0))
    assert stats["loss"] > 0
    grads = [p.grad for p in experiment.method.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
