"""`train.keep_best` and `fewshot eval --ensemble K`: a run keeps the weights of its K best validations (through a
resume and into its mirror), and the ensemble predicts the class of highest mean probability over its members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fewshot.cli import main
from fewshot.config import RunConfig, apply_overrides, load_raw
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.ensemble import Ensemble, keep_top, prune_top, rank
from fewshot.engine.experiment import build_experiment
from fewshot.engine.mirror import Mirror
from fewshot.errors import FewShotError

TINY = ["model.hidden=16", "train.meta_batch=2", "method.inner_steps=2", "method.inner_batch=5",
        "method.test_inner_steps=2", "train.val_every=2", "train.val_episodes=6", "train.checkpoint_every=2",
        "train.log_every=1", "eval.episodes=4", "train.threads=1", "train.iterations=14", "train.keep_best=3"]


def _train(data_root: Path, *args: str) -> int:
    return main(["train", "omniglot_5w1s_reptile", *TINY, "--data-root", str(data_root), "--no-progress", "--no-test",
                 *args])


def _kept(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_checkpoint(p).weights for p in sorted((run / "checkpoints" / "top").glob("*.safetensors"))}


def _validations(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["accuracy"]) for r in rows if r.get("phase") == "val"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rank_keeps_the_best_and_the_earlier_of_a_tie():
    top: list = []
    for iteration, accuracy in [(2, 0.5), (4, 0.7), (6, 0.5), (8, 0.9), (10, 0.6)]:
        top = rank(top, iteration, accuracy, 3)
    assert top == [[8, 0.9], [4, 0.7], [10, 0.6]]
    assert rank([[2, 0.5], [4, 0.5]], 6, 0.5, 2) == [[2, 0.5], [4, 0.5]]  # a tie does not displace an earlier one
    assert rank([[4, 0.5]], 4, 0.8, 2) == [[4, 0.8]]  # a validation redone after a resume replaces its entry


def test_keep_best_is_a_count_of_at_least_one():
    raw = load_raw("omniglot_5w1s_mamlpp")
    assert RunConfig.from_dict(raw).train.keep_best == 5  # the MAML++ recipes keep their 5 best, as the paper scores
    with pytest.raises(FewShotError, match="train.keep_best must be >= 1, got 0"):
        RunConfig.from_dict(apply_overrides(raw, ["train.keep_best=0"]))


def test_a_dropped_file_goes_only_once_a_last_checkpoint_stops_listing_it(tmp_path):
    """Between a validation and the next `last` checkpoint the saved list still names every kept file: a run that
    dies there leaves a `last` whose files all exist."""
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")

    top: list = []
    for iteration, accuracy in [(2, 0.5), (4, 0.6), (6, 0.7)]:
        top = keep_top(tmp_path, top, iteration, accuracy, 2, write)
    assert top == [[6, 0.7], [4, 0.6]] and (tmp_path / "top" / "2.safetensors").is_file()
    prune_top(tmp_path, top)
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == ["4.safetensors", "6.safetensors"]
    assert keep_top(tmp_path, top, 8, 0.9, 1, write) == [] and (tmp_path / "top" / "4.safetensors").is_file()


def test_a_mirror_whose_copy_failed_keeps_the_files_its_last_lists(tmp_path):
    run, target = tmp_path / "run", tmp_path / "share"
    (run / "checkpoints" / "top").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    for name in ("last.safetensors", "top/2.safetensors", "top/4.safetensors"):
        (run / "checkpoints" / name).write_bytes(b"weights")
    copy = Mirror(run, target)
    copy.sync_checkpoint()
    assert sorted(p.name for p in (target / "checkpoints" / "top").iterdir()) == ["2.safetensors", "4.safetensors"]
    (run / "checkpoints" / "top" / "2.safetensors").unlink()  # dropped by the run, whose new last is not copied:
    (target / "config.yaml").unlink()
    (target / "config.yaml").mkdir()  # a folder where a file goes: the copy fails
    copy.sync_checkpoint()
    assert copy.failed and (target / "checkpoints" / "top" / "2.safetensors").is_file()
    (target / "config.yaml").rmdir()
    copy.sync_checkpoint()  # copied again: now the stale file goes
    assert not copy.failed and not (target / "checkpoints" / "top" / "2.safetensors").exists()


def test_a_run_keeps_its_best_validations_through_a_resume_and_in_its_mirror(tmp_path, data_root):
    """The kept files are the 3 best validations of the run's log; a run stopped and resumed keeps the same files,
    bit-identical, as one never stopped; its mirror holds exactly those; the best of them is best.safetensors."""
    ref = tmp_path / "ref"
    assert _train(data_root, "--out", str(ref)) == 0
    expected = sorted(_validations(ref), key=lambda v: (-v[1], v[0]))[:3]
    last = load_checkpoint(ref / "checkpoints" / "last.safetensors")
    assert last.extra["top_validations"] == [list(v) for v in expected]
    kept = _kept(ref)
    assert sorted(kept) == sorted(f"{i}.safetensors" for i, _ in expected)
    best = load_checkpoint(ref / "checkpoints" / "best.safetensors").weights
    assert _same(kept[f"{expected[0][0]}.safetensors"], best)
    assert not _same(kept[f"{expected[0][0]}.safetensors"], kept[f"{expected[1][0]}.safetensors"])
    listed = ", ".join(f"{i} ({100 * a:.2f}%)" for i, a in expected)
    assert f"- **kept_best**: {listed}" in (ref / "report.md").read_text()

    run, mirror = tmp_path / "run", tmp_path / "keep"
    assert _train(data_root, "--out", str(run), "--mirror", str(mirror), "--stop-after", "7") == 0
    assert _train(data_root, "--out", str(run), "--mirror", str(mirror), "--resume") == 0
    resumed = _kept(run)
    assert resumed.keys() == kept.keys() and all(_same(resumed[k], kept[k]) for k in kept)
    assert _kept(mirror).keys() == kept.keys()

    # a resume may change train.keep_best; 1 keeps the best alone (the kept files go at the next validation)
    assert main(["train", str(run), "--resume", "train.iterations=16", "train.keep_best=1", "--force",
                 "--data-root", str(data_root), "--no-progress", "--no-test"]) == 0
    assert _kept(run) == {} and load_checkpoint(run / "checkpoints" / "last.safetensors").extra["top_validations"] == []


def test_ensemble_predicts_the_mean_probability_and_leaves_the_weights(data_root):
    config = RunConfig.from_dict(apply_overrides(load_raw("omniglot_5w1s_protonet"), ["model.hidden=16"]))
    experiment = build_experiment(config, str(data_root))
    method = experiment.method.eval()
    first = {k: v.clone() for k, v in method.state_dict().items()}
    second = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in first.items()}
    from fewshot.data.tasks import TaskSampler, episode_range

    episode = episode_range(TaskSampler(experiment.dataset("test"), 5, 1, 3, seed=0), 0, 2)
    logits = []
    for weights in (first, second):
        method.load_state_dict(weights)
        logits.append(method.predict(episode))
    alone = [x.softmax(-1) for x in logits]
    method.load_state_dict(first)
    both = Ensemble(method, [first, second]).predict(episode)
    assert torch.allclose(both.exp(), (alone[0] + alone[1]) / 2, atol=1e-6)
    assert torch.allclose(Ensemble(method, [first, second], "logits").predict(episode), (logits[0] + logits[1]) / 2,
                          atol=1e-5)  # MAML++'s code averages the logits
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the members differ, so the mean is a real mixture
    assert _same(method.state_dict(), first)  # the method's own weights are back
    twice = Ensemble(method, [second, second]).predict(episode)
    assert torch.equal(twice.argmax(-1), alone[1].argmax(-1))
    with pytest.raises(FewShotError, match="at least one"):
        Ensemble(method, [])
    with pytest.raises(FewShotError, match="averages one of"):
        Ensemble(method, [first], "votes")


def test_eval_ensemble_scores_the_kept_checkpoints_and_records_them_apart(tmp_path, data_root, capsys):
    """`fewshot eval --ensemble 3`: the 3 kept checkpoints, listed best first; its records (mean probability, mean
    logits) are its own (top3_..., top3logits_...), and the best checkpoint's figure is unchanged by it."""
    run = tmp_path / "run"
    assert _train(data_root, "--out", str(run)) == 0
    capsys.readouterr()
    scoring = ["--json", "--episodes", "4", "--data-root", str(data_root), "train.threads=1"]
    assert main(["eval", str(run), *scoring]) == 0
    best = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--ensemble", "3", *scoring]) == 0
    together = json.loads(capsys.readouterr().out)
    top = load_checkpoint(run / "checkpoints" / "last.safetensors").extra["top_validations"]
    assert [Path(p).name for p in together["checkpoints"]] == [f"{i}.safetensors" for i, _ in top]
    assert together["average"] == "probabilities"
    assert main(["eval", str(run), "--ensemble", "3", "--average", "logits", *scoring]) == 0
    assert json.loads(capsys.readouterr().out)["average"] == "logits"
    records = sorted(p.name for p in (run / "checkpoints" / "eval").glob("*.json"))
    assert records == ["best_test_5w1s15q_seed0.json", "top3_test_5w1s15q_seed0.json",
                       "top3logits_test_5w1s15q_seed0.json"]
    assert main(["eval", str(run), *scoring]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == best["accuracy"]
    shutil.rmtree(run / "checkpoints" / "eval")
    assert main(["eval", str(run), "--ensemble", "3", *scoring]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == together["accuracy"]  # scored anew: the same
