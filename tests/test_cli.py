"""``fewshot`` end to end on real Omniglot with tiny budgets."""

import json

import pytest

from fewshot.cli import main
from fewshot.recipes import recipe_names

TINY = ["train.iterations=4", "train.meta_batch=2", "train.val_every=2", "train.val_episodes=4",
        "train.checkpoint_every=2", "eval.episodes=8", "model.hidden=16", "train.threads=1"]


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in recipe_names():
        assert name in out
    for way, shot in [(5, 1), (5, 5), (20, 1), (20, 5)]:
        for method in ("maml", "fomaml", "reptile", "protonet"):
            assert f"omniglot_{way}w{shot}s_{method}" in out


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["recipes"], ["compare"], ["export"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fewshot" in capsys.readouterr().out


def test_version(capsys):
    import fewshot

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"fewshot {fewshot.__version__}\n"


def test_train_eval_resume(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    args = ["--out", str(run), "--data-root", str(data_root), "--no-progress"]
    assert main(["train", "omniglot_5w1s_fomaml", *TINY, "--stop-after", "2", *args]) == 0
    assert "test accuracy" not in capsys.readouterr().out  # stopped early: no test yet
    assert main(["train", str(run), "--resume", "train.iterations=4", *args[2:]]) == 0  # overrides after options
    out = capsys.readouterr().out
    assert "test accuracy (omniglot_5w1s_fomaml):" in out and "(8 episodes)" in out
    assert (run / "checkpoints" / "eval" / "best_test_5w1s15q_seed0.json").is_file()  # the test's record
    assert main(["eval", str(run), "--episodes", "8", "--json", "--fresh", "--data-root", str(data_root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "ci95", "episodes", "way", "shot", "method"} <= result.keys()
    assert result["episodes"] == 8 and result["way"] == 5 and result["method"] == "maml"
    saved = json.loads((run / "test.json").read_text())
    assert saved["accuracy"] == pytest.approx(result["accuracy"])  # eval reproduces the training run's figure
    assert main(["eval", str(run), "--episodes", "8", "--data-root", str(data_root)]) == 0
    out, err = capsys.readouterr()
    assert "% ± " in out and "after 8 recorded episodes" in err  # nothing left to score: the record answers
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes((run / "checkpoints" / "best.safetensors").read_bytes())
    assert main(["eval", str(loose), "--episodes", "8", "--data-root", str(data_root)]) == 0
    assert "recorded" not in capsys.readouterr().err and not (tmp_path / "eval").exists()
    assert main(["eval", str(loose), "--episodes", "8", "--json", "--per-episode", "--data-root", str(data_root)]) == 0
    each = json.loads(capsys.readouterr().out)
    assert len(each["per_episode"]) == 8 and sum(each["per_episode"]) / 8 == pytest.approx(result["accuracy"])
    assert main(["eval", str(loose), "--per-episode", "--data-root", str(data_root)]) == 2  # nowhere to print them
    err = capsys.readouterr().err
    assert err == "fewshot: error: --per-episode adds each episode's accuracy to the JSON output: add --json\n"


def test_errors_are_one_line(tmp_path, data_root, capsys):
    assert main(["train", "omniglot_5w1s_maml", "method.inner_stepz=2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewshot: error: unknown config key 'method.inner_stepz'") and "Traceback" not in err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "omniglot_5w1s_maml", "train.way=5000", "eval.way=5000", *TINY[:1],
                 "--out", str(tmp_path / "y"), "--data-root", str(data_root), "--no-progress"]) == 2
    assert "5000-way tasks need 5000 classes but the split has only 4400" in capsys.readouterr().err


def test_zero_iterations_scores_the_initial_weights(tmp_path, data_root, capsys):
    run = tmp_path / "untrained"
    overrides = [o for o in TINY if not o.startswith("train.iterations")] + ["train.iterations=0"]
    assert main(["train", "omniglot_5w1s_protonet", *overrides, "--out", str(run), "--data-root", str(data_root),
                 "--no-progress"]) == 0
    assert "test accuracy (omniglot_5w1s_protonet):" in capsys.readouterr().out
    assert (run / "checkpoints" / "last.safetensors").exists() and (run / "checkpoints" / "best.safetensors").exists()
    assert main(["train", "omniglot_5w1s_protonet", *overrides, "--out", str(run), "--data-root", str(data_root),
                 "--no-progress"]) == 2  # the folder holds a run now
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "omniglot_5w1s_protonet", "train.iterations=-1", "--out", str(tmp_path / "z")]) == 2
    assert "train.iterations must be >= 0" in capsys.readouterr().err


def test_compare_pairs_episodes_of_runs_scored_on_the_same_tasks(tmp_path, data_root, capsys):
    """Two trained runs and a 5-shot evaluation of one: compare pairs the 1-shot records episode by episode and
    refuses runs scored on different tasks."""
    from fewshot.engine.compare import compare, load_scores
    from fewshot.engine.evaluate import mean_ci95
    from fewshot.engine.records import read_record, record_tasks
    from fewshot.errors import FewShotError

    runs = {}
    for name, recipe in (("proto", "omniglot_5w1s_protonet"), ("fomaml", "omniglot_5w1s_fomaml")):
        runs[name] = tmp_path / name  # the ProtoNet recipe uses Vinyals' split: scored on other tasks unless told
        assert main(["train", recipe, *TINY, "data.options.scheme=maml", "--out", str(runs[name]),
                     "--data-root", str(data_root), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs["proto"]), str(runs["fomaml"]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run"] for r in rows] == ["proto", "fomaml"] and rows[0]["episodes"] == 8
    a, b = (json.loads((runs[n] / "checkpoints/eval/best_test_5w1s15q_seed0.json").read_text())["scores"]
            for n in ("proto", "fomaml"))
    mean, ci = mean_ci95([x - y for x, y in zip(b, a)])
    assert rows[1]["difference"] == pytest.approx(mean) and rows[1]["difference_ci95"] == pytest.approx(ci)
    assert rows[1]["accuracy"] - rows[0]["accuracy"] == pytest.approx(mean)
    assert main(["compare", str(runs["proto"]), str(runs["fomaml"])]) == 0
    assert capsys.readouterr().out.startswith("omniglot, 5-way 1-shot, 15 queries per class, test split, seed 0: "
                                              "8 episodes shared by all runs\n")
    for name in ("proto", "fomaml"):  # one query per class: the record's own file, and the header says "query"
        assert main(["eval", str(runs[name]), "--episodes", "4", "eval.query=1", "--json",
                     "--data-root", str(data_root)]) == 0
    capsys.readouterr()
    assert main(["compare", *(str(runs[n] / "checkpoints/eval/best_test_5w1s1q_seed0.json")
                              for n in ("proto", "fomaml"))]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("omniglot, 5-way 1-shot, 1 query per class, test split, seed 0: 4 episodes shared by "
                              "all runs\nproto/best_test_5w1s1q_seed0 ")  # a record file is named by its run too
    assert "\nfomaml/best_test_5w1s1q_seed0 " in printed

    assert main(["eval", str(runs["fomaml"]), "--episodes", "4", "eval.shot=5", "--json",
                 "--data-root", str(data_root)]) == 0  # a second record, of 5-shot tasks
    five_shot = tmp_path / "fomaml" / "checkpoints" / "eval" / "best_test_5w5s15q_seed0.json"
    with pytest.raises(FewShotError, match="not scored on the same tasks"):
        compare([load_scores(runs["proto"]), load_scores(five_shot)])
    assert len(load_scores(runs["fomaml"])) == 3  # a run folder offers every setting it was scored on (3 here)
    assert main(["compare", str(runs["proto"]), str(tmp_path / "nowhere")]) == 2

    # meta-trained on train + validation characters: another training split, the same test tasks
    runs["trainval"] = tmp_path / "trainval"
    assert main(["train", "omniglot_5w1s_protonet", *TINY, "data.options.scheme=maml", "data.options.trainval=true",
                 "train.val_episodes=0", "--out", str(runs["trainval"]), "--data-root", str(data_root),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs["proto"]), str(runs["trainval"]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run"] for r in rows] == ["proto", "trainval"] and rows[1]["episodes"] == 8
    assert rows[1]["data"]["options"] == rows[0]["data"]["options"] and "trainval" not in rows[1]["data"]["options"]
    identity, _ = read_record(runs["trainval"] / "checkpoints/eval/best_test_5w1s15q_seed0.json")
    options = identity["config"]["data"]["options"]
    assert options["trainval"] is True and record_tasks(identity)["data"]["options"] == {
        k: v for k, v in options.items() if k != "trainval"}
    options["resize"] = "lanczos"  # an option that changes the test images still tells the tasks apart
    assert record_tasks(identity)["data"]["options"]["resize"] == "lanczos"


def test_each_command_reads_a_checkpoint_once_and_train_tests_what_it_trained(tmp_path, data_root, capsys,
                                                                                 monkeypatch):
    """``fewshot train`` scores the experiment it holds (its best weights, read once) and gets the figure ``fewshot
    eval`` gets from the file; Reptile adapts with random mini-batches, so this also needs the fixed random state."""
    import fewshot.engine.checkpoint as checkpoint

    reads = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: reads.append(path.name) or real(path))
    import fewshot.engine.train as engine_train

    monkeypatch.setattr(engine_train, "load_checkpoint", checkpoint.load_checkpoint)
    run = tmp_path / "run"
    tiny = ["model.hidden=16", "train.meta_batch=2", "method.inner_steps=2", "method.inner_batch=5",
            "method.test_inner_steps=3", "train.iterations=4", "train.val_every=2", "train.val_episodes=2",
            "eval.episodes=6", "eval.shot=3", "method.test_inner_batch=5", "train.threads=1",
            "data.options.rotations=false"]
    args = ["--out", str(run), "--data-root", str(data_root), "--no-progress"]
    assert main(["train", "omniglot_5w1s_reptile", *tiny, "--stop-after", "2", *args]) == 0
    assert reads == []  # a fresh run reads no checkpoint
    assert main(["train", str(run), "--resume", *args[2:]]) == 0
    assert reads == ["last.safetensors", "best.safetensors"]  # resume once, test once
    trained = json.loads((run / "test.json").read_text())["accuracy"]
    reads.clear()
    assert main(["eval", str(run), "--fresh", "--json", "--data-root", str(data_root)]) == 0
    assert reads == ["best.safetensors"]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] == trained


def test_export_writes_a_runs_model_without_its_training_state(tmp_path, data_root, capsys):
    """`fewshot export RUN --out FILE`: the best model, scoring as the run does; refusals leave files as they were."""
    from fewshot.engine.checkpoint import load_checkpoint

    run, model = tmp_path / "run", tmp_path / "shared" / "model.safetensors"
    assert main(["train", "omniglot_5w1s_protonet", *TINY, "train.way=5", "--out", str(run), "--data-root",
                 str(data_root), "--no-progress", "--no-test"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert "omniglot_5w1s_protonet at iteration" in capsys.readouterr().out
    best, exported = load_checkpoint(run / "checkpoints" / "best.safetensors"), load_checkpoint(model)
    assert best.optimizer is not None and exported.optimizer is None and exported.rng is None
    assert exported.weights.keys() == best.weights.keys()
    assert all(exported.weights[k].equal(best.weights[k]) for k in best.weights)
    assert (exported.iteration, exported.config) == (best.iteration, best.config)
    assert model.stat().st_size < (run / "checkpoints" / "best.safetensors").stat().st_size
    scores = []
    for what in (run, model):
        assert main(["eval", str(what), "--episodes", "6", "--json", "--fresh", "--data-root", str(data_root)]) == 0
        scores.append(json.loads(capsys.readouterr().out)["accuracy"])
    assert scores[0] == scores[1]

    before = model.read_bytes()
    refused = [(["--out", str(model)], "exists; pass --force"),
               ([], "give --out FILE.safetensors"),
               (["--out", str(tmp_path / "model.pt")], "give --out FILE.safetensors"),
               (["--out", str(run / "checkpoints" / "model.safetensors")], "in the run's checkpoints/ folder"),
               (["--out", str(model), "--onnx"], "is a training run; --onnx exports a classifier folder")]
    for extra, said in refused:
        assert main(["export", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert model.read_bytes() == before and not (run / "checkpoints" / "model.safetensors").exists()
    assert main(["export", str(tmp_path), "--out", str(model)]) == 2
    assert "is not a run folder (no checkpoints/)" in capsys.readouterr().err
    assert main(["export", str(run), "--checkpoint", "last", "--out", str(model), "--force"]) == 0
    assert load_checkpoint(model).iteration == 4
