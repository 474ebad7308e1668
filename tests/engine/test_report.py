"""``fewshot report``: one self-contained HTML page per run, on a real short ProtoNet run on Omniglot; its numbers are
the run's records', its confusion data count the evaluated queries, class names are escaped, and it renders in a
real headless browser (chromium; skipped only where chromium is absent and $FEWSHOT_REQUIRE_BROWSER is unset)."""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from fewshot.cli import main
from fewshot.engine.html_report import pct
from fewshot.engine.logs import describe_machine, other_machines
from fewshot.engine.predictions import predictions_path, read_predictions, write_predictions
from fewshot.engine.records import read_record
from fewshot.engine.report import MARKER

TINY = ["train.iterations=4", "train.meta_batch=2", "train.val_every=2", "train.val_episodes=4",
        "train.checkpoint_every=2", "train.log_every=1", "eval.episodes=8", "model.hidden=16", "train.threads=1"]
RECORD = "checkpoints/eval/best_test_5w1s15q_seed0.json"
SECTIONS = ("summary", "curves", "shots", "episodes", "confusion", "config", "environment")


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert found, "the page embeds no report data"
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A 4-iteration ProtoNet run (5-way training episodes) with an 8-episode test, as ``fewshot train`` leaves it."""
    run = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "omniglot_5w1s_protonet", *TINY, "train.way=5", "--out", str(run),
                 "--data-root", str(data_root), "--no-progress"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_train_writes_the_page_with_the_runs_numbers(trained):
    page = (trained / "report.html").read_text()
    assert page.startswith(MARKER + "\n<!DOCTYPE html>")
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing loaded from elsewhere
    assert page.count('src="data:image/png;base64,') >= 3  # curves, histogram, confusion matrix

    data = page_data(page)
    test = json.loads((trained / "test.json").read_text())
    identity, scores = read_record(trained / RECORD)
    ev = data["evaluation"]
    assert ev["scores"] == scores and ev["episodes"] == test["episodes"] == 8
    assert ev["accuracy"] == pytest.approx(test["accuracy"], abs=1e-12)
    assert ev["ci95"] == pytest.approx(test["ci95"], abs=1e-12)
    assert html.escape(pct(test["accuracy"], test["ci95"])) in page  # the figure test.json holds, on the page
    assert data["summary"]["iterations_done"] == 4 and data["summary"]["status"] == "finished"
    val = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in val if r["phase"] == "val"), key=lambda r: r["accuracy"])
    assert data["summary"]["best_val_accuracy"] == best["accuracy"]

    conf = data["confusion"]
    queries = 8 * 5 * 15
    assert conf["queries"] == queries == sum(n for _, _, n in conf["counts"]) == sum(n for _, n, _ in conf["per_class"])
    assert conf["correct"] == sum(n for t, p, n in conf["counts"] if t == p)
    assert conf["correct"] / queries == pytest.approx(test["accuracy"], abs=1e-6)  # scores are float32 means
    kept, names = read_predictions(trained / RECORD, identity, scores)
    assert {int(c) for c in conf["names"]} == {c for e in kept for c in e["classes"]}
    assert all("/" in name for name in conf["names"].values())  # Omniglot's own names, alphabet/character
    assert data["environment"]["torch"] and data["environment"]["world_size"] == 1
    (segment,) = data["segments"]  # one `fewshot train`, iterations 0-4, on this machine
    assert (segment["from"], segment["to"]) == (0, 4)
    assert segment["machine"]["cpu"] == data["environment"]["cpu"] and segment["machine"]["device"] == "cpu"
    assert "Where it trained" in page and "0-4" in page


def test_class_names_are_escaped(run, tmp_path, capsys):
    identity, scores = read_record(run / RECORD)
    kept, names = read_predictions(run / RECORD, identity, scores)
    evil = '<img src=x onerror="alert(1)">&$x$'
    class_names = {int(c): f"{evil}{c}" for c in names}
    write_predictions(run / RECORD, identity, kept, class_names)
    out = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<img src=x" not in page and 'onerror="alert' not in page
    assert html.escape(evil) in page  # the tables show the names, escaped
    assert evil in "".join(page_data(page)["confusion"]["names"].values())


def test_shots_are_scored_through_the_records_once(run, data_root, monkeypatch, capsys):
    assert main(["report", str(run), "--shots", "1,2", "--episodes", "4", "--data-root", str(data_root)]) == 0
    err = capsys.readouterr().err
    assert "2-shot:" in err and "1-shot:" not in err  # 1-shot: the run's own 8-episode record serves
    assert (run / "checkpoints/eval/best_test_5w2s15q_seed0.json").is_file()
    assert (run / "checkpoints/eval/predictions/best_test_5w2s15q_seed0.json").is_file()
    shots = page_data((run / "report.html").read_text())["shots"]
    assert [(r["shot"], r["episodes"]) for r in shots] == [(1, 8), (2, 4)]
    _, two_shot = read_record(run / "checkpoints/eval/best_test_5w2s15q_seed0.json")
    assert shots[1]["accuracy"] == pytest.approx(sum(two_shot) / 4, abs=1e-12)

    import fewshot.engine.scoring as scoring

    monkeypatch.setattr(scoring, "score", lambda *a, **k: pytest.fail("scored again"))
    assert main(["report", str(run), "--shots", "1,2", "--episodes", "4"]) == 0  # both recorded: nothing scored
    assert main(["report", str(run), "--shots", "1,x"]) == 2
    assert "--shots takes comma-separated counts" in capsys.readouterr().err


def test_predictions_follow_their_record(run, data_root, capsys):
    """A continued evaluation extends the predictions with its record; one continued from a record without
    predictions keeps none (the page says so) until scored afresh."""
    identity, _ = read_record(run / RECORD)
    assert main(["eval", str(run), "--episodes", "10", "--json", "--data-root", str(data_root)]) == 0
    identity, scores = read_record(run / RECORD)
    kept, _ = read_predictions(run / RECORD, identity, scores)
    assert len(scores) == len(kept) == 10
    assert read_predictions(run / RECORD, identity, [1 - s for s in scores]) is None  # not these scores

    predictions_path(run / RECORD).unlink()
    assert main(["eval", str(run), "--episodes", "12", "--json", "--data-root", str(data_root)]) == 0
    assert not predictions_path(run / RECORD).exists()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page_data(page)["confusion"] is None and "kept no per-query predictions" in page
    assert main(["eval", str(run), "--episodes", "12", "--fresh", "--json", "--data-root", str(data_root)]) == 0
    assert main(["report", str(run)]) == 0
    assert page_data((run / "report.html").read_text())["confusion"]["queries"] == 12 * 75


def test_never_overwrites_a_file_that_is_not_a_report(run, tmp_path, capsys):
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own notes</html>\n")
    assert main(["report", str(run), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "is not a fewshot report; not overwriting it" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "<html>my own notes</html>\n"
    (run / "report.html").write_text("hand-written\n")
    assert main(["report", str(run)]) == 2
    capsys.readouterr()
    for target in (tmp_path / "nowhere", tmp_path):
        assert main(["report", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fewshot: error: ") and len(err.strip().splitlines()) == 1
        assert "not a run folder" in err or "does not exist" in err


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None and not os.environ.get("FEWSHOT_REQUIRE_BROWSER"):
        pytest.skip("chromium is not installed (set FEWSHOT_REQUIRE_BROWSER=1 to make this a failure)")
    assert found, "FEWSHOT_REQUIRE_BROWSER is set but chromium is not installed"
    return found


def test_page_renders_in_a_headless_browser(trained, tmp_path):
    from PIL import Image

    browser = _chromium()
    page = (trained / "report.html").resolve().as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom
    for heading in ("Learning curves", "Accuracy vs shots", "Per-episode accuracy", "Confusion between classes",
                    "Most confused pairs", "Environment"):
        assert heading in dom
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,3000", page], capture_output=True,
                   timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text and plots, not a blank page
    white = max(colours)[0] / (1200 * 3000)
    assert white < 0.95, f"{100 * white:.1f}% of the screenshot is one colour"


def test_a_job_over_several_machines_names_each():
    here = {"cpu": "Xeon", "cpu_cores_usable": 2, "torch_threads": 1, "gpus": []}
    there = {**here, "cpu": "EPYC", "cpu_generation": "family 26, model 2", "gpus": ["H100"]}
    assert other_machines([here, here]) == {}
    grouped = other_machines([here, there, here, there, {**here, "torch_threads": 4}])
    assert [(m["ranks"], m["cpu"], m["torch_threads"]) for m in grouped["other_machines"]] == [
        ([1, 3], "EPYC", 1), ([4], "Xeon", 4)]
    line = describe_machine({**here, "world_size": 5, "device": "cpu", "precision": "fp32", **grouped})
    assert line.startswith("Xeon (2 cores usable), 1 torch thread(s), no GPU, 5 processes")
    assert line.endswith("; ranks 1, 3 on EPYC, family 26, model 2 (2 cores usable), 1 torch thread(s), H100; "
                         "rank 4 on Xeon (2 cores usable), 4 torch thread(s), no GPU")

