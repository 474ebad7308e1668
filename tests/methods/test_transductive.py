"""``transductive`` for MAML, Reptile and ANIL, on real Omniglot tasks.

* off (the default): each query is scored in a batch of its own, the support set followed by that query, so its answer
  is the same alone, among other queries, or in another order; on the fast path and the reference alike;
* on: all the queries in one batch, exactly the answers these methods gave before the option existed;
* training never changes; configs written before the option (the shipped checkpoints, with the old ``kind`` key) read
  as ``transductive: true``, and the reproduction recipes say so.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from fewshot.config import RunConfig, upgrade
from fewshot.data.tasks import TaskSampler
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.methods.anil import ANIL, ANILConfig, head_loop_tasks, linear_tasks
from fewshot.methods.maml import MAML, MAMLConfig, inner_loop, inner_loop_tasks
from fewshot.methods.protonet import ProtoNet
from fewshot.methods.reptile import Reptile, ReptileConfig
from fewshot.models import base as model_base
from fewshot.models.conv4 import Conv4
from fewshot.recipes import recipe_names, recipe_path

REPO = Path(__file__).resolve().parents[2]
METHODS = {"maml": (MAML, MAMLConfig, dict(test_inner_steps=3)),
           "reptile": (Reptile, ReptileConfig, dict(test_inner_steps=4, test_inner_batch=3)),
           "anil": (ANIL, ANILConfig, dict(test_inner_steps=3))}
TOL = dict(rtol=1e-9, atol=1e-11)  # float64: the paths differ only in summation order


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (the machine is shared)."""


def episode(dataset, way=5, shot=1, query=3, tasks=2, seed=0):
    return TaskSampler(dataset, way, shot, query, seed=seed).sample(tasks).to("cpu", torch.float64)


