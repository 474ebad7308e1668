"""MAML++ (Antoniou et al. 2019) as options of MAML, on tiny real Omniglot tasks.

The meta-gradients of the options that change them (MSL, LSLR, BNWB, all together, second order after DA) are held
to central finite differences of a meta-objective written out here independently of ``maml.py`` (float64, 14x14
characters, a two-block Conv-4 with non-trivial batch-norm and per-step weights), over random directions and over
single elements of the new parameters.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.tasks import TaskSampler
from fewshot.errors import FewShotError
from fewshot.methods.maml import MAML, MAMLConfig, msl_weights
from fewshot.models.conv4 import Conv4


def tiny_task(omniglot_train, seed=0, iteration=3, tasks=1):
    ep = TaskSampler(omniglot_train, way=3, shot=2, query=3, seed=seed).sample(tasks, iteration)
    down = lambda x: F.avg_pool2d(x.double().flatten(0, 1).unsqueeze(1), 2)  # 14x14 real characters  # noqa: E731
    ep.support_x = down(ep.support_x).view(tasks, -1, 1, 14, 14)
    ep.query_x = down(ep.query_x).view(tasks, -1, 1, 14, 14)
    return ep


def tiny_maml(seed=0, **options):
    torch.manual_seed(seed)
    model = Conv4(3, hidden=4, blocks=2, image_size=14).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for norm in model.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    maml = MAML(model, MAMLConfig(**{"inner_lr": 0.4, **options})).double()
    with torch.no_grad():  # per-step copies and rates that differ from step to step
        if model.step_weights:
            for norm in model.norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)
        if maml.step_lrs is not None:
            for lr in maml.step_lrs:
                lr.uniform_(0.2, 0.6)
    return maml


def objective(maml, params, step_lrs, ep):
    """MAML++'s meta-loss of task 0, written out: the inner loop with rate ``step_lrs[j][k]`` (or ``inner_lr``) for
    tensor ``j`` at step ``k``, the pass over weights updated ``k`` times using batch-norm copy ``k``, and the query
    losses after every step weighted by the paper's importance vector (the last alone without MSL)."""
    config, model = maml.config, maml.model
    steps = config.inner_steps
    per_step = config.per_step_bn_weights or config.per_step_bn_stats
    run = (lambda x, w, k: model(x, w, step=k)) if per_step else (lambda x, w, k: model(x, w))  # noqa: E731
    if config.multi_step_loss and ep.iteration < config.msl_iterations:
        f, low = ep.iteration / config.msl_iterations, 0.03 / steps
        last = min((1 + (steps - 1) * f) / steps, 1 - (steps - 1) * low)
        weights = [max((1 - f) / steps, low)] * (steps - 1) + [last]
    else:
        weights = [0.0] * (steps - 1) + [1.0]
    fast, total = list(params), 0.0
    for k in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(run(ep.support_x[0], fast, k), ep.support_y[0]), fast,
                                    create_graph=True)
        rates = [config.inner_lr] * len(fast) if step_lrs is None else [lr[k] for lr in step_lrs]
        fast = [p - r * g for p, r, g in zip(fast, rates, grads, strict=True)]
        if weights[k]:
            total = total + weights[k] * F.cross_entropy(run(ep.query_x[0], fast, k + 1), ep.query_y[0])
    return total


def analytic_gradients(maml, ep):
    maml.zero_grad(set_to_none=True)
    maml.training_gradient(ep)
    params = maml.model.meta_parameters()
    lrs = None if maml.step_lrs is None else list(maml.step_lrs)
    return params, lrs, [p.grad.clone() for p in params], None if lrs is None else [lr.grad.clone() for lr in lrs]


