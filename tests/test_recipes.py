"""Every shipped recipe loads, builds its experiment and draws a training batch the method accepts; derived recipes
equal the settings their published figures were measured with."""

import dataclasses

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


SHORT_BUDGET = ["method.head_init=prototypes", "train.lr=0.003", "train.iterations=5000"]


@pytest.mark.parametrize("name,overrides", [
    ("omniglot_5w1s_protomaml", ["train.way=20", "train.meta_batch=8", "method.task_chunk=2"]),
    ("omniglot_5w1s_foprotomaml", ["method.first_order=true"]),
])
def test_proto_maml_recipes_are_maml_with_the_measured_overrides(name, overrides):
    """results/speed.md measured Proto-MAML as ``omniglot_5w1s_maml`` with these overrides: the recipes must be
    exactly that, so the published figures stay the recipes' own."""
    measured = load_config("omniglot_5w1s_maml", [*SHORT_BUDGET, *overrides])
    recipe = load_config(name)
    assert recipe.name == name and recipe.description != measured.description
    assert dataclasses.replace(recipe, name=measured.name, description=measured.description) == measured
