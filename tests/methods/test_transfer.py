"""Transfer: the pretrained EfficientNet really is pretrained; fine-tuning freezes what it should; feature extraction
and fine-tuning work on real Omniglot episodes and on non-tensor (text) inputs; the Conv-4 Baseline trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.inputs import take
from fewshot.data.tasks import TaskSampler
from fewshot.engine.evaluate import evaluate
from fewshot.errors import FewShotError
from fewshot.hashing import item_keys
from fewshot.methods.features import FeatureExtraction, FeaturesConfig
from fewshot.methods.finetune import FineTune, FineTuneConfig

# ImageNet indices of what a cup of coffee on a saucer may plausibly be called
COFFEE_CLASSES = {504: "coffee mug", 967: "espresso", 968: "cup", 969: "eggnog", 925: "consomme", 809: "soup bowl"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def effnet64():
    from fewshot.models.efficientnet import EfficientNetFeatures

    return EfficientNetFeatures(image_size=64).eval()


def _coffee() -> torch.Tensor:
    from skimage.data import coffee

    return torch.from_numpy(coffee()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_pretrained_backbone_recognises_coffee():
    from fewshot.models.efficientnet import EfficientNetFeatures

    pretrained = EfficientNetFeatures(image_size=224, pretrained=True).eval()
    assert sum(p.numel() for p in pretrained.parameters()) == 4_652_008
    with torch.no_grad():
        probs = pretrained.imagenet_logits(_coffee()).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in COFFEE_CLASSES, f"top-1 ImageNet class {top} is not a coffee-like class"
    assert float(probs[list(COFFEE_CLASSES)].sum()) > 0.5
    torch.manual_seed(0)
    random = EfficientNetFeatures(image_size=224, pretrained=False).eval()  # control: same code, no weights
    with torch.no_grad():
        random_probs = random.imagenet_logits(_coffee()).softmax(-1)[0]
    assert float(random_probs[list(COFFEE_CLASSES)].sum()) < 0.1


def test_backbone_blocks_compose_to_forward(effnet64):
    x = torch.rand(2, 28, 28)
    with torch.no_grad():
        full = effnet64(x)
        mid = effnet64.forward_blocks(x, 0, 10)
        assert torch.allclose(effnet64.forward_blocks(mid, 10), full, atol=1e-5)
    assert full.shape == (2, 1280) and len(effnet64.blocks) == 18
    with pytest.raises(FewShotError, match="EfficientNet takes images"):
        effnet64(torch.rand(2, 2, 28, 28))


def test_finetune_top_k_keeps_frozen_layers_bit_identical(effnet64, omniglot_test):
    episode = TaskSampler(omniglot_test, 5, 1, 2, seed=0).sample(1)
    before = {k: v.clone() for k, v in effnet64.state_dict().items()}
    method = FineTune(effnet64, FineTuneConfig(top_k=2, steps=5, lr=0.1))
    adapted = method.adapt(episode.support_x[0], episode.support_y[0], 5)
    after = adapted.model.state_dict()
    frozen = [k for k in after if not k.startswith(("blocks.16.", "blocks.17."))]
    trained = [k for k in after if k.startswith(("blocks.16.", "blocks.17.")) and k.endswith("weight")]
    assert all(torch.equal(after[k], before[k]) for k in frozen)  # bit-identical, buffers included
    assert all(not torch.equal(after[k], before[k]) for k in trained)  # the top 2 blocks did train
    assert all(torch.equal(v, before[k]) for k, v in effnet64.state_dict().items())  # the method's copy untouched
    assert adapted(episode.query_x[0]).shape == (10, 5)


def test_finetune_all_layers_changes_the_bottom_too(effnet64, omniglot_test):
    episode = TaskSampler(omniglot_test, 3, 1, 1, seed=1).sample(1)
    method = FineTune(effnet64, FineTuneConfig(top_k=-1, steps=2, lr=0.05))
    adapted = method.adapt(episode.support_x[0], episode.support_y[0], 3)
    stem = "blocks.0.conv.weight"
    assert not torch.equal(adapted.model.state_dict()[stem], effnet64.state_dict()[stem])
    with pytest.raises(FewShotError, match="only 18 blocks"):
        FineTune(effnet64, FineTuneConfig(top_k=19)).adapt(episode.support_x[0], episode.support_y[0], 3)


def test_feature_extraction_on_omniglot_caches_embeddings(effnet64, omniglot_test):
    calls = []
    hook = effnet64.register_forward_hook(lambda module, inputs, output: calls.append(output.shape[0]))
    try:
        for classifier in ("logreg", "ncm"):
            method = FeatureExtraction(effnet64, FeaturesConfig(classifier=classifier, cache="memory"))
            first = evaluate(method, omniglot_test, way=5, shot=1, query=3, episodes=6, seed=0)
            embedded = sum(calls)
            second = evaluate(method, omniglot_test, way=5, shot=1, query=3, episodes=6, seed=0)
            assert sum(calls) == embedded  # everything came from the cache the second time
            assert second.per_episode == first.per_episode
            assert first.accuracy > 0.45, (classifier, first)  # chance is 0.2
            calls.clear()
    finally:
        hook.remove()
    assert embedded <= 6 * 5 * 4  # each image embedded at most once


class CharBackbone(nn.Module):
    """A tiny text encoder (lists of strings -> features) standing in for a sentence encoder."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.EmbeddingBag(128, 16, mode="mean")
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])

    def forward(self, texts: list[str]) -> torch.Tensor:
        assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        codes = [torch.tensor([min(ord(c), 127) for c in t] or [0]) for t in texts]
        offsets = torch.tensor([0] + [len(c) for c in codes[:-1]]).cumsum(0)
        h = self.embed(torch.cat(codes), offsets)
        for block in self.blocks:
            h = F.relu(block(h))
        return h


