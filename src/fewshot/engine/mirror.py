"""A copy of a run folder kept current somewhere else (``fewshot train ... --mirror DIR``), so that a run of many hours
survives the machine it runs on: a disk that outlives the machine, a mounted share, a folder that is committed or
synced at intervals.

After every ``last`` checkpoint the trainer copies, each file atomically and in this order, the kept best checkpoints
not yet copied (``checkpoints/top/``, :mod:`.ensemble`), ``config.yaml``, the metrics, ``best`` and then ``last``, and
then, if that copy succeeded, deletes the kept checkpoints the run no longer keeps: the mirror is a complete run folder
at every moment, whose metrics may run ahead of its ``last`` checkpoint (a resume drops those rows) but never behind it.
At the end of ``fewshot train`` the whole folder (curves, reports, ``test.json``) is copied. Continue on another machine
with ``fewshot train DIR --resume`` (the mirror is a run folder), or copy it back first.

A mirror goes only into a new or empty folder, or into the mirror of the same run: its marker ``.fewshot-mirror``
holds the run folder's path, or (a run copied to another place or machine and resumed there) its ``config.yaml`` is
the run's; any other folder is refused. A copy that fails (the share is gone, the disk is full)
is reported in one line and training goes on: the run folder itself is complete.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from fewshot.engine.ensemble import TOP, delete_kept_except
from fewshot.engine.run_folder import LOCK, RUN_FILES
from fewshot.errors import FewShotError
from fewshot.io import atomic_write

MARKER = ".fewshot-mirror"
"""The file that marks a folder as the mirror of a run (its content: the run folder's absolute path)."""
CHECKPOINT_ORDER = ("config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints/best.safetensors",
                    "checkpoints/last.safetensors")
"""What is copied after each ``last`` checkpoint, in this order."""


class Mirror:
    """Keeps ``target`` a copy of the run folder ``run_dir``."""

    def __init__(self, run_dir: Path, target: Path) -> None:
        self.run_dir, self.target = Path(run_dir), Path(target)
        self.failed = False
        check_mirror(self.run_dir, self.target)

    def sync_checkpoint(self) -> None:
        """Copy what a resume needs (after a ``last`` checkpoint)."""
        self._copy([*self._new_top(), *CHECKPOINT_ORDER])
        self._drop_top()

    def sync_all(self) -> None:
        """Copy every file of the run folder (at the end of a run)."""
        names = sorted(str(p.relative_to(self.run_dir)) for p in self.run_dir.rglob("*")
                       if p.is_file() and p.name != LOCK and ".tmp" not in p.name)
        rest = [n for n in names if n not in CHECKPOINT_ORDER]
        self._copy([*rest, *CHECKPOINT_ORDER])
        self._drop_top()

    def _new_top(self) -> list[str]:
        """The run's kept best checkpoints that the mirror lacks or holds an older copy of."""
        folder, there = self.run_dir / "checkpoints" / TOP, self.target / "checkpoints" / TOP
        return [f"checkpoints/{TOP}/{p.name}" for p in sorted(folder.glob("*.safetensors"))
                if not (there / p.name).is_file() or (there / p.name).stat().st_mtime < p.stat().st_mtime]

    def _drop_top(self) -> None:
        """Delete the mirror's kept checkpoints that the run no longer keeps, once the copy has succeeded: the
        mirror's ``last`` is then the run's, which lists only files the run still has."""
        if self.failed:
            return  # the mirror's last may still list them
        kept = {p.name for p in (self.run_dir / "checkpoints" / TOP).glob("*.safetensors")}
        try:
            delete_kept_except(self.target / "checkpoints", kept)
        except OSError:
            pass  # an extra copy is listed by no last checkpoint: harmless, and deleted next time

    def _copy(self, names: Iterable[str]) -> None:
        try:
            atomic_write(self.target / MARKER, str(self.run_dir.resolve()) + "\n")
            for name in names:
                source = self.run_dir / name
                if source.is_file():
                    atomic_write(self.target / name, lambda f, source=source: _copy_into(source, f))
            if self.failed:
                print(f"fewshot: note: the mirror {self.target} is current again", file=sys.stderr)
            self.failed = False
        except OSError as exc:
            if not self.failed:  # once per failure, not once per checkpoint
                print(f"fewshot: warning: could not update the mirror {self.target} ({exc.strerror or exc}); "
                      "training goes on, the run folder is complete", file=sys.stderr)
            self.failed = True


def _copy_into(source: Path, f) -> None:  # noqa: ANN001 - a binary file
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


def check_mirror(run_dir: Path, target: Path) -> None:
    """Refuse a mirror that would overwrite something else: the run folder itself or a folder inside it, a file, a
    non-empty folder that is not this run's mirror."""
    run, there = run_dir.resolve(), target.resolve()
    if there == run or run in there.parents or there in run.parents:
        raise FewShotError(f"the mirror {target} must be outside the run folder {run_dir} (and not hold it)")
    if target.exists() and not target.is_dir():
        raise FewShotError(f"the mirror {target} is a file; choose a folder")
    if not target.is_dir() or not any(target.iterdir()):
        return
    marker = target / MARKER
    owner = marker.read_text().strip() if marker.is_file() else ""
    if owner and owner != str(run) and _same_config(run_dir, target):
        owner = str(run)  # the same run, copied elsewhere (a new machine) and resumed there: its mirror follows it
    if owner != str(run):
        held = f"the mirror of {owner}" if owner else "not a fewshot mirror"
        raise FewShotError(f"the mirror {target} is not empty and is {held}; choose a new or empty folder")
    strays = sorted(p.name for p in target.iterdir() if p.name not in RUN_FILES | {MARKER} and ".tmp" not in p.name)
    if strays:
        raise FewShotError(f"the mirror {target} holds files a run does not write ({', '.join(strays[:3])}); "
                           "choose a new or empty folder")


def _same_config(run_dir: Path, target: Path) -> bool:
    try:
        return (run_dir / "config.yaml").read_bytes() == (target / "config.yaml").read_bytes()
    except OSError:
        return False
