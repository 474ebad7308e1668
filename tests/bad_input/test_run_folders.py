"""Run folders, resume, concurrency, signals, disk and permissions: a clean error naming the problem, or the correct
result; never a user's file changed, never a checkpoint lost.

The table's cases start from tiny real runs: the finished protonet run of the harness, and the same run stopped
after 2 of its 4 iterations (``_partial``). The signal and concurrency cases run real ``fewshot train`` processes
and signal them or start a second one beside them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bad_input_harness
import pytest
import torch
from bad_input_harness import TINY, Case, copy_run, error_lines, judge, run_case, trained_run

from fewshot.cli import main
from fewshot.engine.checkpoint import load_checkpoint

RECIPE, OVERRIDES = TINY["protonet"]
TRAIN = ["train", RECIPE, *OVERRIDES, "--no-progress"]
RESUME = ["train", "run", "--resume", "--no-progress"]
LAST = Path("run/checkpoints/last.safetensors")
RUN_FILES = ("run/config.yaml", "run/metrics.jsonl", "run/metrics.csv", "run/report.md", "run/report.html",
             "run/curves.png", "run/test.json", "run/checkpoints/*", "run/checkpoints/eval/*", "run/.fewshot-lock")
"""What a legitimate resume rewrites."""
DATA = Path(os.environ.get("FEWSHOT_TEST_DATA") or os.environ.get("FEWSHOT_DATA")
            or Path(__file__).resolve().parents[3] / "shared" / "data")
"""The data root, found as the ``data_root`` fixture finds it."""
_PARTIAL: dict[str, Path] = {}


def _partial(data: Path, *extra: str) -> Path:
    """The tiny protonet run stopped after 2 of its 4 iterations (``extra`` overrides), trained once per session."""
    key = " ".join(extra)
    if key not in _PARTIAL:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="fewshot_partial_")) / "run"
        code = main([*TRAIN, *extra, "--stop-after", "2", "--out", str(out), "--data-root", str(data)])
        assert code == 0, "could not train the partial run"
        _PARTIAL[key] = out
    return _PARTIAL[key]


def _copy_partial(folder: Path, data: Path, *extra: str) -> Path:
    return Path(shutil.copytree(_partial(data, *extra), folder / "run"))


def _resume(*args: str, extra: tuple[str, ...] = ()):
    """Resume a copy of the partial run (trained with ``extra``) with ``args``."""
    def setup(folder, data):
        _copy_partial(folder, data, *extra)
        return [*RESUME, *args]

    return setup


def _resume_finished(*args: str):
    def setup(folder, data):
        copy_run("protonet", data, folder / "run")
        return [*RESUME, *args]

    return setup


def _damaged(change, *args: str):
    """Resume a copy of the partial run after ``change(run_folder)``."""
    def setup(folder, data):
        change(_copy_partial(folder, data))
        return [*RESUME, *args]

    return setup


def _iteration(n: int, same_as_uninterrupted: bool = False):
    """The run's last checkpoint is at iteration ``n`` (with the weights of the uninterrupted tiny run), its log
    clean."""
    def check(folder, out):
        ckpt = load_checkpoint(folder / LAST)
        assert ckpt.iteration == n
        if same_as_uninterrupted:
            reference = load_checkpoint(trained_run("protonet", DATA) / "checkpoints" / "last.safetensors").weights
            assert reference.keys() == ckpt.weights.keys()
            assert all(torch.equal(reference[k], ckpt.weights[k]) for k in reference)
        _metrics_clean(folder, out, n)

    return check


def _metrics_clean(folder, out, n=4):
    """Every line of metrics.jsonl a row, each (iteration, phase) once, up to iteration ``n``."""
    rows = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["iteration"], r["phase"]) for r in rows]
    assert len(keys) == len(set(keys)) and max(i for i, phase in keys if phase == "train") == n
    assert load_checkpoint(folder / LAST).iteration == n


def _user_files(folder: Path) -> Path:
    mine = folder / "mine"
    mine.mkdir()
    for name, text in (("config.yaml", "experiment: my own\n"), ("report.md", "# my report\n"),
                       ("metrics.jsonl", '{"epoch": 1}\n'), ("curves.png", "not really a png\n")):
        (mine / name).write_text(text)
    return mine


def _into_user_folder(folder, data):
    _user_files(folder)
    return [*TRAIN, "--out", "mine"]


def _resume_user_folder(folder, data):
    _user_files(folder)
    (folder / "mine" / "config.yaml").unlink()
    return ["train", "mine", "--resume", "--no-progress"]


def _named(name: str):
    """A recipe YAML whose ``name:`` is ``name`` (``{case}``: the case folder), run without --out."""
    def setup(folder, data):
        from fewshot.recipes import recipe_path

        text = recipe_path(RECIPE).read_text().replace(f"name: {RECIPE}", f"name: '{name.format(case=folder)}'")
        (folder / "recipe.yaml").write_text(text)
        return ["train", "recipe.yaml", *OVERRIDES, "--no-progress"]

    return setup


def _out_is_a_file(folder, data):
    (folder / "out.txt").write_text("a file\n")
    return [*TRAIN, "--out", "out.txt"]


def _killed_before_first_checkpoint(folder: Path, data: Path) -> Path:
    """What a run killed before its first checkpoint leaves: config.yaml and a log, no checkpoint."""
    run = _copy_partial(folder, data)
    shutil.rmtree(run / "checkpoints")
    for name in ("curves.png", "report.md"):
        (run / name).unlink()
    return run


def _resume_unstarted(folder, data):
    _killed_before_first_checkpoint(folder, data)
    return RESUME


def _restart_unstarted(folder, data):
    _killed_before_first_checkpoint(folder, data)
    return [*TRAIN, "--out", "run"]


def _truncate(run: Path) -> None:
    path = run / "checkpoints" / "last.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "last.safetensors").write_bytes(b"")


def _hand_edited(run: Path) -> None:
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("  lr:", "  learning_rate:"))


def _not_yaml(run: Path) -> None:
    (run / "config.yaml").write_text("train: [unclosed\n")


def _no_config(run: Path) -> None:
    (run / "config.yaml").unlink()


def _torn_metrics(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "phase": "tr')  # a process killed while appending


def _corrupt_metrics_line(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([lines[0], "\x00\x00garbage\n", *lines[1:]]))


def _killed_during_checkpoint_write(run: Path) -> None:
    """kill -9 while writing ``last``: its half-written temporary file remains (the dead process's lock file too:
    ``test_two_runs_one_folder``)."""
    last = run / "checkpoints" / "last.safetensors"
    (last.parent / "last.safetensors.tmp999999").write_bytes(last.read_bytes()[:1000])


def _forced_recorded(folder, out):
    run = folder / "run"
    forced = "resumed with --force at iteration 2: train.lr 0.001 -> 0.002"
    assert (run / "config.yaml").read_text().startswith(f"# {forced}\n")
    assert "resumed with --force** at iteration 2: train.lr 0.001 -> 0.002" in (run / "report.md").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"iteration": 2, "phase": "resume", "forced": True, "changed": {"train.lr": [0.001, 0.002]}} in rows
    ckpt = load_checkpoint(folder / LAST)
    assert ckpt.iteration == 4 and ckpt.config["train"]["lr"] == 0.002
    assert ckpt.extra["forced_resumes"] == [{"iteration": 2, "changed": {"train.lr": [0.001, 0.002]}}]


def _test_reported(folder, out):
    assert "test accuracy (omniglot_5w1s_protonet):" in out


def _eval_episodes(n: int):
    def check(folder, out):
        assert json.loads(out.splitlines()[-1])["episodes"] == n

    return check


@dataclass
class Limited(Case):
    """A case whose ``fewshot`` process runs with a limit: ``fsize`` bytes per file (a full disk), or ``read_only``
    (the listed folders made read-only, and the process without root's power to write them anyway)."""

    fsize: int | None = None
    read_only: tuple[str, ...] = ()


def _resume_partial(folder, data):
    _copy_partial(folder, data)
    return RESUME


def _into_read_only_parent(folder, data):
    (folder / "shared").mkdir()
    return [*TRAIN, "--out", "shared/run"]


def _eval_read_only(folder, data):
    copy_run("protonet", data, folder / "run")
    shutil.rmtree(folder / "run" / "checkpoints" / "eval")
    return ["eval", "run", "--json", "--episodes", "3", "train.threads=1"]


CASES = [
    # where a run goes
    Case("train into a folder of the user's own files", "run folder", _into_user_folder,
         match=r"mine is not empty and is not a fewshot run folder .*choose another --out"),
    Case("recipe name climbing out of runs/", "run folder", _named("../../escaped"),
         match=r"recipe name '../../escaped' cannot be a run folder name"),
    Case("recipe name that is an absolute path", "run folder", _named("{case}/elsewhere"),
         match=r"cannot be a run folder name"),
    Case("--out names a file", "run folder", _out_is_a_file, match=r"out.txt is a file, not a run folder"),
    Case("train into a finished run without --resume", "run folder",
         lambda f, d: [*TRAIN, "--out", str(copy_run("protonet", d, f / "run"))], match="already holds a run"),
    Case("resume where no run is", "run folder", lambda f, d: [*TRAIN, "--out", "nothing", "--resume"],
         match=r"cannot resume: nothing holds no checkpoint"),
    Case("resume a folder of the user's own files", "run folder", _resume_user_folder,
         match=r"mine is a folder but not a run folder"),
    Case("resume a run killed before its first checkpoint", "run folder", _resume_unstarted,
         match=r"holds no checkpoint yet .*start it again without --resume"),
    Case("start again a run killed before its first checkpoint", "run folder", _restart_unstarted, expect="ok",
         check=_iteration(4, same_as_uninterrupted=True), may_change=RUN_FILES),
    # what a resume may change
    Case("resume with another learning rate", "resume", _resume("train.lr=0.002"),
         match=r"settings differ from the run's \(2 iterations done\): train.lr 0.001 -> 0.002.*--force"),
    Case("resume with another way", "resume", _resume("train.way=10", "eval.way=10"),
         match=r"eval.way 5 -> 10, train.way 5 -> 10"),
    Case("resume with another method (a recipe into another run)", "resume",
         lambda f, d: ["train", "omniglot_5w1s_maml", *TINY["maml"][1], "--out", str(_copy_partial(f, d)),
                       "--resume", "--no-progress"],
         match=r"settings differ from the run's \(2 iterations done\): method.name protonet -> maml, .* more"),
    Case("resume with fewer iterations than done", "resume", _resume("train.iterations=1"),
         match=r"train.iterations=1 but the run has already trained 2 iterations"),
    Case("forced resume with fewer iterations than done", "resume", _resume("train.iterations=1", "--force"),
         match=r"already trained 2 iterations"),
    Case("resume with a longer budget (step schedule)", "resume", _resume("train.iterations=6"), expect="ok",
         check=_iteration(6), may_change=RUN_FILES),
    Case("resume with a longer budget (cosine schedule)", "resume",
         _resume("train.iterations=6", extra=("train.schedule=cosine",)),
         match=r"train.iterations 4 -> 6 \(the cosine learning-rate schedule spans train.iterations"),
    Case("resume with another cadence and data folder", "resume",
         lambda f, d: _resume("train.val_every=1", "train.checkpoint_every=1", "train.log_every=2",
                              f"data.root={d}")(f, d),
         expect="ok", check=_iteration(4, same_as_uninterrupted=True), may_change=RUN_FILES),
    Case("resume with more threads", "resume", _resume("train.threads=2"), expect="ok", check=_iteration(4),
         may_change=RUN_FILES),  # the same computation, though sums may round differently on 2 threads
    Case("forced resume with another learning rate", "resume", _resume("train.lr=0.002", "--force"), expect="ok",
         check=_forced_recorded, may_change=RUN_FILES),
    Case("resume a finished run", "resume", _resume_finished(), expect="ok", check=_test_reported,
         may_change=("run/report.html",)),  # the HTML report is written again (its time stamp); nothing else
    Case("resume a finished run with --no-test", "resume", _resume_finished("--no-test"), expect="ok",
         match="run folder: run", may_change=("run/report.html",)),
    # damaged run folders
    Case("resume from a truncated checkpoint", "damaged run", _damaged(_truncate),
         match=r"cannot resume: .*last.safetensors is not a readable fewshot checkpoint"),
    Case("resume from an empty checkpoint file", "damaged run", _damaged(_empty_checkpoint),
         match=r"cannot resume: .*last.safetensors is not a readable fewshot checkpoint"),
    Case("resume with a hand-edited invalid config.yaml", "damaged run", _damaged(_hand_edited),
         match=r"run/config.yaml is not a valid run config \(unknown config key 'train.learning_rate'"),
    Case("resume with a config.yaml that is not YAML", "damaged run", _damaged(_not_yaml),
         match=r"run/config.yaml is not a valid run config"),
    Case("resume with config.yaml missing", "damaged run", _damaged(_no_config),
         match=r"run/config.yaml is missing; restore it, or resume with the recipe"),
    Case("resume after a torn last line in metrics.jsonl", "damaged run", _damaged(_torn_metrics), expect="ok",
         check=_metrics_clean, may_change=RUN_FILES),
    Case("resume after a damaged line inside metrics.jsonl", "damaged run", _damaged(_corrupt_metrics_line),
         expect="ok", check=_metrics_clean, may_change=RUN_FILES),
    Case("resume after kill -9 during a checkpoint write", "damaged run", _damaged(_killed_during_checkpoint_write),
         expect="ok", check=_iteration(4, same_as_uninterrupted=True), may_change=RUN_FILES),
    # stop arguments
    Case("--stop-after 0", "arguments", lambda f, d: [*TRAIN, "--out", "run", "--stop-after", "0"],
         match=r"--stop-after must be >= 1"),
    Case("--stop-after negative", "arguments", _resume("--stop-after", "-3"), match=r"--stop-after must be >= 1"),
    Case("--time-limit NaN", "arguments", lambda f, d: [*TRAIN, "--out", "run", "--time-limit", "nan"],
         match=r"--time-limit must be a positive number of minutes, got nan"),
    Case("--time-limit negative", "arguments", _resume("--time-limit", "-1"),
         match=r"--time-limit must be a positive number of minutes"),
    # disk and permissions
    Limited("resume in a read-only run folder", "permissions", _resume_partial, read_only=("run",),
            match=r"cannot write run: Permission denied"),
    Limited("train under a read-only parent folder", "permissions", _into_read_only_parent, read_only=("shared",),
            match=r"cannot write shared/run: Permission denied"),
    Limited("eval of a read-only run folder", "permissions", _eval_read_only, read_only=("run", "run/checkpoints"),
            expect="ok", check=_eval_episodes(3)),
    Limited("disk full while resuming (checkpoint write fails)", "disk", _resume_partial, fsize=60_000,
            match=r"cannot write run/checkpoints/(best|last).safetensors: File too large.*checkpoint of "
                  r"iteration 2 is kept",
            may_change=("run/metrics.*", "run/config.yaml", "run/report.md", "run/report.html", "run/curves.png")),
    Limited("disk full at the start of a run", "disk", lambda f, d: [*TRAIN, "--out", "run"], fsize=500,
            match=r"cannot write run/config.yaml: File too large"),
]


class _LimitedSubprocess:
    """``subprocess`` for the harness, its child run under ``case``'s limit."""

    TimeoutExpired = subprocess.TimeoutExpired

    def __init__(self, case: Limited) -> None:
        self.case = case

    def _limit(self) -> None:
        if self.case.fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.case.fsize, self.case.fsize))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        if self.case.read_only:  # root writes read-only folders anyway: drop that power (CAP_DAC_OVERRIDE)
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP: gone after exec

    def run(self, *args, **kwargs):
        return subprocess.run(*args, preexec_fn=self._limit, **kwargs)