def assert_matches_finite_differences(maml, ep, rel=1e-5, abs_=1e-9, directions=3, elements=()):
    """The meta-gradient along random directions (all tensors and rates at once) and along single elements
    ``(kind, tensor, index)`` (kind ``"param"`` or ``"lr"``) equals central finite differences of :func:`objective`."""
    params, lrs, grads, lr_grads = analytic_gradients(maml, ep)
    tensors = params + (lrs or [])
    all_grads = grads + (lr_grads or [])
    gen = torch.Generator().manual_seed(1)
    dirs_list = [[torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tensors] for _ in range(directions)]
    for kind, j, index in elements:
        d = [torch.zeros_like(t) for t in tensors]
        d[j + (len(params) if kind == "lr" else 0)][index] = 1.0
        dirs_list.append(d)
    eps = 1e-6
    for dirs in dirs_list:
        values = []
        for sign in (1, -1):
            moved = [(t + sign * eps * d).detach().requires_grad_() for t, d in zip(tensors, dirs)]
            values.append(objective(maml, moved[: len(params)], None if lrs is None else moved[len(params):], ep))
        fd = (values[0] - values[1]).item() / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(all_grads, dirs)).item()
        assert analytic == pytest.approx(fd, rel=rel, abs=abs_)
    return grads


# --- meta-gradients against finite differences -------------------------------------------------------------------

NORM_GAMMA, NORM_BETA = 2, 3  # first block's batch-norm scale and shift in meta_parameters()
CASES = {
    "msl": dict(inner_steps=3, multi_step_loss=True, msl_iterations=10),
    "lslr": dict(inner_steps=3, per_step_lr=True),
    "bnwb": dict(inner_steps=2, per_step_bn_weights=True),
    "all": dict(inner_steps=3, multi_step_loss=True, msl_iterations=10, per_step_lr=True, per_step_bn_weights=True,
                per_step_bn_stats=True, first_order_iterations=2),  # DA over at iteration 3: second order
}
ELEMENTS = {
    "msl": [("param", NORM_GAMMA, 1), ("param", 4, (0, 0, 1, 1))],
    "lslr": [("lr", 0, 0), ("lr", 0, 2), ("lr", NORM_GAMMA, 1), ("lr", 9, 1)],
    "bnwb": [("param", NORM_GAMMA, (0, 1)), ("param", NORM_BETA, (1, 2)), ("param", NORM_GAMMA, (2, 3))],
    "all": [("lr", 4, 0), ("lr", 8, 2), ("param", NORM_GAMMA, (1, 0)), ("param", NORM_BETA, (3, 1))],
}


@pytest.mark.parametrize("case", list(CASES))
def test_meta_gradient_matches_finite_differences(omniglot_train, case, one_thread):
    maml = tiny_maml(**CASES[case])
    assert maml.config.plus_plus and not maml.fast_path(tiny_task(omniglot_train))
    assert_matches_finite_differences(maml, tiny_task(omniglot_train), elements=ELEMENTS[case])


def test_finite_difference_check_can_fail(omniglot_train, one_thread):
    """The check above separates MSL's gradient from the last step's alone and the per-step copies' indexing."""
    ep = tiny_task(omniglot_train)
    msl = tiny_maml(**CASES["msl"])
    _, _, with_msl, _ = analytic_gradients(msl, ep)
    msl.config.multi_step_loss = False
    _, _, last_only, _ = analytic_gradients(msl, ep)
    assert max((a - b).abs().max().item() for a, b in zip(with_msl, last_only)) > 1e-3
    bnwb = tiny_maml(**CASES["bnwb"])
    bnwb._step = lambda k: {"step": k - 1}  # the method's query pass now uses the previous copy, the objective not
    with pytest.raises(AssertionError):
        assert_matches_finite_differences(bnwb, ep, directions=2)


