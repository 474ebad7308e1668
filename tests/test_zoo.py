"""The shipped checkpoints reproduce the figures committed in results/omniglot.json."""

import json
from pathlib import Path

import pytest

from fewshot.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = json.loads((REPO / "results" / "omniglot.json").read_text())["results"]


def test_every_zoo_checkpoint_has_a_committed_figure():
    shipped = {p.name for p in (REPO / "zoo").glob("*.safetensors")}
    assert shipped and shipped == {Path(r["checkpoint"]).name for r in COMMITTED}


def test_eval_reproduces_committed_protonet_figure(data_root, capsys):
    row = next(r for r in COMMITTED if r["recipe"] == "omniglot_5w1s_protonet")
    assert main(["eval", str(REPO / row["checkpoint"]), "--episodes", str(row["episodes"]), "--json",
                 "--data-root", str(data_root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 600
    assert result["accuracy"] == pytest.approx(row["accuracy"], abs=1e-6)
    assert result["ci95"] == pytest.approx(row["ci95"], abs=1e-6)
