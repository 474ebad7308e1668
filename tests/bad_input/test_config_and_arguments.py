"""Bad configs, overrides and command-line arguments: a clean error naming the problem, or the correct result."""

import json
import time

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


def _eval_run_without_last(*args: str):
    def setup(folder, data):
        run = copy_run("protonet", data, folder / "run")
        (run / "checkpoints" / "last.safetensors").unlink()
        return ["eval", str(run), "--json", "train.threads=1", *args]

    return setup


def _saved_text(folder):
    import datasets

    rows = {"sentence": ["book a flight", "a plane ticket", "will it rain", "sunny today"], "label": [0, 0, 1, 1]}
    datasets.Dataset.from_dict(rows).save_to_disk(folder / "hf")
    return folder / "hf"


BOMB = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB
"""A "billion laughs" in 9 levels of 9 aliases: a few hundred bytes that expand to 9^9 strings."""


def _strict_json_with_no_interval(folder, out):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    row = json.loads(out.splitlines()[-1], parse_constant=refuse)
    assert row["episodes"] == 1 and row["ci95"] is None and 0 <= row["accuracy"] <= 1


def _nothing_written(folder, out):
    assert not any(folder.iterdir()), sorted(p.name for p in folder.iterdir())


def _episodes(n: int):
    def check(folder, out):
        assert json.loads(out.splitlines()[-1])["episodes"] == n

    return check


def _fit_with_method(method: str):
    """``fewshot fit`` of a user's 2-class, 5-shot image folder, the default chosen by ``--method``."""
    def setup(folder, data):
        from PIL import Image, ImageDraw

        for c, name in enumerate(("circle", "bar")):
            (folder / "mine" / name).mkdir(parents=True)
            for i in range(5):
                image = Image.new("L", (28, 28), 255)
                shape = ImageDraw.Draw(image).ellipse if c == 0 else ImageDraw.Draw(image).rectangle
                shape((4 + i, 4, 20 + i, 12 + 2 * i), fill=0)
                image.save(folder / "mine" / name / f"{i}.png")
        return ["fit", str(folder / "mine"), "--out", str(folder / "clf"), "--method", method]

    return setup


def _no_classifier(folder, out):
    assert not (folder / "clf").exists()


