"""Files the library writes: atomically (a crash leaves the old file or the new one, never half of one), and the
user cache folder they go to; and the JSON files it reads back, each failure one short reason."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class JSONReadError(ValueError):
    """A file or text that cannot be read as JSON; the message is the reason in a few words, for the caller to put
    after the name of what it was reading."""


def parse_json(text: str) -> Any:
    """``json.loads(text)``; every failure (malformed, nested too deeply, a number Python will not convert) a
    :class:`JSONReadError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONReadError(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError as exc:
        raise JSONReadError("JSON nested too deeply to read") from exc
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits()
        raise JSONReadError(f"JSON Python cannot read: {exc}") from exc


def read_json(path: Path) -> Any:
    """The JSON value in the UTF-8 file ``path``; a :class:`JSONReadError` if it cannot be read, decoded or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JSONReadError(f"cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise JSONReadError(f"not UTF-8 (byte {exc.start})") from exc
    return parse_json(text)


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
