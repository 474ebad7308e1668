"""Bad configs, overrides and command-line arguments: a clean error naming the problem, or the correct result."""

import json

import pytest
from bad_input_harness import Case, copy_run, judge, run_case

TRAIN = ["train", "omniglot_5w1s_protonet", "--out", "run", "--no-progress"]


def _train_with(*overrides: str):
    return lambda folder, data: [*TRAIN, *overrides]


def _yaml(text: str | bytes, *extra: str):
    def setup(folder, data):
        path = folder / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", str(path), "--out", "run", "--no-progress", *extra]

    return setup


def _eval_run(*args: str):
    return lambda folder, data: [
        "eval", str(copy_run("protonet", data, folder / "run")), "--json", "train.threads=1", *args]


def _episodes(n: int):
    def check(folder, out):
        assert json.loads(out.splitlines()[-1])["episodes"] == n

    return check


CASES = [
    Case("unknown override key", "config", _train_with("method.inner_stepz=2"), match="unknown config key"),
    Case("override of the wrong type", "config", _train_with("train.lr=fast"), match="train.lr must be a number"),
    Case("way larger than the classes", "config", _train_with("eval.way=5000", "train.iterations=0"),
         match="5000-way tasks need 5000 classes"),
    Case("recipe that does not exist", "config", lambda f, d: ["train", "no_such_recipe"], match="no recipe"),
    Case("YAML that is a list", "config", _yaml("- a\n- b\n"), match="must contain a mapping"),
    Case("YAML syntax error", "config", _yaml("name: [unclosed\n"), match="not valid YAML"),
    Case("eval of a missing run", "config", lambda f, d: ["eval", "nowhere"], match="no checkpoint"),
    Case("eval of 3 episodes", "arguments", _eval_run("--episodes", "3"), expect="ok", check=_episodes(3),
         may_change=("run/checkpoints/eval/*",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, data_root):
    judge(case, run_case(case, tmp_path / "case", data_root), tmp_path / "case")
