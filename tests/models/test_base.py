"""The backbone contracts of fewshot.models.base that methods ask for."""

from torch import nn

from fewshot.models.base import embeds_alone
from fewshot.models.conv4 import Conv4


def test_a_model_embeds_each_input_alone_only_with_running_statistics():
    assert embeds_alone(Conv4(None, running_stats=True))
    assert not embeds_alone(Conv4(None, running_stats=False))  # batch statistics in eval mode too
    per_step = Conv4(5, running_stats=True)
    per_step.per_step_norm(5, weights=True, statistics=True)  # MAML++'s: evaluation normalises by the batch
    assert not embeds_alone(per_step)
    assert embeds_alone(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU()))
    assert not embeds_alone(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)))
    assert embeds_alone(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
