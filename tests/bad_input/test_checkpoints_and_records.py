"""Bad checkpoints, embedding caches and evaluation records: a clean error naming the problem, or the correct result.

The checks read files with plain JSON / torch only, so the same cases judge any checkout (``bench/reliability.py``).
"""

import atexit
import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from bad_input_harness import TINY, Case, copy_run, judge, run_case
from safetensors import safe_open
from safetensors.torch import save

TINY.setdefault("baseline", ("omniglot_5w1s_baseline_conv4", [
    "model.hidden=16", "train.iterations=2", "train.batch_size=16", "train.val_every=2", "train.val_episodes=4",
    "train.checkpoint_every=2", "eval.episodes=4", "train.threads=1"]))
"""A tiny Baseline (Chen et al.) run: Conv-4 features + a classifier per task, the method with an embedding cache."""

RECORD = "run/checkpoints/eval/best_test_5w1s15q_seed0.json"
PREDICTIONS = "run/checkpoints/eval/predictions/best_test_5w1s15q_seed0.json"
"""The per-query predictions kept beside the record (rescored with it)."""
EVAL = ["--json", "train.threads=1"]
OTHER_DATA = Path(tempfile.gettempdir()) / f"fewshot_other_omniglot_{os.getpid()}"
"""Omniglot with every test character's images moved to the next character (same layout, other images), and the
fewshot cache of its preprocessed tensors; made once per session."""
atexit.register(shutil.rmtree, OTHER_DATA, True)


# --- helpers: runs, records, results -------------------------------------------------------------------------------

def _result(out: str) -> dict:
    return json.loads(out.splitlines()[-1])


def _as_trained(folder: Path, run: str = "run") -> float:
    """The test figure the run's own training reported (test.json), which re-scoring must reproduce."""
    return json.loads((folder / run / "test.json").read_text())["accuracy"]


def _edit_json(path: Path, change) -> None:
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


def _set_scores(value: float):
    return lambda saved: saved.update(scores=[value] * len(saved["scores"]))


def _rescored(folder: Path, out: str) -> None:
    """Scored afresh: the run's own figure (not the edited one), and a record of those scores now."""
    result = _result(out)
    assert result["accuracy"] == pytest.approx(_as_trained(folder), abs=1e-9)
    scores = json.loads((folder / RECORD).read_text())["scores"]
    assert sum(scores) / len(scores) == pytest.approx(result["accuracy"], abs=1e-9)


def _eval_edited(change):
    def setup(folder, data):
        copy_run("protonet", data, folder / "run")
        _edit_json(folder / RECORD, change)
        return ["eval", "run", *EVAL]

    return setup


def _eval_damaged(text: str):
    def setup(folder, data):
        copy_run("protonet", data, folder / "run")
        (folder / RECORD).write_text(text)
        return ["eval", "run", *EVAL]

    return setup


def _compare_edited(change):
    """Two copies of one run (so the same tasks), the second's record edited."""
    def setup(folder, data):
        copy_run("protonet", data, folder / "a")
        copy_run("protonet", data, folder / "b")
        _edit_json(folder / "b" / RECORD[len("run/"):], change)
        return ["compare", "a", "b"]

    return setup


# --- other images in the same layout (another --data-root) -----------------------------------------------------------

def _other_data(data: Path) -> Path:
    """``OTHER_DATA/data``: the real background zip, and an evaluation zip whose characters hold their neighbours'
    images (so names, sizes and layout are Omniglot's, the pictures are not)."""
    root = OTHER_DATA / "data" / "omniglot"
    if not (root / "images_evaluation.zip").exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "omniglot" / "images_background.zip", root / "images_background.zip")
        with zipfile.ZipFile(data / "omniglot" / "images_evaluation.zip") as real:
            groups: dict[str, list[str]] = {}
            for entry in sorted(real.namelist()):
                if entry.endswith(".png"):
                    groups.setdefault(entry.rsplit("/", 1)[0], []).append(entry)
            names = sorted(groups)
            tmp = root / "images_evaluation.zip.tmp"
            with zipfile.ZipFile(tmp, "w") as fake:
                for i, character in enumerate(names):
                    donor = groups[names[(i + 1) % len(names)]]
                    for entry, source in zip(groups[character], donor):
                        fake.writestr(entry, real.read(source))
            tmp.rename(root / "images_evaluation.zip")
    return OTHER_DATA / "data"


