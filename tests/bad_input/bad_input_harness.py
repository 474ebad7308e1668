"""The harness of the bad-input catalogue: each case prepares files in a fresh folder, runs ``fewshot`` as a user would
(a real process), and is judged on what the user sees.

A case passes when it ends in its expected outcome and no file that existed before the command changed:

* ``error`` — exit code 2 and one line on stderr, ``fewshot: error: ...``, matching the case's pattern; no traceback;
* ``ok`` — exit code 0 and the case's check of the result holds (the correct answer, not just any answer).

:func:`outcome` names what happened in the catalogue's terms (``clean error``, ``correct``, ``traceback``,
``silent wrong``, ``lost file``, ``hang``), which ``bench/reliability.py`` counts for any checkout.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Setup = Callable[[Path, Path], list[str]]
"""``setup(folder, data_root)`` prepares the case's files under ``folder`` and returns the ``fewshot`` arguments to run
there (the data root is also in ``$FEWSHOT_DATA``)."""
Check = Callable[[Path, str], None]
"""Asserts the correct result from the case folder and the command's standard output."""


@dataclass
class Case:
    id: str
    surface: str
    setup: Setup
    expect: str = "error"
    """``error`` (a clean one-line error, exit 2, and ``check`` holds if given) or ``ok`` (exit 0 and ``check``
    holds)."""
    match: str = ""
    """Regular expression the error line (``error``) or standard output (``ok``) must contain."""
    check: Check | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables (``{case}`` in a value is replaced by the case folder)."""
    timeout: float = 120.0
    may_change: tuple[str, ...] = ()
    """Glob patterns (relative to the case folder) of existing files the command is expected to rewrite."""


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    changed: list[str]


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_case(case: Case, folder: Path, data_root: Path, python: str = sys.executable,
             pythonpath: str | None = None) -> Result:
    """Prepare ``case`` in ``folder`` and run it; which pre-existing files changed is part of the result."""
    folder.mkdir(parents=True, exist_ok=True)
    args = case.setup(folder, data_root)
    before = snapshot(folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "FEWSHOT_DATA": str(data_root)}
    env.update({k: v.replace("{case}", str(folder)) for k, v in case.env.items()})
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    try:
        done = subprocess.run([python, "-m", "fewshot", *args], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=case.timeout, errors="replace")
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
    after = snapshot(folder)
    allowed = [p for pattern in case.may_change for p in (str(q.relative_to(folder)) for q in folder.glob(pattern))]
    changed = [p for p, digest in before.items() if after.get(p) != digest and p not in allowed]
    return Result(code, out, err, changed)


TINY = {
    "protonet": ("omniglot_5w1s_protonet", ["model.hidden=16", "train.way=5", "train.iterations=4", "train.val_every=2",
                                            "train.val_episodes=4", "train.checkpoint_every=2", "eval.episodes=4",
                                            "train.threads=1"]),
    "protonet_top": ("omniglot_5w1s_protonet", ["model.hidden=16", "train.way=5", "train.iterations=4",
                                                "train.val_every=2", "train.val_episodes=4", "train.checkpoint_every=2",
                                                "eval.episodes=4", "train.threads=1", "train.keep_best=2"]),
    "maml": ("omniglot_5w1s_maml", ["model.hidden=16", "train.meta_batch=2", "train.iterations=4", "train.val_every=2",
                                    "train.val_episodes=4", "train.checkpoint_every=2", "eval.episodes=4",
                                    "train.threads=1"]),
}
"""Tiny real training runs the cases start from (a few iterations on Omniglot)."""
_TRAINED: dict[str, Path] = {}


def trained_run(method: str, data_root: Path) -> Path:
    """A finished tiny run of ``method`` (trained once per test session, in-process); copy it before changing it."""
    if method not in _TRAINED:
        import tempfile

        from fewshot.cli import main

        recipe, overrides = TINY[method]
        out = Path(tempfile.mkdtemp(prefix=f"fewshot_{method}_")) / "run"
        code = main(["train", recipe, *overrides, "--out", str(out), "--data-root", str(data_root), "--no-progress"])
        assert code == 0, f"could not train the tiny {method} run"
        _TRAINED[method] = out
    return _TRAINED[method]


def copy_run(method: str, data_root: Path, dest: Path) -> Path:
    """A fresh copy of the tiny trained run of ``method`` at ``dest``."""
    import shutil

    shutil.copytree(trained_run(method, data_root), dest)
    return dest


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("fewshot: error:")]


def outcome(case: Case, result: Result, folder: Path) -> str:
    """What the user met: ``clean error``, ``correct``, ``traceback``, ``silent wrong``, ``lost file``, ``left
    files`` (an error that left what its ``check`` forbids) or ``hang``."""
    if result.changed:
        return "lost file"
    if result.returncode is None:
        return "hang"
    if "Traceback (most recent call last)" in result.stderr:
        return "traceback"
    if case.expect == "error":
        lines = error_lines(result.stderr)
        if result.returncode == 2 and len(lines) == 1 and re.search(case.match, lines[0]):
            try:
                if case.check is not None:  # e.g. that nothing was left behind
                    case.check(folder, result.stdout)
            except AssertionError:
                return "left files"
            return "clean error"
        return "silent wrong" if result.returncode == 0 else "traceback"
    if result.returncode != 0:
        return "traceback" if not error_lines(result.stderr) else "unexpected error"
    try:
        if case.match:
            assert re.search(case.match, result.stdout), f"output lacks {case.match!r}"
        if case.check is not None:
            case.check(folder, result.stdout)
    except AssertionError:
        return "silent wrong"
    return "correct"


def judge(case: Case, result: Result, folder: Path) -> None:
    """Assert the case ended as expected (the test's verdict), with what happened in the message."""
    got = outcome(case, result, folder)
    wanted = "clean error" if case.expect == "error" else "correct"
    assert got == wanted, (f"{case.id}: {got} (exit {result.returncode}; changed {result.changed})\n"
                           f"stdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}")