def test_msl_weights_anneal_towards_the_last_step():
    assert msl_weights(5, 0, 5000) == pytest.approx([0.2] * 5)
    half = msl_weights(5, 2500, 5000)
    assert half == pytest.approx([0.1] * 4 + [0.6]) and sum(half) == pytest.approx(1)
    assert msl_weights(5, 4999, 5000) == pytest.approx([0.006] * 4 + [0.976])  # floors at 0.03 / steps
    assert msl_weights(5, 5000, 5000) is None  # afterwards the last step's loss alone
    assert msl_weights(1, 0, 10) == [1.0]


# --- derivative-order annealing ------------------------------------------------------------------------------------


def test_derivative_order_switches_at_the_stated_iteration(omniglot_train, one_thread):
    def gradients(ep, **options):
        maml = tiny_maml(inner_steps=2, reference=True, **options)
        metrics = maml.training_gradient(ep)
        return [p.grad for p in maml.parameters()], metrics["loss"]

    for iteration, first_order in [(0, True), (3, True), (4, False), (9, False)]:
        ep = tiny_task(omniglot_train, iteration=iteration, tasks=2)
        annealed, loss = gradients(ep, first_order_iterations=4)
        plain, plain_loss = gradients(ep, first_order=first_order)
        other, _ = gradients(ep, first_order=not first_order)
        assert loss == plain_loss
        assert all(torch.equal(a, b) for a, b in zip(annealed, plain, strict=True)), iteration
        assert not all(torch.equal(a, b) for a, b in zip(annealed, other, strict=True)), iteration


def test_schedules_need_the_iteration(omniglot_train):
    ep = tiny_task(omniglot_train)
    ep.iteration = None
    with pytest.raises(FewShotError, match="iteration"):
        tiny_maml(multi_step_loss=True, msl_iterations=5).training_gradient(ep)


# --- all options off: today's MAML -------------------------------------------------------------------------------


def plain_maml_gradients(model, ep, steps, lr):
    """MAML as main implements it (``inner_loop`` then the query loss, task by task), written out."""
    params = model.meta_parameters()
    for t in range(ep.num_tasks):
        fast = list(params)
        for _ in range(steps):
            grads = torch.autograd.grad(F.cross_entropy(model(ep.support_x[t], fast), ep.support_y[t]), fast,
                                        create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        (F.cross_entropy(model(ep.query_x[t], fast), ep.query_y[t]) / ep.num_tasks).backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("reference", [True, False])
def test_all_options_off_is_todays_maml(omniglot_train, reference, one_thread):
    ep = tiny_task(omniglot_train, tasks=2)
    maml = tiny_maml(inner_steps=2, reference=reference, task_chunk=2)
    assert not maml.config.plus_plus and maml.step_lrs is None and maml.model.step_copies == 0
    assert maml.fast_path(ep) is not reference
    maml.training_gradient(ep)
    expected = plain_maml_gradients(tiny_maml(inner_steps=2).model, ep, 2, 0.4)
    for p, e in zip(maml.model.meta_parameters(), expected, strict=True):
        if reference:
            assert torch.equal(p.grad, e)
        else:  # the task-batched path sums in another order
            torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


def test_options_that_change_nothing_give_maml_bitwise(omniglot_train, one_thread):
    """The MAML++ loop with every option neutral (MSL and DA over, LSLR rates all inner_lr) is MAML's reference."""
    ep = tiny_task(omniglot_train, iteration=20, tasks=2)
    options = dict(inner_steps=3, multi_step_loss=True, msl_iterations=20, first_order_iterations=20)
    plus = tiny_maml(**options)
    plus_loss = plus.training_gradient(ep)["loss"]
    plain = tiny_maml(inner_steps=3, reference=True)
    assert plus_loss == plain.training_gradient(ep)["loss"]
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(plus.parameters(), plain.parameters(), strict=True))


# --- per-step batch norm -----------------------------------------------------------------------------------------