def test_transfer_methods_take_lists_of_strings():
    support = ["aaaa", "aaab", "zzzz", "zzzy", "mmmm", "mmmn"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    queries = ["aaba", "zzyz", "mmnm"]
    assert take(support, torch.tensor([0, 2])) == ["aaaa", "zzzz"]
    assert len(set(item_keys(support))) == 6
    for method in (FeatureExtraction(CharBackbone(), FeaturesConfig(classifier="ncm")),
                   FeatureExtraction(CharBackbone(), FeaturesConfig(classifier="logreg", C=100.0)),
                   FineTune(CharBackbone(), FineTuneConfig(top_k=1, steps=100, lr=0.5, batch_size=4)),
                   FineTune(CharBackbone(), FineTuneConfig(top_k=-1, steps=100, lr=0.5)),
                   FineTune(CharBackbone(), FineTuneConfig(top_k=0, steps=100, lr=0.5))):
        method.eval()
        predictor = method.adapt(support, labels, 3)
        with torch.no_grad():
            logits = predictor(queries)
        assert logits.shape == (3, 3)
        assert logits.argmax(-1).tolist() == [0, 1, 2], type(method).__name__
        assert all(p.requires_grad for p in method.backbone.parameters())  # adapting never freezes the method


def test_conv4_baseline_trains_and_scores(data_root):
    from fewshot.config import load_config
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.train import make_optimizer

    config = load_config("omniglot_5w1s_baseline_conv4", ["train.batch_size=64", "train.iterations=30"])
    experiment = build_experiment(config, str(data_root))
    assert experiment.num_classes == 4400  # 1100 characters x 4 rotations
    a, b = experiment.batch(7), experiment.batch(7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # deterministic in the iteration
    assert not torch.equal(a.y, experiment.batch(8).y)
    method = experiment.method
    assert method.pretrain_head.out_features == 4400
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    optimizer = make_optimizer(method.meta_parameters(), config.train)
    losses = []
    for _ in range(30):  # one fixed batch: the supervised step must be able to fit it
        optimizer.zero_grad(set_to_none=True)
        losses.append(method.training_gradient(a)["loss"])
        optimizer.step()
    assert losses[0] > 8.0 and losses[-1] < losses[0] - 2.0, (losses[0], losses[-1])  # from ~ln(4400) = 8.39
    assert any(not torch.equal(v, before[k]) for k, v in method.backbone.state_dict().items())
    # scored by per-task logistic regression on the frozen features (learning to a useful level takes ~10^3 steps:
    # the committed 4,000-step run scores 88.6% on 600 episodes, see results/transfer.md)
    result = experiment.test(episodes=10)
    assert result.episodes == 10 and len(result.per_episode) == 10 and 0.0 <= result.accuracy <= 1.0
    assert method.training and method.backbone.training  # evaluate() restored the training mode


def test_conv4_top_k_finetune_freezes_the_bottom_blocks(omniglot_test):
    from fewshot.models.conv4 import Conv4

    torch.manual_seed(0)
    conv4 = Conv4(out_features=None, running_stats=True).eval()
    x = torch.rand(3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(conv4.forward_blocks(conv4.forward_blocks(x, 0, 2), 2), conv4(x), atol=1e-6)
    assert len(conv4.blocks) == 4 and set(conv4.state_dict()) == set(Conv4(out_features=None,
                                                                              running_stats=True).state_dict())
    episode = TaskSampler(omniglot_test, 5, 1, 2, seed=0).sample(1)
    before = {k: v.clone() for k, v in conv4.state_dict().items()}
    adapted = FineTune(conv4, FineTuneConfig(top_k=1, steps=5, lr=0.1)).adapt(episode.support_x[0],
                                                                               episode.support_y[0], 5)
    after = adapted.model.state_dict()
    top = ("convs.3.", "norms.3.")
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith(top))
    assert all(not torch.equal(after[k], before[k]) for k in ("convs.3.weight", "norms.3.weight"))
    assert adapted.staged and adapted(episode.query_x[0]).shape == (10, 5)


@pytest.mark.parametrize("top_k", [0, -1])
def test_prototype_head_starts_as_nearest_class_mean(omniglot_test, top_k):
    from fewshot.models.conv4 import Conv4

    torch.manual_seed(0)
    conv4 = Conv4(out_features=None, running_stats=True).eval()
    episode = TaskSampler(omniglot_test, 5, 1, 15, seed=3).sample(1)
    sx, sy, qx = episode.support_x[0], episode.support_y[0], episode.query_x[0]
    with torch.no_grad():
        support, query = conv4(sx), conv4(qx)
    nearest = torch.cdist(query, support).argmin(1)  # 1-shot: the support examples are the class means
    untrained = FineTune(conv4, FineTuneConfig(top_k=top_k, steps=0, head_init="prototypes")).adapt(sx, sy, 5)
    with torch.no_grad():
        logits = untrained(qx)
    assert torch.equal(logits.argmax(1), sy[nearest])
    assert not torch.equal(logits.argmax(1), logits.new_zeros(75, dtype=torch.long))  # not degenerate
    randomly = FineTune(conv4, FineTuneConfig(top_k=top_k, steps=0)).adapt(sx, sy, 5)
    with torch.no_grad():
        assert not torch.equal(randomly(qx).argmax(1), sy[nearest])  # a random head is not that classifier
    with pytest.raises(FewShotError, match="classes \\[4\\] have none"):
        FineTune(conv4, FineTuneConfig(top_k=top_k, steps=0, head_init="prototypes")).adapt(sx[:4], sy[:4], 5)
