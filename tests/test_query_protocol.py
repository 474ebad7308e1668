"""The figures of results/query_protocol.json (zoo checkpoints scored at the papers' K queries per class and at our
15, with and without transductive batch norm) come from their committed per-episode results, and each checkpoint
answers the first of those episodes as committed (``bench/query_protocol.py`` wrote them)."""

import json
import sys
from pathlib import Path

import pytest

from fewshot.cli import main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root: bench/
from bench.eval_zoo import correct_counts  # noqa: E402
from bench.query_protocol import OUR_QUERY, cells, overrides, zoo_checkpoints  # noqa: E402

ROWS = json.loads((REPO / "results" / "query_protocol.json").read_text())["results"]
FIRST = 50
"""Episodes each row is scored on again (the paper-protocol rows: K queries per class)."""
TRADED = 2
"""Queries whose answer may differ on another CPU (as in tests/test_zoo.py)."""


def row_id(row: dict) -> str:
    return f"{Path(row['checkpoint']).stem} query={row['query']} transductive={row['transductive']}"


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_committed_episodes_give_the_committed_figure(row):
    from fewshot.engine.evaluate import mean_ci95

    scores = [correct / row["queries"] for correct in row["correct"]]
    assert len(scores) == row["episodes"] and row["queries"] % row["query"] == 0  # way x query
    mean, ci95 = mean_ci95(scores)
    assert mean == pytest.approx(row["accuracy"], abs=1e-6) and ci95 == pytest.approx(row["ci95"], abs=1e-6)


@pytest.mark.parametrize("row", [r for r in ROWS if r["query"] == r["shot"]], ids=row_id)
def test_each_checkpoint_answers_its_first_paper_protocol_episodes_as_committed(row, data_root, capsys):
    assert main(["eval", str(REPO / row["checkpoint"]), "--episodes", str(FIRST), "--json", "--per-episode",
                 "--data-root", str(data_root), *overrides(row)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == row["query"]
    correct = correct_counts(result["per_episode"], row["queries"])["correct"]
    committed = row["correct"][:FIRST]
    assert sum(abs(a - b) for a, b in zip(correct, committed, strict=True)) <= TRADED


def test_every_batch_statistics_zoo_checkpoint_is_measured_at_each_count_both_ways():
    names = zoo_checkpoints()
    assert "omniglot_5w1s_fomaml" in names and "omniglot_5w1s_reptile" in names  # the zoo is read, not empty
    wanted = {(c["checkpoint"], c["query"], c["transductive"]) for c in cells(names, 600)}
    assert {(c, q, t) for c, q, t in wanted if t is not None and q in (1, OUR_QUERY)}  # both ways, both counts
    assert wanted <= {(r["checkpoint"], r["query"], r["transductive"]) for r in ROWS}


def test_paired_differences_are_those_of_the_committed_episodes():
    from fewshot.engine.evaluate import mean_ci95

    rows = {(r["checkpoint"], r["query"], r["transductive"]): r for r in ROWS}
    comparisons = json.loads((REPO / "results" / "query_protocol.json").read_text())["comparisons"]
    assert len(comparisons) == sum(r["query"] != OUR_QUERY for r in ROWS)
    for c in comparisons:
        a = rows[(c["checkpoint"], c["query"], c["transductive"])]
        b = rows[(c["checkpoint"], OUR_QUERY, c["transductive"])]
        mean, ci95 = mean_ci95([x / a["queries"] - y / b["queries"] for x, y in zip(a["correct"], b["correct"])])
        assert (c["difference"], c["ci95"]) == pytest.approx((mean, ci95), abs=1e-9)