def run_limited(case: Case, folder: Path, data_root: Path, monkeypatch, **kwargs) -> bad_input_harness.Result:
    """:func:`run_case`, under a :class:`Limited` case's limit (read-only folders: chmod after the setup)."""
    if not isinstance(case, Limited):
        return run_case(case, folder, data_root, **kwargs)
    setup = case.setup

    def setup_then_lock(f, d):
        args = setup(f, d)
        for name in case.read_only:
            (f / name).chmod(0o555)
        return args

    monkeypatch.setattr(bad_input_harness, "subprocess", _LimitedSubprocess(case))
    try:
        return run_case(dataclasses.replace(case, setup=setup_then_lock), folder, data_root, **kwargs)
    finally:
        for name in case.read_only:
            (folder / name).chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, data_root, monkeypatch):
    folder = tmp_path / "case"
    judge(case, run_limited(case, folder, data_root, monkeypatch), folder)
    assert not (tmp_path / "escaped").exists() and not (folder / "elsewhere").exists()


# real processes, signalled or side by side

LONG = [*OVERRIDES, "train.iterations=40", "train.log_every=1", "train.checkpoint_every=1000", "train.val_every=10",
        "train.val_episodes=4", "--no-progress", "--no-test"]


def _fewshot(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "fewshot", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def _logged(run: Path, predicate) -> bool:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    return any(predicate(json.loads(line)) for line in lines if line.endswith("}"))


def _uninterrupted(tmp_path: Path, data_root: Path, *extra: str) -> Path:
    run = tmp_path / "uninterrupted"
    assert main(["train", RECIPE, *LONG, *extra, "--out", str(run), "--data-root", str(data_root)]) == 0
    return run


def _same_run(a: Path, b: Path) -> None:
    """``b`` ended bit-identical to ``a``: weights, optimizer state, and the logged losses and validations."""
    x, y = load_checkpoint(a / "checkpoints" / "last.safetensors"), load_checkpoint(b / "checkpoints" /
                                                                                     "last.safetensors")
    assert x.iteration == y.iteration == x.config["train"]["iterations"]
    assert x.weights.keys() == y.weights.keys()
    for key in x.weights:
        assert torch.equal(x.weights[key], y.weights[key]), key

    def rows(run):
        return [(r["iteration"], r["phase"], r.get("loss"), r.get("accuracy"))
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] != "start"]

    assert rows(a) == rows(b)  # every iteration logged once, the same values, validations included


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_the_resumed_run_is_bit_identical(signum, code, said, tmp_path, data_root):
    run = tmp_path / "signalled"
    proc = _fewshot("train", RECIPE, *LONG, "--out", str(run))
    _wait_for(lambda: _logged(run, lambda r: r["phase"] == "train" and r["iteration"] >= 5), proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"fewshot: {said}; the checkpoint of "
                                                                                f"iteration ")
    stopped = load_checkpoint(run / "checkpoints" / "last.safetensors").iteration
    assert 5 <= stopped < 40 and f"iteration {stopped} is saved" in err  # no checkpoint was due: the signal saved it
    assert f"**status**: interrupted; the checkpoint of iteration {stopped} is kept" in (run / "report.md").read_text()
    resumed = _fewshot("train", str(run), "--resume", "--no-progress", "--no-test")
    assert resumed.wait(timeout=240) == 0, resumed.communicate()
    _same_run(_uninterrupted(tmp_path, data_root), run)


