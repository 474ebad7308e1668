import pytest
import torch

from fewshot.data.base import TensorClassDataset
from fewshot.data.tasks import TaskSampler, fixed_episodes
from fewshot.errors import FewShotError


def test_episode_shapes_and_labels(omniglot_train):
    ep = TaskSampler(omniglot_train, way=5, shot=2, query=3, seed=1).sample(4, iteration=0)
    assert ep.support_x.shape == (4, 10, 28, 28) and ep.query_x.shape == (4, 15, 28, 28)
    assert ep.support_y.tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.classes.shape == (4, 5) and all(len(set(row.tolist())) == 5 for row in ep.classes)
    # each label's images really come from its class
    data = omniglot_train.data.float() / 255
    for t in range(4):
        for j in range(5):
            cls_images = data[ep.classes[t, j]]
            for img in ep.query_x[t][ep.query_y[t] == j]:
                assert (cls_images - img).abs().flatten(1).amax(1).min() == 0


def test_support_and_query_do_not_overlap():
    ids = torch.arange(30 * 20).view(30, 20, 1)  # every example carries its own id
    data = TensorClassDataset(ids, [str(i) for i in range(30)])
    ep = TaskSampler(data, 5, 5, 15, seed=3).sample(8)
    for t in range(8):
        s, q = set(ep.support_x[t].flatten().tolist()), set(ep.query_x[t].flatten().tolist())
        assert len(s) == 25 and len(q) == 75 and not s & q
        for x, y in zip(ep.query_x[t].flatten().tolist(), ep.query_y[t].tolist()):
            assert x // 20 == ep.classes[t, y]


def test_same_seed_same_episodes(omniglot_train):
    a = TaskSampler(omniglot_train, 5, 1, 5, seed=7).sample(3, iteration=11)
    b = TaskSampler(omniglot_train, 5, 1, 5, seed=7).sample(3, iteration=11)
    c = TaskSampler(omniglot_train, 5, 1, 5, seed=8).sample(3, iteration=11)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.classes, b.classes)
    assert not torch.equal(a.classes, c.classes)


def test_fixed_episodes_do_not_depend_on_chunking(omniglot_test):
    a = list(fixed_episodes(omniglot_test, 5, 1, 2, episodes=12, seed=0, chunk=5))
    b = list(fixed_episodes(omniglot_test, 5, 1, 2, episodes=12, seed=0, chunk=12))
    assert torch.equal(torch.cat([e.classes for e in a]), b[0].classes)


def test_no_test_class_in_training(data_root, omniglot_train, omniglot_test):
    test_names = set(omniglot_test.class_names)
    assert not test_names & set(omniglot_train.class_names)
    sampler = TaskSampler(omniglot_train, 20, 1, 1, seed=0)
    for it in range(20):
        ep = sampler.sample(4, it)
        assert not {omniglot_train.class_names[c] for c in ep.classes.flatten().tolist()} & test_names


def test_clear_errors():
    data = TensorClassDataset(torch.zeros(3, 4, 2, 2, dtype=torch.uint8), ["a", "b", "c"])
    with pytest.raises(FewShotError, match="5-way tasks need 5 classes but the split has only 3"):
        TaskSampler(data, 5, 1, 1)
    with pytest.raises(FewShotError, match="need 5 examples per class"):
        TaskSampler(data, 2, 2, 3)
    empty = TensorClassDataset(torch.zeros(0, 4, 2, 2, dtype=torch.uint8), [])
    with pytest.raises(FewShotError, match="no classes"):
        TaskSampler(empty, 2, 1, 1)


def test_text_like_dataset_with_unequal_classes():
    class Words:
        class_names = ["a", "b", "c"]
        items = [["a0", "a1", "a2"], ["b0", "b1"], ["c0", "c1", "c2", "c3"]]

        @property
        def class_sizes(self):
            return torch.tensor([3, 2, 4])

        def gather(self, classes, examples):
            return [self.items[c][e] for c, e in zip(classes.tolist(), examples.tolist())]

    ep = TaskSampler(Words(), 3, 1, 1, seed=0).sample(2)
    assert len(ep.support_x) == 2 and len(ep.support_x[0]) == 3
    for t in range(2):
        for x, y in zip(ep.support_x[t] + ep.query_x[t], ep.support_y[t].tolist() + ep.query_y[t].tolist()):
            assert x[0] == Words.class_names[ep.classes[t, y]]
        assert set(ep.support_x[t]).isdisjoint(ep.query_x[t])
