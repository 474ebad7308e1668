"""Your own components: the registration API (names checked, built-ins never silently shadowed), a plugin file named
on the command line, and an installed package announcing its components through the ``fewshot.components`` entry
points, each trained and scored by ``fewshot train`` in a subprocess on real Office-Caltech SURF vectors."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fewshot
from fewshot import registry
from fewshot.config import load_config
from fewshot.errors import FewShotError

SRC = Path(__file__).resolve().parents[1] / "src"
SURF = "domain_adaptation/office_caltech10_surf"


@pytest.fixture
def tables():
    """The registry tables restored after the test (registrations are process-wide)."""
    saved = [(t, dict(dict.items(t))) for t in (registry.DATASETS, registry.MODELS, registry.METHODS,
                                                 registry.EXPERIMENTS)]
    yield
    for table, entries in saved:
        dict.clear(table)
        dict.update(table, entries)


@dataclasses.dataclass
class Opts:
    size: int = 3


def test_decorators_register_and_recipes_validate_the_options(tables):
    @fewshot.register_dataset("my_set", options=Opts)
    def build(split, root, options):
        """My own data."""

    @fewshot.register_model("my_model")
    def build_model(options, out_features):
        pass

    assert registry.DATASETS["my_set"].builder() is build and registry.DATASETS["my_set"].summary == "My own data."
    assert registry.DATASETS["my_set"].origin == __name__
    assert registry.MODELS["my_model"].options_class()() is not None  # no options: an empty dataclass
    raw = {"data": {"name": "my_set", "options": {"size": 5}}, "model": {"name": "my_model"},
           "method": {"name": "protonet"}}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"plugin_recipe_{os.getpid()}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    try:
        assert load_config(path).data.options == {"size": 5}
        with pytest.raises(FewShotError, match="unknown config key 'data.sise'"):
            load_config(path, ["data.options.sise=4"])
    finally:
        path.unlink()
    fewshot.register_dataset("my_set", build, options=Opts)  # the same registration again: fine


def test_names_are_not_silently_shadowed(tables):
    with pytest.raises(FewShotError, match="data set name 'omniglot' is already registered by fewshot "
                                           "\\(a built-in\\); choose another name, or pass replace=True"):
        fewshot.register_dataset("omniglot", lambda split, root, options: None)
    fewshot.register_method("mine", lambda model, options: None)
    with pytest.raises(FewShotError, match="method name 'mine' is already registered by"):
        fewshot.register_method("mine", lambda model, options: None)
    replacement = fewshot.register_model("conv4", lambda options, out: None, replace=True)
    assert registry.MODELS["conv4"].builder() is replacement and registry.MODELS["conv4"].origin == __name__


def test_bad_registrations_fail_clearly(tables):
    with pytest.raises(FewShotError, match="name must be letters"):
        fewshot.register_dataset("my set", lambda *a: None)
    with pytest.raises(FewShotError, match="options must be a dataclass"):
        fewshot.register_model("m2", lambda *a: None, options=dict)
    with pytest.raises(FewShotError, match="register a builder"):
        fewshot.register_method("m3", 42)
    with pytest.raises(FewShotError, match="unknown model 'nope'; known: "):
        registry.MODELS["nope"]
    fewshot.register_experiment("my_kind", "fewshot.engine.supervised:PretrainedExperiment")
    assert registry.EXPERIMENTS["my_kind"].builder().__name__ == "PretrainedExperiment"


def test_plugins_from_environment_and_command_line(tables, tmp_path, monkeypatch):
    one, two = tmp_path / "plug_one.py", tmp_path / "plug_two.py"
    one.write_text("import fewshot\nfewshot.register_model('from_env', lambda options, out: None)\n")
    two.write_text("import fewshot\nfewshot.register_model('from_flag', lambda options, out: None)\n")
    monkeypatch.setenv(registry.PLUGINS_ENV, str(one))
    rest = registry.plugins_from_command_line(["train", "r.yaml", f"--plugin={two}", "k=v", "--", "--plugin"])
    assert rest == ["train", "r.yaml", "k=v", "--", "--plugin"]
    assert "from_env" in registry.MODELS and "from_flag" in registry.MODELS
    with pytest.raises(FewShotError, match="plugin file .*missing.py does not exist"):
        registry.load_plugins([str(tmp_path / "missing.py")])
    with pytest.raises(FewShotError, match="plugin module 'no_such_module_here' is not importable"):
        registry.load_plugins(["no_such_module_here"])
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(FewShotError, match=r"broken.py failed to load: RuntimeError: boom at .*broken.py:2"):
        registry.load_plugins([str(broken)])


PLUGIN = '''
"""A user's own data set (a slice of the dslr SURF vectors, 100 dimensions) and backbone (one linear layer)."""
from dataclasses import dataclass

