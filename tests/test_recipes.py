"""Every shipped recipe loads, builds its experiment and draws a training batch the method accepts."""

import pytest
import yaml

from fewshot.config import RunConfig, load_config
from fewshot.engine.experiment import build_experiment
from fewshot.recipes import recipe_names, recipe_path

RECIPES = recipe_names()


def test_recipes_are_shipped():
    assert len(RECIPES) >= 90


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_and_draws_a_batch_its_method_trains_on(name, data_root, one_thread):
    raw = yaml.safe_load(recipe_path(name).read_text())
    assert raw["name"] == name  # the run folder is named after the file
    config = load_config(name, ["train.device=cpu"])
    assert RunConfig.from_dict(yaml.safe_load(config.to_yaml())) == config  # what a run folder keeps reloads
    experiment = build_experiment(config, str(data_root))
    batch = experiment.batch(0)
    if batch is None:  # nothing to train: such recipes say so with zero iterations
        assert config.train.iterations == 0, name
    else:
        assert isinstance(batch, experiment.method.trains_on), (name, type(batch).__name__)