def test_per_step_copies_keep_the_contract(omniglot_train):
    maml = tiny_maml(inner_steps=2, per_step_bn_weights=True, per_step_lr=True)
    model = maml.model
    params = model.meta_parameters()
    assert params[NORM_GAMMA].shape == (3, 4) and params[-2].shape == (3, model.feature_dim)  # the head last
    assert {id(p) for p in maml.meta_parameters()} == {id(p) for p in [*params, *maml.step_lrs]}
    x = tiny_task(omniglot_train).support_x[0]
    plain = Conv4(3, hidden=4, blocks=2, image_size=14).double()
    for step in (0, 1, 2, 7):
        row = min(step, 2)
        with torch.no_grad():
            for a, b in zip(plain.norms, model.norms):
                a.weight.copy_(b.weight[row])
                a.bias.copy_(b.bias[row])
            for a, b in zip(plain.convs, model.convs):
                a.load_state_dict(b.state_dict())
            plain.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(model(x, step=step), plain(x), rtol=0, atol=0)
        batched = model.forward_tasks(x.unsqueeze(0), [p.unsqueeze(0) for p in params], step=step)
        torch.testing.assert_close(batched[0], plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), model(x, step=2), rtol=0, atol=0)  # no step: the last copy


def test_per_step_statistics_are_kept_per_step_and_never_normalise(omniglot_train, one_thread):
    """BNRS as MAML++'s code: a copy of the running statistics per step, updated in training, while every pass
    normalises by its own batch (the code calls batch norm with training=True at test time too). Normalising a test
    task by them instead diverged on the real recipe (results/omniglot.md)."""
    options = {"inner_steps": 2, "test_inner_steps": 2, "multi_step_loss": True, "msl_iterations": 100}
    maml = tiny_maml(per_step_bn_stats=True, **options)
    model = maml.model
    assert not model.batches_tasks and model.norms[0].running_mean.shape == (3, 4)
    for it in range(3):
        maml.training_gradient(tiny_task(omniglot_train, seed=it, iteration=it))
    for norm in model.norms:
        for stats, init in ((norm.running_mean, 0.0), (norm.running_var, 1.0)):
            assert (stats - init).abs().min() > 0  # every copy was updated
            for a in range(3):
                for b in range(a + 1, 3):
                    assert (stats[a] - stats[b]).abs().max() > 1e-3, (a, b)  # and differ from step to step
    ep = tiny_task(omniglot_train, seed=5, tasks=1)
    support_x, support_y, query_x = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    maml.eval()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    logits = maml.adapt(support_x, support_y, 3)(query_x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())  # eval updates nothing
    # not transductive: each query beside the support set, so each query alone gets the same answer
    alone = torch.cat([maml.adapt(support_x, support_y, 3)(query_x[i : i + 1]) for i in range(len(query_x))])
    torch.testing.assert_close(alone, logits, rtol=1e-12, atol=1e-12)
    # they change no output: the same model without them answers the same, transductive or not (it may batch the
    # queries another way: equal to float rounding)
    twin = tiny_maml(**options)
    twin.load_state_dict({k: v for k, v in maml.state_dict().items() if "running" not in k})
    twin.eval()
    for transductive in (False, True):
        maml.transductive = twin.transductive = transductive
        torch.testing.assert_close(maml.adapt(support_x, support_y, 3)(query_x),
                                   twin.adapt(support_x, support_y, 3)(query_x), rtol=1e-12, atol=1e-12)
    assert (maml.adapt(support_x, support_y, 3)(query_x) - logits).abs().max() > 1e-4  # transductive: query batch


def test_non_transductive_queries_with_per_step_weights(omniglot_train):
    maml = tiny_maml(inner_steps=2, per_step_bn_weights=True)
    maml.eval()
    ep = tiny_task(omniglot_train, seed=2)
    support_x, support_y, query_x = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    logits = maml.adapt(support_x, support_y, 3)(query_x)
    alone = torch.cat([maml.adapt(support_x, support_y, 3)(query_x[i : i + 1]) for i in range(len(query_x))])
    torch.testing.assert_close(alone, logits, rtol=1e-10, atol=1e-12)
    assert maml.predict(ep).shape == (1, 9, 3)


