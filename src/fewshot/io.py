"""Files the library writes: atomically (a crash leaves the old file or the new one, never half of one), and the
user cache folder they go to."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """Where preprocessed data, converted weights and embeddings go: ``$FEWSHOT_CACHE`` or ``~/.cache/fewshot``."""
    path = Path(os.environ.get("FEWSHOT_CACHE") or Path.home() / ".cache" / "fewshot")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, content: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``content`` (bytes, text, or a function that writes to a binary file) to ``path`` atomically.

    The data go to a temporary file of this process beside ``path``, are flushed to disk, then renamed over it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