CASES = [
    Case("fit --method with no figure at the support set's shots and classes", "config", _fit_with_method("mamlpp"),
         match=r"no zoo image model for method 'mamlpp' measured at 5 shots with 2 classes; there are .*\(or give a "
               r"checkpoint with --model\)", check=_no_classifier),
    Case("unknown override key", "config", _train_with("method.inner_stepz=2"), match="unknown config key"),
    Case("override of the wrong type", "config", _train_with("train.lr=fast"), match="train.lr must be a number"),
    Case("way larger than the classes", "config", _train_with("eval.way=5000", "train.iterations=0"),
         match="5000-way tasks need 5000 classes"),
    Case("recipe that does not exist", "config", lambda f, d: ["train", "no_such_recipe"], match="no recipe"),
    Case("validation on characters meta-trained on (trainval)", "config",
         _train_with("data.options.trainval=true", "train.iterations=2", "train.val_every=1", "train.val_episodes=2"),
         match=r"trainval meta-trains on the validation characters.*train\.val_episodes=0"),
    Case("negative annealing of the inverse schedule", "config", _train_with("train.anneal_alpha=-1"),
         match=r"train\.anneal_alpha must be >= 0, got -1"),
    Case("Reptile's Adam state neither task nor shared", "config",
         lambda f, d: ["train", "omniglot_5w1s_reptile", "--out", "run", "--no-progress", "method.adam_state=global"],
         match=r"adam_state must be one of \('task', 'shared'\), got 'global'"),
    Case("mirror into a folder of the user's files", "config",
         lambda f, d: ((f / "mine").mkdir(), (f / "mine" / "notes.txt").write_text("x"),
                       [*TRAIN, "--mirror", "mine"])[-1],
         match="mirror mine is not empty and is not a fewshot mirror"),
    Case("mirror inside the run folder", "config", lambda f, d: [*TRAIN, "--mirror", "run/copy"],
         match="must be outside the run folder"),
    Case("keeping 2 best checkpoints of a run with no test episodes", "config",
         lambda f, d: ["train", "mnist_usps_dann", "--out", "run", "--no-progress", "train.keep_best=2",
                       "--data-root", "nowhere"],  # refused before any data is read
         match=r"train\.keep_best=2 keeps checkpoints for `fewshot eval --ensemble`.*a domain_adaptation run keeps "
               r"only its best: set train\.keep_best=1", check=_nothing_written),
    Case("the trained rows for more classes than trained", "config",
         lambda f, d: ["eval", str(copy_run("maml", d, f / "run")), "--json", "--episodes", "2", "train.threads=1",
                       "eval.way=7", "method.head_init=rows"],
         match=r"method\.head_init=rows starts a task from the trained head's first rows, but this 7-way task has "
               r"more classes than its 5: use prototypes or zeros"),
    Case("image column of a text data set", "config",
         lambda f, d: ["fit", str(_saved_text(f)), "--out", "clf", "--image-column", "sentence"],
         match=r"column 'sentence' is not of the Image type"),
    Case("YAML that is a list", "config", _yaml("- a\n- b\n"), match="must contain a mapping"),
    Case("YAML syntax error", "config", _yaml("name: [unclosed\n"), match="not valid YAML"),
    Case("eval of a missing run", "config", lambda f, d: ["eval", "nowhere"], match="no checkpoint"),
    Case("eval of one episode (no interval: null, not NaN)", "arguments", _eval_run("--episodes", "1"), expect="ok",
         check=_strict_json_with_no_interval),
    Case("eval of 3 episodes", "arguments", _eval_run("--episodes", "3"), expect="ok", check=_episodes(3),
         may_change=("run/checkpoints/eval/*",)),
    # values the dataclasses refuse, naming the key
    Case("no queries for a method that trains on them", "config", _train_with("train.query=0"),
         match=r"train\.query is 0 but method 'protonet' trains on query examples"),
    Case("negative thread count", "config", _train_with("train.threads=-1"), match=r"train\.threads must be >= 0"),
    Case("negative weight decay", "config", _train_with("train.weight_decay=-1"),
         match=r"train\.weight_decay must be >= 0"),
    Case("absurd image size", "config", _train_with("data.size=100000"), match=r"data\.size must be in 8 \.\. 105"),
    Case("absurd model width", "config", _train_with("model.hidden=100000000"),
         match=r"model\.hidden must be in 1 \.\. 1024"),
    Case("gradient clipping of NaN", "config", _train_with("train.grad_clip=nan"),
         match=r"train\.grad_clip must be a finite number"),
    Case("infinite learning rate", "config", _train_with("train.lr=inf"), match=r"train\.lr must be a finite number"),
    Case("NaN in a method option", "config",
         lambda f, d: ["train", "omniglot_5w1s_maml", "method.inner_lr=.nan", "--out", "run", "--no-progress"],
         match=r"method\.inner_lr must be a finite number"),
    Case("negative seed", "config", _train_with("train.seed=-1"), match=r"train\.seed must be in 0 \.\. 4294967295"),
    Case("seed beyond 64 bits", "config", _train_with("train.seed=100000000000000000000"),
         match=r"train\.seed must be in 0 \.\. 4294967295"),
    Case("override that is not valid YAML", "config", _train_with("train.lr=[1"),
         match=r"override 'train\.lr=\[1' is not valid YAML"),
    Case("recipe that is not UTF-8", "config", _yaml(b"name: caf\xe9\ntrain:\n  iterations: 2\n"),
         match=r"recipe\.yaml is not UTF-8 text"),
    Case("recipe with a YAML alias bomb", "config", _yaml(BOMB), match=r"uses the YAML alias \*a", timeout=60),
    Case("recipe nested thousands deep", "config", _yaml("train: " + "[" * 5000 + "]" * 5000 + "\n"),
         match=r"nested too deeply"),
    Case("recipe keys that are not words", "config", _yaml("train:\n  1: 2\n  zz: 3\n"),
         match=r"train has a key that is not a word: 1"),
    # fewshot eval's arguments
    Case("eval of 0 episodes", "arguments", _eval_run("--episodes", "0"),
         match=r"number of test episodes must be >= 1, got 0"),
    Case("eval of -5 episodes", "arguments", _eval_run("--episodes", "-5"),
         match=r"number of test episodes must be >= 1, got -5"),
    Case("eval of 'many' episodes", "arguments", _eval_run("--episodes", "many"),
         match=r"argument --episodes: invalid int value: 'many'"),
    Case("eval with no queries", "arguments", _eval_run("eval.query=0"), match=r"eval\.query must be >= 1, got 0"),
    Case("eval with a negative seed", "arguments", _eval_run("eval.seed=-1"), match=r"eval\.seed must be in 0"),
    Case("eval of a split that does not exist", "arguments", _eval_run("--split", "nonsense"),
         match=r"unknown split 'nonsense'"),
    Case("eval of a split that is a path", "arguments", _eval_run("--split", "../../elsewhere"),
         match=r"--split must be a split name like test or val, got '\.\./\.\./elsewhere'"),
    Case("eval of a checkpoint the run does not have", "arguments", _eval_run_without_last("--checkpoint", "last"),
         match=r"no (last )?checkpoint"),
    Case("eval of a checkpoint kind that does not exist", "arguments", _eval_run("--checkpoint", "middle"),
         match=r"argument --checkpoint: invalid choice: 'middle'"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, data_root):
    judge(case, run_case(case, tmp_path / "case", data_root), tmp_path / "case")


def test_alias_bomb_is_refused_fast(tmp_path):
    """The alias bomb took 28 s and 2.5 GB to expand; refused at the first alias, it takes milliseconds."""
    from fewshot.config import load_raw
    from fewshot.errors import FewShotError

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(FewShotError, match="alias"):
        load_raw(path)
    assert time.perf_counter() - start < 2