def test_options_are_validated():
    with pytest.raises(FewShotError, match="msl_iterations"):
        MAMLConfig(multi_step_loss=True, msl_iterations=0)
    with pytest.raises(FewShotError, match="first_order"):
        MAMLConfig(first_order=True, first_order_iterations=10)
    with pytest.raises(FewShotError, match="learn_inner_lr"):
        MAMLConfig(per_step_lr=True, learn_inner_lr=True)
    with pytest.raises(FewShotError, match=">= 0"):
        MAMLConfig(first_order_iterations=-1)
    from fewshot.models.mlp import MLP

    with pytest.raises(FewShotError, match="PerStepNorm"):
        MAML(MLP(4, (8,), 3), MAMLConfig(per_step_bn_stats=True))


# --- checkpoints and the command line -----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, omniglot_train, one_thread):
    from fewshot.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from fewshot.engine.scoring import load_weights

    options = dict(CASES["all"], test_inner_steps=3)
    maml = tiny_maml(**options)
    optimizer = torch.optim.Adam(maml.meta_parameters(), lr=1e-2)
    maml.training_gradient(tiny_task(omniglot_train))
    optimizer.step()
    state = maml.state_dict()
    assert {"step_lrs.0", "model.norms.1.weight", "model.norms.1.running_var"} <= state.keys()
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(state, 1))
    fresh = tiny_maml(seed=9, **options)
    load_weights(fresh, load_checkpoint(tmp_path / "c.safetensors").weights, "c")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
    ep = tiny_task(omniglot_train, seed=4)
    maml.eval()
    fresh.eval()
    assert torch.equal(maml.predict(ep), fresh.predict(ep))
    plain = MAML(Conv4(3, hidden=4, blocks=2, image_size=14).double(), MAMLConfig())
    with pytest.raises(FewShotError, match="does not fit"):  # a MAML++ checkpoint does not load into plain MAML
        load_weights(plain, state, "c")


def test_cli_trains_a_mamlpp_recipe_and_resumes_bit_identically(tmp_path, data_root, capsys):
    from fewshot.cli import main
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.logs import read_metrics

    tiny = ["train.iterations=3", "train.meta_batch=2", "train.val_every=2", "train.val_episodes=2",
            "train.checkpoint_every=1", "train.log_every=1", "eval.episodes=2", "eval.query=2", "model.hidden=8",
            "train.threads=1",
            "method.inner_steps=2", "method.test_inner_steps=2", "method.msl_iterations=2",
            "method.first_order_iterations=1", "data.options.rotations=false"]
    runs = {}
    for name, stops in (("whole", []), ("resumed", ["--stop-after", "1"])):
        run = tmp_path / name
        args = ["--out", str(run), "--data-root", str(data_root), "--no-progress"]
        assert main(["train", "omniglot_5w1s_mamlpp", *tiny, *stops, *args]) == 0
        if stops:
            assert main(["train", str(run), "--resume", *args[2:]]) == 0
        runs[name] = run
    capsys.readouterr()
    last = {name: load_checkpoint(run / "checkpoints" / "last.safetensors") for name, run in runs.items()}
    assert last["whole"].iteration == 3
    assert "step_lrs.0" in last["whole"].weights and last["whole"].weights["model.norms.0.running_mean"].shape[0] == 3
    for key, value in last["whole"].weights.items():
        assert torch.equal(value, last["resumed"].weights[key]), key
    losses = {name: [row["loss"] for row in read_metrics(run) if row["phase"] == "train"] for name, run in runs.items()}
    assert losses["whole"] == losses["resumed"] and len(losses["whole"]) == 3
    tests = {name: json.loads((run / "test.json").read_text())["accuracy"] for name, run in runs.items()}
    assert tests["whole"] == tests["resumed"]