def test_signal_during_validation_drops_it_and_the_resume_validates(tmp_path, data_root):
    run = tmp_path / "signalled"
    slow_validation = ["train.val_episodes=200", "train.iterations=20"]
    proc = _fewshot("train", RECIPE, *LONG, *slow_validation, "--out", str(run))
    _wait_for(lambda: _logged(run, lambda r: r["phase"] == "train" and r["iteration"] == 10), proc)
    proc.send_signal(signal.SIGTERM)  # validation at iteration 10 is under way (it takes seconds)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert ckpt.iteration == 10 and ckpt.extra.get("validation_pending") is True, err
    assert not _logged(run, lambda r: r["phase"] == "val")
    resumed = _fewshot("train", str(run), "--resume", "--no-progress", "--no-test")
    assert resumed.wait(timeout=240) == 0, resumed.communicate()
    _same_run(_uninterrupted(tmp_path, data_root, *slow_validation), run)


def test_a_second_signal_stops_at_once_keeping_a_valid_checkpoint(tmp_path, data_root):
    run = tmp_path / "signalled"
    proc = _fewshot("train", RECIPE, *LONG, "train.checkpoint_every=3", "--out", str(run))
    _wait_for(lambda: _logged(run, lambda r: r["phase"] == "train" and r["iteration"] >= 4), proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("fewshot: interrupted; ")
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").iteration >= 3  # whole, whichever it is
    resumed = _fewshot("train", str(run), "--resume", "--no-progress", "--no-test")
    assert resumed.wait(timeout=240) == 0, resumed.communicate()
    _same_run(_uninterrupted(tmp_path, data_root, "train.checkpoint_every=3"), run)


def test_two_runs_started_at_once(tmp_path, data_root):
    """Two new runs into one folder at the same moment: one trains, the other is refused at once, naming the first;
    the folder holds the winner's run alone (its seed, its log once)."""
    run = tmp_path / "run"
    procs = {seed: _fewshot("train", RECIPE, *LONG, f"train.seed={seed}", "--out", str(run))
             for seed in (1, 2)}
    ended = {seed: (proc.wait(timeout=240), proc.communicate()) for seed, proc in procs.items()}
    assert sorted(code for code, _ in ended.values()) == [0, 2], ended
    winner = next(seed for seed, (code, _) in ended.items() if code == 0)
    loser = 3 - winner
    assert error_lines(ended[loser][1][1]) == [f"fewshot: error: {run} is being written by another fewshot process "
                                               f"(pid {procs[winner].pid}); wait for it to end or choose another "
                                               f"--out"], ended[loser]
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").config["train"]["seed"] == winner
    assert f"seed: {winner}\n" in (run / "config.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["phase"] == "train"] == list(range(1, 41))


def test_a_second_writer_while_a_run_trains(tmp_path, data_root):
    """A second writer is refused at once, naming the first one's pid; `fewshot eval` reads the folder meanwhile;
    the lock dies with its process, so the killed run resumes."""
    run = tmp_path / "run"
    first = _fewshot("train", RECIPE, *LONG, "train.iterations=100000", "train.checkpoint_every=5", "--out", str(run))
    try:
        _wait_for(lambda: (run / "checkpoints" / "best.safetensors").exists()
                  and (run / "checkpoints" / "last.safetensors").exists(), first)
        config = (run / "config.yaml").read_bytes()
        for args in (["train", RECIPE, *LONG, "train.seed=1", "--out", str(run)],
                     ["train", str(run), "--resume", "--no-progress"]):
            second = subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stderr
            assert error_lines(second.stderr) == [f"fewshot: error: {run} is being written by another fewshot "
                                                  f"process (pid {first.pid}); wait for it to end or choose another "
                                                  f"--out"], second.stderr
        assert (run / "config.yaml").read_bytes() == config  # the second one changed nothing
        evaluation = subprocess.run([sys.executable, "-m", "fewshot", "eval", str(run), "--episodes", "4", "--json",
                                     "train.threads=1"], capture_output=True, text=True, timeout=120)
        assert evaluation.returncode == 0, evaluation.stderr
        assert json.loads(evaluation.stdout.splitlines()[-1])["episodes"] == 4
        for record in (run / "checkpoints" / "eval").glob("*.json"):
            json.loads(record.read_text())
    finally:
        first.kill()
        first.wait()
    done = load_checkpoint(run / "checkpoints" / "last.safetensors").iteration
    resumed = subprocess.run([sys.executable, "-m", "fewshot", "train", str(run), "--resume", "--no-progress",
                              "--no-test", "--stop-after", "2"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").iteration == done + 2
    assert not (run / ".fewshot-lock").exists()  # released with its process


def test_the_lock_is_held_once_per_process_and_released(tmp_path):
    from fewshot.engine.run_folder import LOCK, lock_run_folder

    run = tmp_path / "a" / "run"
    with lock_run_folder(run):
        assert (run / LOCK).read_text() == f"{os.getpid()}\n"
        with lock_run_folder(run):  # nested: the engine inside the command line
            pass
        assert (run / LOCK).exists()
    assert not (tmp_path / "a").exists()  # created for nothing: removed again
