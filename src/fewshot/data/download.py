"""Fetch a file once and check it: the only place the library touches the network."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from fewshot.errors import FewShotError


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically) and check its md5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FewShotError(f"could not download {url} to {dest}: {exc}. Put the file there by hand, "
                           "or point --data-root / FEWSHOT_DATA at a folder that has it") from exc
    if md5 is not None and (got := file_digest(tmp)) != md5:
        tmp.unlink()
        raise FewShotError(f"{url} downloaded with md5 {got}, expected {md5}")
    os.replace(tmp, dest)
    return dest



def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEWSHOT_DATA``, else ``./data``."""
    return Path(root or os.environ.get("FEWSHOT_DATA") or "data").expanduser()
