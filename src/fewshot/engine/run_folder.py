"""Run folders: where a run may go, what counts as one, the lock that keeps one writer per folder, and files that
cannot be written turned into one clear error.

* A run folder is one fewshot wrote: it holds ``checkpoints/last.safetensors`` (a run to ``--resume``), or it is what
  a run killed before its first checkpoint left (only fewshot's own files, and a valid ``config.yaml``). A new run
  starts only in a new or empty folder, or in such a checkpoint-less run folder; it never overwrites other files.
* While a process writes a run folder it holds an exclusive ``flock`` on ``<run>/.fewshot-lock`` (holding its pid);
  a second writer is refused at once. The lock dies with its process, so a killed run can be resumed.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fewshot.errors import FewShotError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

LOCK = ".fewshot-lock"
RUN_FILES = {"config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "report.md", "report.html", "test.json",
             "checkpoints", "tensorboard", LOCK}
"""What fewshot writes at the top of a run folder."""
_TEMPORARY = re.compile(r".+\.tmp\d+$")
"""A temporary file of :func:`fewshot.io.atomic_write` that a killed process left."""
_HELD: dict[Path, list] = {}
"""The run folders this process holds locked: resolved path -> [file descriptor, depth]."""


class WriteError(FewShotError):
    """A file of a run could not be written (no space, file too large, read-only folder, ...)."""


def write_error(path: Path | str, exc: OSError) -> WriteError:
    """One line for a failed write: the path and the cause, and what to do."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        todo = "free disk space (or lift the file size limit)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make the folder writable, or choose another --out"
    else:
        todo = "check the folder and the disk"
    return WriteError(f"cannot write {path}: {cause}; {todo}")


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into a :class:`WriteError` naming it."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from exc


def check_run_name(name: str) -> str:
    """``name`` if it can be a folder under ``runs/`` (a plain file name), else a clear error."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or os.sep in name:
        raise FewShotError(f"the recipe name {name!r} cannot be a run folder name (runs/<name>): use a plain file "
                           f"name, without path separators or '..', or choose the folder with --out")
    return name


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run to resume (its ``last`` checkpoint)."""
    return (run_dir / "checkpoints" / "last.safetensors").is_file()


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse early what cannot work: resuming a folder without a run, starting a run where one cannot go."""
    if not resume:
        check_new_run_folder(run_dir)
    elif not holds_run(run_dir):
        if run_dir.exists() and not run_dir.is_dir():
            raise FewShotError(f"cannot resume: {run_dir} is a file, not a run folder")
        started = (run_dir / "config.yaml").is_file()
        raise FewShotError(f"cannot resume: {run_dir} holds no checkpoint "
                           + ("yet (the run stopped before its first one); start it again without --resume" if started
                              else "(no fewshot run there); start a run without --resume, or name the run folder"))


def read_run_config(run_dir: Path) -> dict:
    """The raw config of a run folder's ``config.yaml``, checked: a clear error naming the file if it is missing or
    no longer a valid config (hand-edited)."""
    from fewshot.config import RunConfig, load_raw

    path = run_dir / "config.yaml"
    if not path.is_file():
        if holds_run(run_dir):
            raise FewShotError(f"{path} is missing; restore it, or resume with the recipe: "
                               f"fewshot train RECIPE --out {run_dir} --resume")
        raise FewShotError(f"{run_dir} is a folder but not a run folder (no config.yaml); give a recipe name or a "
                           f"YAML file, or the folder of a run to --resume")
    try:
        raw = load_raw(path)
        RunConfig.from_dict(raw)
    except (FewShotError, UnicodeDecodeError, OSError) as exc:
        cause = " ".join(str(exc).split())
        raise FewShotError(f"{path} is not a valid run config ({cause}); fix it, or resume with the recipe: "
                           f"fewshot train RECIPE --out {run_dir} --resume") from exc
    return raw


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse to start a new run in ``run_dir`` unless it is new, empty, or a run folder without a checkpoint."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FewShotError(f"{run_dir} is a file, not a run folder; choose another --out")
    if holds_run(run_dir):
        raise FewShotError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if not run_dir.is_dir():
        return
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES and not _TEMPORARY.match(p.name))
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise FewShotError(f"{run_dir} is not empty and is not a fewshot run folder (it holds {listed}); "
                           f"choose another --out (a new or empty folder)")
    if any(p.name != LOCK for p in run_dir.iterdir()) and not _valid_config(run_dir / "config.yaml"):
        raise FewShotError(f"{run_dir} is not empty and is not a fewshot run folder (its config.yaml is missing or "
                           f"not a fewshot config); choose another --out (a new or empty folder)")


def _valid_config(path: Path) -> bool:
    import yaml

    from fewshot.config import RunConfig

    try:
        RunConfig.from_dict(yaml.safe_load(path.read_text()))
    except (OSError, ValueError, yaml.YAMLError):  # FewShotError is a ValueError
        return False
    return True


@contextmanager
def lock_run_folder(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir`` (created if missing) for this process while the block writes it.

    Another process holding it makes this a clear error at once (no waiting). Nested use in one process is fine. A
    folder this call created is removed again if the block leaves it empty (a refused or failed start).
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield run_dir
        finally:
            _HELD[key][1] -= 1
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise FewShotError(f"{run_dir} is a file, not a run folder; choose another --out")
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    fd = _acquire(run_dir / LOCK)
    _HELD[key] = [fd, 1]
    try:
        yield run_dir
    finally:
        del _HELD[key]
        _release(run_dir / LOCK, fd)
        for folder in created:  # deepest first
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


def _acquire(path: Path) -> int | None:
    if fcntl is None:
        return None
    while True:
        with writing(path.parent):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise FewShotError(f"{path.parent} is being written by another fewshot process{pid}; wait for it to end "
                               f"or choose another --out") from None
        try:  # a holder that just finished removed the file: lock the one now at the path
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with writing(path):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    try:
        path.unlink(missing_ok=True)  # while still locked, so no one locks a file about to vanish
    except OSError:
        pass
    os.close(fd)  # releases the lock
