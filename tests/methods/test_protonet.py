"""ProtoNet's evaluation embeds each distinct image once, and scores as task by task; where an input's embedding
depends on its batch (batch statistics), or in training, every task runs the backbone on its own inputs."""

from dataclasses import replace
from pathlib import Path

import torch

from fewshot.classify import load_model
from fewshot.data.tasks import TaskSampler
from fewshot.methods.base import Method
from fewshot.methods.protonet import ProtoNet
from fewshot.models.conv4 import Conv4

ZOO = Path(__file__).resolve().parents[2] / "zoo"


def _counting(model: torch.nn.Module) -> list[int]:
    """The batch sizes the model runs on, from now on."""
    sizes: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].shape[0]))
    return sizes


def test_evaluation_embeds_each_distinct_image_once(omniglot_test, one_thread):
    method, _ = load_model(ZOO / "omniglot_20w1s_protonet.safetensors", 20)
    method.eval()
    drawn = TaskSampler(omniglot_test, way=20, shot=1, query=5, seed=0).sample(2)
    repeat = torch.tensor([0, 1, 0])  # the first task twice: its images are embedded once
    episode = replace(drawn, support_x=drawn.support_x[repeat], support_y=drawn.support_y[repeat],
                      query_x=drawn.query_x[repeat], query_y=drawn.query_y[repeat], classes=drawn.classes[repeat],
                      seeds=None)
    by_task = Method.predict(method, episode)  # the backbone over each task's support, then its queries
    sizes = _counting(method.model)
    logits = method.predict(episode)
    inputs = torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)])
    assert sum(sizes) == len(torch.unique(inputs, dim=0)) <= len(inputs) * 2 // 3
    torch.testing.assert_close(logits, by_task, rtol=1e-4, atol=1e-3)
    assert torch.equal(logits.argmax(-1), by_task.argmax(-1))
    assert (logits.argmax(-1) == episode.query_y).float().mean() > 0.8

    sizes.clear()  # the same tasks again: nothing left to embed
    torch.testing.assert_close(method.predict(episode), logits, rtol=0, atol=0)
    assert sizes == []

    with torch.no_grad():  # other weights: embedded anew, not read from the cache of the old ones
        method.model.convs[0].bias.add_(0.5)
    changed = method.predict(episode)
    assert sum(sizes) == len(torch.unique(inputs, dim=0)) and not torch.equal(changed, logits)
    torch.testing.assert_close(changed, Method.predict(method, episode), rtol=1e-4, atol=1e-3)


def test_batch_statistics_or_training_embed_task_by_task(omniglot_test, one_thread):
    episode = TaskSampler(omniglot_test, way=5, shot=2, query=3, seed=1).sample(2)
    torch.manual_seed(0)
    batch_statistics = ProtoNet(Conv4(None, running_stats=False)).eval()  # an input's embedding depends on its batch
    sizes = _counting(batch_statistics.model)
    torch.testing.assert_close(batch_statistics.predict(episode), Method.predict(batch_statistics, episode),
                               rtol=0, atol=0)
    assert sizes[:4] == [10, 15, 10, 15]  # each task's support, then its queries

    training = ProtoNet(Conv4(None, running_stats=True)).train()
    sizes = _counting(training.model)
    training.predict(episode)
    assert sizes == [10, 15, 10, 15]


def test_a_subclass_that_adapts_otherwise_or_autocast_scores_task_by_task(omniglot_test, one_thread):
    """The cache answers as ProtoNet's own prototypes in float32: a subclass with another adapt, or a forward under
    autocast, runs the backbone task by task (as Method.predict)."""

    class Shifted(ProtoNet):
        def adapt(self, support_x, support_y, way):
            predictor = super().adapt(support_x, support_y, way)
            predictor.prototypes.add_(1.0)
            return predictor

    episode = TaskSampler(omniglot_test, way=5, shot=1, query=3, seed=2).sample(2)
    torch.manual_seed(0)
    shifted = Shifted(Conv4(None, running_stats=True)).eval()
    sizes = _counting(shifted.model)
    torch.testing.assert_close(shifted.predict(episode), Method.predict(shifted, episode), rtol=0, atol=0)
    assert sizes[:2] == [5, 15]

    plain = ProtoNet(shifted.model)
    sizes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain.predict(episode)
    assert sizes == [5, 15, 5, 15]


def test_an_evaluation_stopped_midway_drops_the_embeddings(omniglot_test, one_thread):
    """``evaluate`` ends the method's evaluation also when it is stopped (Ctrl-C, an error): the cache of the
    images embedded so far is not kept past it."""
    from fewshot.engine.evaluate import evaluate

    method, _ = load_model(ZOO / "omniglot_5w1s_protonet.safetensors", 5)
    calls = []
    real_predict = method.predict

    def stopped_at_the_second_chunk(episode):
        calls.append(len(episode.support_x))
        if len(calls) == 2:
            assert method._cache is not None and len(method._cache.index) > 0  # the first chunk was embedded
            raise KeyboardInterrupt
        return real_predict(episode)

    method.predict = stopped_at_the_second_chunk
    try:
        evaluate(method, omniglot_test, way=5, shot=1, query=2, episodes=20, save_every=1e9)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the evaluation was not stopped")
    assert calls[0] == 1 and method._cache is None