def _eval_other_data(*args: str):
    def setup(folder, data):
        copy_run("protonet", data, folder / "run")
        other = _other_data(data)
        (folder / "scores_on_real_data.json").write_text((folder / RECORD).read_text())
        return ["eval", "run", "--data-root", str(other), *EVAL, *args]

    return setup


def _scored_other_data(episodes: int):
    def check(folder, out):
        result = _result(out)
        real = json.loads((folder / "scores_on_real_data.json").read_text())["scores"]
        scores = json.loads((folder / RECORD).read_text())["scores"]
        assert result["episodes"] == len(scores) == episodes
        assert scores[: len(real)] != real, "the record of the real images was reused for other images"
        assert sum(scores) / len(scores) == pytest.approx(result["accuracy"], abs=1e-9)

    return check


# --- the NCM setting of a logistic-regression run ---------------------------------------------------------------------

def _eval_ncm(folder, data):
    copy_run("baseline", data, folder / "run")
    return ["eval", "run", "method.classifier=ncm", *EVAL]


def _kept_both_records(folder, out):
    files = sorted((folder / "run" / "checkpoints" / "eval").glob("best_test_*.json"))
    assert len(files) == 2, f"records: {[f.name for f in files]}"
    ncm = [f for f in files if f != folder / RECORD]
    scores = json.loads(ncm[0].read_text())["scores"]
    assert sum(scores) / len(scores) == pytest.approx(_result(out)["accuracy"], abs=1e-9)


def _compare_settings(folder, data):
    from fewshot.cli import main

    copy_run("baseline", data, folder / "run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", str(folder / "run"), "method.classifier=ncm", "--json", "--data-root", str(data),
                     "train.threads=1"]) == 0
    return ["compare", "run"]


def _labelled_settings(folder, out):
    lines = out.splitlines()
    assert any("as trained" in line for line in lines) and any("method.classifier=ncm" in line for line in lines)


# --- checkpoints -----------------------------------------------------------------------------------------------------

def _checkpoint(change_meta=None, change_tensors=None, loose: bool = True, command: str = "eval",
                name: str = "best"):
    """A copy of the tiny ProtoNet run's checkpoint with its metadata / tensors changed, evaluated as a loose file
    (or in the run folder: ``loose=False``; ``command="resume"`` resumes the run instead)."""
    def setup(folder, data):
        run = copy_run("protonet", data, folder / "run")
        path = run / "checkpoints" / f"{name}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        if change_meta is not None:
            meta["fewshot"] = change_meta(json.loads(meta["fewshot"]))
        if change_tensors is not None:
            change_tensors(tensors)
        target = folder / "checkpoint.safetensors" if loose else path
        target.write_bytes(save(tensors, metadata=meta))
        if command == "resume":
            return ["train", "run", "--resume", "train.iterations=6", "--no-progress"]
        return ["eval", "checkpoint.safetensors" if loose else "run", "--episodes", "2", *EVAL]

    return setup


def _meta(**changes):
    def change(meta):
        meta.update(changes)
        return json.dumps(meta)

    return change


def _config(**changes):
    def change(meta):
        meta["config"]["method"].update(changes)
        return json.dumps(meta)

    return change


def _poison(value: float):
    def change(tensors):
        name = next(k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point())
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = value

    return change


