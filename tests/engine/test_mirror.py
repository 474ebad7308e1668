"""`fewshot train --mirror DIR`: a run whose machine is lost continues from its mirror, bit-identical to one never
interrupted; a mirror never overwrites another folder; a mirror that cannot be written does not stop training."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fewshot.cli import main
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.mirror import MARKER, Mirror

TINY = ["model.hidden=16", "train.meta_batch=2", "method.inner_steps=2", "method.inner_batch=5",
        "method.test_inner_steps=2", "train.shot=1", "train.val_every=10", "train.val_episodes=4",
        "train.checkpoint_every=2", "train.log_every=1", "eval.episodes=10", "train.threads=1", "train.iterations=40"]


def _train(data_root: Path, *args: str) -> int:
    return main(["train", "omniglot_5w1s_reptile", *TINY, "--data-root", str(data_root), "--no-progress", *args])


def _resume(data_root: Path, run: Path, *args: str) -> int:
    return main(["train", str(run), "--resume", "--data-root", str(data_root), "--no-progress", *args])


def test_a_run_continues_from_its_mirror_bit_identical(tmp_path, data_root, capsys):
    """Killed (SIGKILL) mid-run and its run folder deleted (the machine is gone): `fewshot train MIRROR --resume`
    ends with the weights and training log of the uninterrupted run."""
    assert _train(data_root, "--out", str(tmp_path / "ref"), "--no-test") == 0
    run, mirror = tmp_path / "run", tmp_path / "keep"
    cmd = [sys.executable, "-m", "fewshot", "train", "omniglot_5w1s_reptile", *TINY, "--out", str(run), "--mirror",
           str(mirror), "--data-root", str(data_root), "--no-progress", "--no-test"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copied = mirror / "checkpoints" / "last.safetensors"
    deadline, killed = time.time() + 240, False
    while time.time() < deadline and proc.poll() is None:
        if copied.exists() and load_checkpoint(copied).iteration >= 12:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
            break
        time.sleep(0.02)
    assert killed, proc.stderr.read().decode()[-2000:]
    assert load_checkpoint(copied).iteration < 40
    assert (mirror / MARKER).read_text().strip() == str(run.resolve())
    shutil.rmtree(run)
    assert _resume(data_root, mirror, "--no-test") == 0 and "run folder" in capsys.readouterr().out
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.safetensors").weights
    b = load_checkpoint(copied).weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [line for line in (mirror / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(rows) == 40  # continues where the mirrored checkpoint was, without duplicates


def test_the_mirror_holds_the_whole_run_at_the_end(tmp_path, data_root):
    run, mirror = tmp_path / "run", tmp_path / "keep"
    assert _train(data_root, "--out", str(run), "--mirror", str(mirror), "train.iterations=6") == 0
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != ".fewshot-lock"}
    assert {"test.json", "report.html", "curves.png", "checkpoints/best.safetensors"} <= files
    for name in files:
        assert (mirror / name).read_bytes() == (run / name).read_bytes(), name
    # the same run resumed with the same mirror (finished: nothing to train) is accepted, also from a copy elsewhere
    assert _resume(data_root, run, "--mirror", str(mirror), "--no-test") == 0
    shutil.copytree(run, tmp_path / "moved", ignore=shutil.ignore_patterns(".fewshot-lock"))
    assert _resume(data_root, tmp_path / "moved", "--mirror", str(mirror), "--no-test") == 0
    assert (mirror / MARKER).read_text().strip() == str((tmp_path / "moved").resolve())


def test_a_run_stopped_by_a_signal_mirrors_its_reports_too(tmp_path, data_root):
    """SIGTERM mid-run: the run ends with exit 143 and the mirror holds every file the run folder holds, curves and
    report included (the state a machine about to be replaced leaves)."""
    run, mirror = tmp_path / "run", tmp_path / "keep"
    cmd = [sys.executable, "-m", "fewshot", "train", "omniglot_5w1s_reptile", *TINY, "--out", str(run), "--mirror",
           str(mirror), "--data-root", str(data_root), "--no-progress", "--no-test"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copied, deadline = mirror / "checkpoints" / "last.safetensors", time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            copied.exists() and load_checkpoint(copied).iteration >= 6):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read().decode()[-2000:]
    files = {str(p.relative_to(run)) for p in run.rglob("*")
             if p.is_file() and p.name != ".fewshot-lock" and "tensorboard" not in p.parts}
    assert {"report.md", "curves.png", "metrics.jsonl", "checkpoints/last.safetensors"} <= files
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").iteration < 40
    for name in files:
        assert (mirror / name).read_bytes() == (run / name).read_bytes(), name
    assert "**status**: interrupted; the checkpoint of iteration" in (mirror / "report.md").read_text()


def test_a_mirror_never_overwrites_another_folder(tmp_path, data_root, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    other_run = tmp_path / "other"
    (other_run).mkdir()
    (other_run / MARKER).write_text("/somewhere/else\n")
    (tmp_path / "a_file").write_text("x")
    run = tmp_path / "run"
    for target, message in ((mine, "is not empty and is not a fewshot mirror"),
                            (other_run, "is the mirror of /somewhere/else"),
                            (tmp_path / "a_file", "is a file"),
                            (run / "copy", "must be outside the run folder")):
        assert _train(data_root, "--out", str(run), "--mirror", str(target)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (mine / "notes.txt").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (tmp_path / "a_file").read_text() == "x"
    assert not (run / "checkpoints").exists()  # refused before anything was trained


def test_a_mirror_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    (run / "checkpoints" / "last.safetensors").write_bytes(b"weights")
    target = tmp_path / "share"
    copy = Mirror(run, target)
    copy.sync_checkpoint()
    assert (target / "checkpoints" / "last.safetensors").read_bytes() == b"weights"
    shutil.rmtree(target)
    target.write_text("the share is gone")  # a file where the folder was: every write fails
    copy.sync_checkpoint()
    copy.sync_checkpoint()
    err = capsys.readouterr().err
    assert err.count("could not update the mirror") == 1 and "training goes on" in err
    target.unlink()
    copy.sync_checkpoint()
    assert "is current again" in capsys.readouterr().err
    assert (target / "checkpoints" / "last.safetensors").read_bytes() == b"weights"