import torch
from torch import nn

import fewshot
from fewshot.data.download import data_root
from fewshot.data.vectors import VectorDataset, load_vectors


@dataclass
class SliceOptions:
    dims: int = 100


@fewshot.register_dataset("dslr_slice", options=SliceOptions)
def build(split, root, options):
    data = load_vectors(data_root(root) / "{surf}/dslr_SURF_L10.mat", features_key="fts", labels_key="labels",
                        normalize="l2")
    return VectorDataset(data.images[:, : options.dims], data.labels, data.class_names)


@dataclass
class LinearOptions:
    width: int = 16


class Linear(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.layer = nn.Linear(100, width)
        self.feature_dim = width

    def forward(self, x):
        return torch.relu(self.layer(x))


@fewshot.register_model("my_linear", options=LinearOptions)
def build_model(options, out_features):
    return Linear(options.width)
'''

RECIPE = """name: mine
experiment: episodic
data: {name: %s, options: {dims: 100}}
model: {name: %s, options: {width: 16}}
method: {name: protonet}
train: {way: 5, shot: 1, query: 3, iterations: 3, val_every: 3, val_episodes: 2, log_every: 1, device: cpu,
        threads: 1}
eval: {way: 5, shot: 1, query: 3, episodes: 5}
"""


def _run(args, tmp_path, data_root, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "FEWSHOT_DATA": str(data_root),
           "OMP_NUM_THREADS": "1"}
    env.pop(registry.PLUGINS_ENV, None)
    return subprocess.run([sys.executable, "-m", "fewshot", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_trains_and_scores_with_a_plugin_file(tmp_path, data_root):
    (tmp_path / "my_components.py").write_text(PLUGIN.format(surf=SURF))
    (tmp_path / "mine.yaml").write_text(RECIPE % ("dslr_slice", "my_linear"))
    out = _run(["train", "mine.yaml", "--plugin", "my_components.py", "--out", "run", "--no-progress"], tmp_path,
               data_root, [str(SRC)])
    assert out.returncode == 0, out.stderr
    assert "test accuracy (mine):" in out.stdout
    assert (tmp_path / "run" / "config.yaml").exists()
    again = _run(["eval", "run", "--episodes", "3", "--plugin", "my_components.py"], tmp_path, data_root, [str(SRC)])
    assert again.returncode == 0, again.stderr
    missing = _run(["eval", "run", "--episodes", "3"], tmp_path, data_root, [str(SRC)])
    assert missing.returncode == 2 and "unknown data.name 'dslr_slice'" in missing.stderr


def test_an_installed_plugin_package_needs_no_code_change(tmp_path, data_root):
    site = tmp_path / "site"
    (site / "myplug").mkdir(parents=True)
    (site / "myplug" / "__init__.py").write_text(PLUGIN.format(surf=SURF).replace('"dslr_slice"', '"ep_slice"')
                                                 .replace('"my_linear"', '"ep_linear"'))
    info = site / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fewshot.components]\nmyplug = myplug\n")
    (tmp_path / "mine.yaml").write_text(RECIPE % ("ep_slice", "ep_linear"))
    out = _run(["train", "mine.yaml", "--out", "run", "--no-progress"], tmp_path, data_root, [str(site), str(SRC)])
    assert out.returncode == 0, out.stderr
    assert "test accuracy (mine):" in out.stdout
    (site / "myplug" / "__init__.py").write_text(textwrap.dedent("""
        import fewshot
        fewshot.register_dataset("omniglot", lambda split, root, options: None)
    """))
    clash = _run(["train", "mine.yaml", "--out", "run2"], tmp_path, data_root, [str(site), str(SRC)])
    assert clash.returncode == 2
    assert clash.stderr.strip().splitlines() == [
        "fewshot: error: plugin 'myplug' (myplug, package myplug): data set name 'omniglot' is already registered by "
        "fewshot (a built-in); choose another name, or pass replace=True to replace it"]
