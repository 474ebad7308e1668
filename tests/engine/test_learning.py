"""Short real training runs learn: well above chance on fixed Omniglot test episodes (seeds fixed)."""

import pytest

from fewshot.config import load_config
from fewshot.engine.experiment import build_experiment
from fewshot.engine.train import train

COMMON = ["train.val_episodes=0", "train.checkpoint_every=1000", "eval.episodes=100"]


def run(recipe, overrides, data_root, tmp_path):
    experiment = build_experiment(load_config(recipe, COMMON + overrides), data_root)
    train(experiment, tmp_path / "run", progress=False)
    return experiment.test()


def test_protonet_learns(data_root, tmp_path):
    result = run("omniglot_5w1s_protonet", ["train.iterations=100", "train.way=20"], data_root, tmp_path)
    assert result.episodes == 100
    assert result.accuracy > 0.70, result  # chance is 0.20


def test_first_order_maml_learns(data_root, tmp_path):
    result = run("omniglot_5w1s_fomaml", ["train.iterations=100", "train.meta_batch=8"], data_root, tmp_path)
    assert result.accuracy > 0.45, result  # chance is 0.20


@pytest.mark.slow
def test_reptile_learns(data_root, tmp_path):
    result = run("omniglot_5w1s_reptile", ["train.iterations=300", "method.test_inner_steps=20"], data_root, tmp_path)
    assert result.accuracy > 0.45, result