def model(way=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = Conv4(way, hidden=16, **kwargs).double()
    with torch.no_grad():
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return net


def build(name, seed=0, **options):
    cls, config, defaults = METHODS[name]
    return cls(model(seed=seed), config(**{**defaults, **options}))


def adapt(method, sx, sy, seed=1):
    torch.manual_seed(seed)  # Reptile draws its mini-batches
    return method.adapt(sx, sy, 5)


@pytest.mark.parametrize("name", METHODS)
def test_off_by_default(name):
    cls, config, _ = METHODS[name]
    assert config().transductive is False
    assert cls(model(), config()).transductive is False
    assert cls(model(), config(transductive=True)).transductive is True
    assert ProtoNet(Conv4(None, running_stats=True)).transductive is False  # the contract's default


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("name", METHODS)
def test_each_answer_is_the_same_alone_among_others_and_in_any_order(name, reference, omniglot_test):
    ep = episode(omniglot_test, query=3)
    method = build(name, reference=reference)
    assert method.fast_path(ep.support_x if name == "reptile" else ep) is not reference
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    predictor = adapt(method, sx, sy)
    with torch.no_grad():
        together = predictor(qx)
        alone = torch.cat([predictor(qx[i : i + 1]) for i in range(len(qx))])
        order = torch.randperm(len(qx), generator=torch.Generator().manual_seed(0))
        shuffled = predictor(qx[order])
        with_others = predictor(torch.cat([qx[:1], ep.query_x[1]]))[0]  # with another task's queries
    torch.testing.assert_close(together, alone, **TOL)
    torch.testing.assert_close(shuffled, together[order], **TOL)
    torch.testing.assert_close(with_others, together[0], **TOL)
    # and the check can fail: scored together, the answers do depend on the other queries
    method.transductive = True
    with torch.no_grad():
        batch = adapt(method, sx, sy)(qx)
        single = adapt(method, sx, sy)(qx[:1])
    assert (batch[0] - single[0]).abs().max() > 1e-3


@pytest.mark.parametrize("name", METHODS)
def test_off_scores_each_query_in_a_batch_of_the_support_set_and_itself(name, omniglot_test):
    """The written protocol, by hand: the adapted weights (or head) on ``cat(support, query)``, the query's row."""
    ep = episode(omniglot_test, query=2)
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    method = build(name)
    with torch.no_grad():
        got = adapt(method, sx, sy)(qx)
    net = method.model
    params = [p.detach().requires_grad_() for p in net.meta_parameters()]
    if name == "maml":
        fast = [p.detach() for p in inner_loop(net, params, sx, sy, 3, [0.4] * len(params), False)]
        expected = [net(torch.cat([sx, q[None]]), fast)[-1] for q in qx]
    elif name == "reptile":
        torch.manual_seed(1)
        fast, _ = method.train_task(sx, sy, 4, 3)
        expected = [net(torch.cat([sx, q[None]]), fast)[-1] for q in qx]
    else:
        body, head = params[:-2], params[-2:]
        with torch.no_grad():
            h = net.features(sx, body)
        for _ in range(3):
            grads = torch.autograd.grad(F.cross_entropy(F.linear(h, *head), sy), head)
            head = [p - 0.4 * g for p, g in zip(head, grads)]
        expected = [F.linear(net.features(torch.cat([sx, q[None]]), body)[-1], *head) for q in qx]
    torch.testing.assert_close(got, torch.stack(expected).detach(), **TOL)


@pytest.mark.parametrize("name", METHODS)
def test_on_reproduces_the_answers_from_before_the_option(name, omniglot_test):
    """``transductive: true`` is the code as it was: the query batch through the adapted model in one pass."""
    ep = episode(omniglot_test, query=4)
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    method = build(name, transductive=True)
    with torch.no_grad():
        got = adapt(method, sx, sy)(qx)
    net = method.model
    params = [p.detach().requires_grad_() for p in net.meta_parameters()]
    if name == "maml":
        fast = inner_loop(net, params, sx, sy, 3, [0.4] * len(params), False)
        expected = net(qx, [p.detach() for p in fast])
    elif name == "reptile":
        torch.manual_seed(1)
        fast, _ = method.train_task(sx, sy, 4, 3)
        expected = net(qx, fast)
    else:
        body, head = params[:-2], params[-2:]
        h = net.features(sx, body).detach()
        for _ in range(3):
            grads = torch.autograd.grad(F.cross_entropy(F.linear(h, *head), sy), head)
            head = [p - 0.4 * g for p, g in zip(head, grads)]
        expected = F.linear(net.features(qx, body), *head)
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("transductive", [False, True])
@pytest.mark.parametrize("name", METHODS)
def test_predict_fast_equals_reference_and_per_task_adapt(name, transductive, omniglot_test):
    ep = episode(omniglot_test, query=2, tasks=3, seed=2)
    fast = build(name, transductive=transductive, task_chunk=2) if name != "reptile" else build(
        name, transductive=transductive)
    ref = build(name, transductive=transductive, reference=True)
    torch.manual_seed(5)
    batched = fast.predict(ep)
    torch.manual_seed(5)
    reference = ref.predict(ep)
    assert batched.shape == (3, 10, 5)
    torch.testing.assert_close(batched, reference, rtol=1e-7, atol=1e-9)  # Reptile: batched vs torch.optim.Adam
    if name != "reptile":  # Reptile's predict draws every task's mini-batches before adapting (same draws, per task)
        per_task = torch.stack([fast.adapt(ep.support_x[t], ep.support_y[t], 5)(ep.query_x[t]) for t in range(3)])
        torch.testing.assert_close(batched, per_task.detach(), **TOL)


@pytest.mark.parametrize("name", METHODS)
def test_on_predict_is_the_old_one_pass_over_the_query_batch(name, omniglot_test):
    ep = episode(omniglot_test, query=3, tasks=2, seed=3)
    method = build(name, transductive=True)
    net = method.model
    params = [p.detach().requires_grad_() for p in net.meta_parameters()]
    torch.manual_seed(4)
    if name == "maml":
        fast = inner_loop_tasks(net, params, ep.support_x, ep.support_y, 3, [0.4] * len(params), False)
        expected = net.forward_tasks(ep.query_x, [p.detach() for p in fast])
    elif name == "reptile":
        fast, _ = method.train_tasks(ep.support_x, ep.support_y, 4, 3)
        expected = net.forward_tasks(ep.query_x, fast)
    else:
        body = [p.detach().expand(2, *p.shape) for p in params[:-2]]
        with torch.no_grad():
            support, query = net.features_tasks(ep.support_x, body), net.features_tasks(ep.query_x, body)
        head = head_loop_tasks(support, ep.support_y, params[-2:], 3, 0.4, False)
        expected = linear_tasks(query, [p.detach() for p in head])
    torch.manual_seed(4)
    torch.testing.assert_close(method.predict(ep), expected.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_training_is_the_same_either_way(name, omniglot_train):
    ep = TaskSampler(omniglot_train, 5, 1, 2, seed=1).sample(2).to("cpu", torch.float64)
    grads, metrics = [], []
    for transductive in (False, True):
        method = build(name, seed=3, transductive=transductive)
        torch.manual_seed(0)
        metrics.append(method.training_gradient(ep))
        grads.append([p.grad.clone() for p in method.meta_parameters()])
    assert metrics[0] == metrics[1]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_chunked_passes_give_the_same_answers(omniglot_test, monkeypatch):
    ep = episode(omniglot_test, query=3)
    method = build("maml")
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    with torch.no_grad():
        whole = method.adapt(sx, sy, 5)(qx)
        monkeypatch.setattr(model_base, "QUERY_BATCH_EXAMPLES", 7)  # one query (6 examples) per pass
        chunked = method.adapt(sx, sy, 5)(qx)
    torch.testing.assert_close(whole, chunked, **TOL)


# --- configs --------------------------------------------------------------------------------------------------------


OLD = {"name": "old", "kind": "episodic", "data": {"name": "omniglot", "options": {}},
       "model": {"name": "conv4", "options": {}}}


@pytest.mark.parametrize("name", ["maml", "reptile", "anil"])
def test_configs_from_before_the_option_read_as_transductive(name):
    old = {**OLD, "method": {"name": name, "options": {"inner_lr": 0.4}}}
    assert upgrade(old)["method"]["options"] == {"inner_lr": 0.4, "transductive": True}
    assert "transductive" not in old["method"]["options"]  # the caller's mapping is not modified
    assert upgrade({**OLD, "method": {"name": name}})["method"]["options"] == {"transductive": True}
    kept = {**OLD, "method": {"name": name, "options": {"transductive": False}}}
    assert upgrade(kept)["method"]["options"] == {"transductive": False}
    today = {k: v for k, v in old.items() if k != "kind"}
    assert upgrade(today) is today  # a config in today's keys: the default (per query) applies
    assert upgrade({**OLD, "method": {"name": "protonet", "options": {}}})["method"]["options"] == {}


@pytest.mark.parametrize("path", sorted((REPO / "zoo").glob("*.safetensors")), ids=lambda p: p.name)
def test_shipped_checkpoints_read_as_transductive(path):
    config = RunConfig.from_dict(load_checkpoint(path).config)
    if config.method.name in METHODS:
        assert config.method.options["transductive"] is True
    else:
        assert "transductive" not in config.method.options


def test_reproduction_recipes_say_transductive():
    gradient_based = [n for n in recipe_names() if n.startswith("omniglot_")
                      and yaml.safe_load(recipe_path(n).read_text())["method"]["name"] in METHODS]
    assert len(gradient_based) == 22  # MAML, first-order MAML, MAML++, Reptile in 4 cells; ANIL, Meta-SGD in 2;
    # Proto-MAML, first and second order, in 1
    for name in gradient_based:
        assert yaml.safe_load(recipe_path(name).read_text())["method"]["options"]["transductive"] is True, name


def test_mamlpp_recipes_keep_per_step_statistics_as_the_authors_code():
    """MAML++'s recipes keep per-step running statistics (BNRS) and, as the authors' code, normalise every pass by its
    batch: at test time the query batch (transductive)."""
    mamlpp = [n for n in recipe_names() if n.endswith("_mamlpp")]
    assert len(mamlpp) == 4
    for name in mamlpp:
        options = yaml.safe_load(recipe_path(name).read_text())["method"]["options"]
        assert options["per_step_bn_stats"] is True and options["transductive"] is True, name