def _truncated(folder, data):
    run = copy_run("protonet", data, folder / "run")
    blob = (run / "checkpoints" / "best.safetensors").read_bytes()
    (folder / "checkpoint.safetensors").write_bytes(blob[: len(blob) // 2])
    return ["eval", "checkpoint.safetensors", "--episodes", "2", *EVAL]


def _foreign_safetensors(folder, data):
    (folder / "model.safetensors").write_bytes(save({"weight": torch.zeros(3)}, metadata={"format": "pt"}))
    return ["eval", "model.safetensors", "--episodes", "2", *EVAL]


def _ensemble(*args: str, change=None):
    """``fewshot eval --ensemble`` on a copy of the tiny ProtoNet run that keeps its 2 best validations
    (``change(run)`` first)."""
    def setup(folder, data):
        run = copy_run("protonet_top", data, folder / "run")
        if change is not None:
            change(run)
        return ["eval", *args, "--episodes", "2", *EVAL]

    return setup


def _kept(run: Path) -> list[Path]:
    return sorted((run / "checkpoints" / "top").glob("*.safetensors"))


def _top_list(value):
    """The run's last checkpoint with its list of kept validations replaced by ``value``."""
    def change(run):
        path = run / "checkpoints" / "last.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        saved = json.loads(meta["fewshot"])
        saved["extra"]["top_validations"] = value
        meta["fewshot"] = json.dumps(saved)
        path.write_bytes(save(tensors, metadata=meta))

    return change


def _ensemble_scored(folder: Path, out: str) -> None:
    """Two kept checkpoints scored together, their record kept apart from the best checkpoint's."""
    result = _result(out)
    with safe_open(str(folder / "run/checkpoints/last.safetensors"), framework="pt") as f:
        top = json.loads(f.metadata()["fewshot"])["extra"]["top_validations"]
    assert [Path(p).name for p in result["checkpoints"]] == [f"{iteration}.safetensors" for iteration, _ in top]
    assert [p.name for p in _kept(folder / "run")] == sorted(f"{iteration}.safetensors" for iteration, _ in top)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["episodes"] == 2
    assert (folder / "run/checkpoints/eval/top2_test_5w1s15q_seed0.json").is_file()


# --- embedding caches ------------------------------------------------------------------------------------------------

def _cache_key(run: Path) -> str:
    """The embedding cache's file name for the run's best weights (the backbone's fingerprint)."""
    from fewshot.config import RunConfig
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_method
    from fewshot.hashing import fingerprint

    ckpt = load_checkpoint(run / "checkpoints" / "best.safetensors")
    method = build_method(RunConfig.from_dict(ckpt.config), None)
    method.load_state_dict(ckpt.weights, strict=False)  # the backbone; the pre-training head is not embedded
    return fingerprint(method.backbone)


def _link_data_cache(cache: Path) -> None:
    """The preprocessed Omniglot tensors of this session's cache, linked (not copied) into the case's cache."""
    from fewshot.io import cache_dir

    cache.mkdir(parents=True, exist_ok=True)
    for path in cache_dir().glob("omniglot_*"):
        (cache / path.name).symlink_to(path)


def _embedding_cache(content, *args: str):
    """The tiny Baseline run, evaluated with ``cache: disk`` over a cache file holding ``content`` (bytes, or a
    function of the case folder and data root that writes it)."""
    def setup(folder, data):
        run = copy_run("baseline", data, folder / "run")
        _link_data_cache(folder / "cache")
        path = folder / "cache" / "embeddings" / f"{_cache_key(run)}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(folder, data, path)
        else:
            path.write_bytes(content)
        return ["eval", "run", "method.cache=disk", *EVAL, *args]

    return setup


def _valid_but_wrong(folder, data, path):
    """A readable cache of the right inputs whose embeddings are all zeros (a cache gone stale or tampered with)."""
    from fewshot.cli import main

    saved = os.environ.get("FEWSHOT_CACHE")
    os.environ["FEWSHOT_CACHE"] = str(folder / "cache")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["eval", str(folder / "run"), "method.cache=disk", "--json", "--data-root", str(data),
                         "train.threads=1", "eval.seed=7"]) == 0
    finally:
        os.environ.pop("FEWSHOT_CACHE") if saved is None else os.environ.update(FEWSHOT_CACHE=saved)
    for record in (folder / "run" / "checkpoints" / "eval").glob("*seed7*"):
        record.unlink()
    payload = torch.load(path, weights_only=True)
    payload["embeddings"] = torch.zeros_like(payload["embeddings"])
    torch.save(payload, path)


def _other_layout(folder, data, path):
    torch.save({"embeddings": torch.zeros(3), "keys": [1, 2, 3]}, path)


def _cache_rebuilt(folder, out):
    assert _result(out)["accuracy"] == pytest.approx(_as_trained(folder), abs=1e-9)
    [path] = (folder / "cache" / "embeddings").glob("*.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["embeddings"].dim() == 2 and payload["embeddings"].shape[0] == payload["keys"].shape[0] > 0
    assert payload["embeddings"].abs().sum() > 0


CACHE_ENV = {"FEWSHOT_CACHE": "{case}/cache"}
OTHER_ENV = {"FEWSHOT_CACHE": str(OTHER_DATA / "cache")}  # the other images' tensors, preprocessed once

CASES = [
    # evaluation records
    Case("record with scores edited to 1.0 (eval)", "record", _eval_edited(_set_scores(1.0)), expect="ok",
         check=_rescored, may_change=(RECORD, PREDICTIONS)),
    Case("record with scores edited to 5.0 (eval)", "record", _eval_edited(_set_scores(5.0)), expect="ok",
         check=_rescored, may_change=(RECORD, PREDICTIONS)),
    Case("record cut short (eval)", "record", _eval_damaged('{"identity": {"fewshot": "0.1.0", "wei'), expect="ok",
         check=_rescored, may_change=(RECORD, PREDICTIONS)),
    Case("record that is a JSON list (eval)", "record", _eval_damaged("[1, 2, 3]\n"), expect="ok", check=_rescored,
         may_change=(RECORD, PREDICTIONS)),
    Case("record with scores edited to 1.0 (compare)", "record", _compare_edited(_set_scores(1.0)),
         match=r"b/checkpoints/eval/best_test_5w1s15q_seed0\.json is not a valid evaluation record: its checksum "
               r"does not match"),
    Case("record with scores edited to 5.0 (compare)", "record", _compare_edited(_set_scores(5.0)),
         match=r"not a valid evaluation record: its score of episode 0 is 5\.0, not an accuracy in \[0, 1\]"),
    Case("record with NaN scores (compare)", "record", _compare_edited(_set_scores(math.nan)),
         match=r"not a valid evaluation record: its score of episode 0 is nan"),
    Case("record with scores removed (compare)", "record",
         _compare_edited(lambda saved: saved.update(scores=saved["scores"][:2])),
         match=r"not a valid evaluation record: it counts 4 episodes but holds 2 scores"),
    Case("eval on other images (--data-root)", "record", _eval_other_data(), expect="ok",
         check=_scored_other_data(4), may_change=(RECORD, PREDICTIONS), env=OTHER_ENV, timeout=240),
    Case("longer eval on other images (--data-root)", "record", _eval_other_data("--episodes", "6"), expect="ok",
         check=_scored_other_data(6), may_change=(RECORD, PREDICTIONS), env=OTHER_ENV, timeout=240),
    Case("eval under another classifier keeps the run's record", "record", _eval_ncm, expect="ok",
         check=_kept_both_records, timeout=240),
    Case("compare of one run under two classifiers", "record", _compare_settings, expect="ok",
         check=_labelled_settings, timeout=240),
    Case("compare of a single run", "record", lambda f, d: ["compare", str(copy_run("protonet", d, f / "run"))],
         match=r"compare needs at least two runs"),
    Case("compare of runs on different tasks", "record",
         lambda f, d: ["compare", str(copy_run("protonet", d, f / "a")), str(copy_run("maml", d, f / "b"))],
         match=r"not scored on the same tasks"),
    Case("compare of a folder with no records", "record",
         lambda f, d: (f / "empty").mkdir() or ["compare", "empty", str(copy_run("protonet", d, f / "run"))],
         match=r"empty has no recorded test evaluation"),
    # checkpoints
    Case("checkpoint metadata that is a JSON list", "checkpoint", _checkpoint(lambda meta: "[1, 2]"),
         match=r"checkpoint\.safetensors has damaged fewshot metadata: a JSON list"),
    Case("checkpoint metadata that is a JSON string", "checkpoint", _checkpoint(lambda meta: '"hello"'),
         match=r"checkpoint\.safetensors has damaged fewshot metadata: a JSON str"),
    Case("checkpoint metadata that is not JSON", "checkpoint", _checkpoint(lambda meta: "{oops"),
         match=r"checkpoint\.safetensors has damaged fewshot metadata"),
    Case("checkpoint of another format version", "checkpoint",
         _checkpoint(_meta(format="fewshot-checkpoint-v2")), match=r"format 'fewshot-checkpoint-v2'"),
    Case("checkpoint whose config is a string", "checkpoint", _checkpoint(_meta(config="omniglot")),
         match=r"config (is a str, not a mapping|must be a mapping)"),
    Case("checkpoint whose config names an unknown method", "checkpoint", _checkpoint(_config(name="protonett")),
         match=r"unknown method\.name 'protonett'"),
    Case("checkpoint cut short", "checkpoint", _truncated, match=r"checkpoint\.safetensors is not a readable"),
    Case("safetensors file that is not a fewshot checkpoint", "checkpoint", _foreign_safetensors,
         match=r"model\.safetensors (is a safetensors file without fewshot metadata|is not a fewshot checkpoint)"),
    Case("checkpoint with a NaN weight", "checkpoint", _checkpoint(change_tensors=_poison(math.nan)),
         match=r"weight tensor '[\w.]+' holds 1 NaN or infinite value"),
    Case("run whose best checkpoint has an infinite weight", "checkpoint",
         _checkpoint(change_tensors=_poison(math.inf), loose=False),
         match=r"weight tensor '[\w.]+' holds 1 NaN or infinite value"),
    Case("eval --ensemble of a run that keeps only its best", "checkpoint",
         lambda f, d: ["eval", str(copy_run("protonet", d, f / "run")), "--ensemble", "2", *EVAL],
         match=r"has not kept 2 best-validated checkpoints: it keeps only its best \(train.keep_best: 1\)"),
    Case("eval --ensemble of more checkpoints than kept", "checkpoint", _ensemble("run", "--ensemble", "3"),
         match=r"has not kept 3 best-validated checkpoints: it keeps 2 \(train.keep_best\) and has 2 so far"),
    Case("eval --ensemble 1", "checkpoint", _ensemble("run", "--ensemble", "1"),
         match=r"--ensemble takes a number of checkpoints >= 2, got 1"),
    Case("eval --ensemble with --checkpoint", "checkpoint", _ensemble("run", "--ensemble", "2", "--checkpoint", "best"),
         match=r"--ensemble scores the 2 best checkpoints, not --checkpoint best"),
    Case("eval --average without --ensemble", "checkpoint", _ensemble("run", "--average", "logits"),
         match=r"--average says what --ensemble averages over its checkpoints: add --ensemble K"),
    Case("eval --ensemble of a checkpoint file", "checkpoint",
         _ensemble("run/checkpoints/best.safetensors", "--ensemble", "2"), match=r"is not a folder"),
    Case("eval --ensemble with a kept checkpoint deleted", "checkpoint",
         _ensemble("run", "--ensemble", "2", change=lambda run: _kept(run)[0].unlink()),
         match=r"lists 2 best checkpoints but \S+top/\d+\.safetensors is missing"),
    Case("eval --ensemble with a kept checkpoint cut short", "checkpoint",
         _ensemble("run", "--ensemble", "2", change=lambda run: _kept(run)[0].write_bytes(b"\0" * 40)),
         match=r"top/\d+\.safetensors is not a readable"),
    Case("eval --ensemble with a damaged list of kept checkpoints", "checkpoint",
         _ensemble("run", "--ensemble", "2", change=_top_list([["4", 0.5]])),
         match=r"last\.safetensors has damaged fewshot metadata: top_validations must be a list of"),
    Case("resume with a damaged list of kept checkpoints", "checkpoint",
         lambda f, d: _top_list({"a": 1})(copy_run("protonet_top", d, f / "run")) or
         ["train", "run", "--resume", "train.iterations=6", "--no-progress"],
         match=r"last\.safetensors has damaged fewshot metadata: top_validations must be a list of"),
    Case("eval --ensemble of the kept checkpoints", "checkpoint", _ensemble("run", "--ensemble", "2"), expect="ok",
         check=_ensemble_scored),
    Case("resume with an iteration that is not a count", "checkpoint",
         _checkpoint(_meta(iteration="four"), loose=False, command="resume", name="last"),
         match=r"iteration is 'four', not a count"),
    Case("resume with optimizer groups that are not a list", "checkpoint",
         _checkpoint(_meta(optimizer_groups=5), loose=False, command="resume", name="last"),
         match=r"optimizer_groups is a int, not a list"),
    # embedding caches
    Case("embedding cache cut short", "cache", _embedding_cache(b"PK\x03\x04" + bytes(60)), expect="ok",
         check=_cache_rebuilt, env=CACHE_ENV, may_change=("cache/embeddings/*",), timeout=240),
    Case("embedding cache of garbage, --fresh", "cache", _embedding_cache(b"garbage\n", "--fresh"), expect="ok",
         check=_cache_rebuilt, env=CACHE_ENV, may_change=("cache/embeddings/*",), timeout=240),
    Case("embedding cache of another layout", "cache", _embedding_cache(_other_layout), expect="ok",
         check=_cache_rebuilt, env=CACHE_ENV, may_change=("cache/embeddings/*",), timeout=240),
    Case("readable but wrong embedding cache, --fresh", "cache", _embedding_cache(_valid_but_wrong, "--fresh"),
         expect="ok", check=_cache_rebuilt, env=CACHE_ENV, may_change=("cache/embeddings/*",), timeout=240),
]


@pytest.fixture(scope="module", autouse=True)
def _remove_other_data():
    yield
    shutil.rmtree(OTHER_DATA, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, data_root):
    judge(case, run_case(case, tmp_path / "case", data_root), tmp_path / "case")


def test_a_record_of_an_earlier_fewshot_is_not_trusted(tmp_path):
    """A record without format and checksum (fewshot before they existed) cannot be checked: never reused, and
    compare refuses it; a record written now is valid, and any change to its scores or identity is caught."""
    from fewshot.engine.records import EvalRecord, read_record
    from fewshot.errors import FewShotError

    path = tmp_path / "record.json"
    EvalRecord(path, {"run": "a"}).write([0.5, 0.75])
    assert read_record(path) == ({"run": "a"}, [0.5, 0.75])
    assert EvalRecord(path, {"run": "a"}).scores() == [0.5, 0.75]
    for change in ({"scores": [0.5, 0.5]}, {"identity": {"run": "b"}}, {"checksum": "0" * 64}):
        saved = {**json.loads(path.read_text()), **change}
        (tmp_path / "edited.json").write_text(json.dumps(saved))
        with pytest.raises(FewShotError, match="checksum"):
            read_record(tmp_path / "edited.json")
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"identity": {"run": "a"}, "episodes_done": 2, "scores": [0.5, 0.75]}))
    with pytest.raises(FewShotError, match="no format and no checksum"):
        read_record(legacy)
    assert EvalRecord(legacy, {"run": "a"}).scores() == []


def test_student_t_interval():
    """t(0.975, n - 1) from the table and the expansion agree with scipy; 1.9639 at 600 episodes."""
    from fewshot.engine.evaluate import mean_ci95, t975

    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 10, 29, 30, 31, 45, 99, 599, 5000):
        assert t975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-7)
    values = [0.2, 0.4, 0.4, 0.8, 0.6]
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.48) and ci == pytest.approx(2.7764451051977934 * 0.228035085 / 5**0.5, rel=1e-6)
