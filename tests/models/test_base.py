"""The backbone contracts of fewshot.models.base that methods ask for."""

from torch import nn

from fewshot.models.base import embeds_alone
from fewshot.models.conv4 import Conv4
from fewshot.models.digits_cnn import DigitsCNN
from fewshot.models.mlp import MLP


def test_a_model_embeds_each_input_alone_only_where_it_says_so():
    assert embeds_alone(Conv4(None, running_stats=True))
    assert not embeds_alone(Conv4(None, running_stats=False))  # batch statistics in eval mode too
    per_step = Conv4(5, running_stats=True)
    per_step.per_step_norm(5, weights=True, statistics=True)  # MAML++'s: evaluation normalises by the batch
    assert not embeds_alone(per_step)
    assert embeds_alone(MLP(8, [16], None, running_stats=True)) and embeds_alone(MLP(8, [16], None, batch_norm=False))
    assert not embeds_alone(MLP(8, [16], None))
    assert embeds_alone(DigitsCNN())
    # a model that does not say may mix its batch (batch norm run functionally, attention over the batch): not reused
    assert not embeds_alone(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
