"""Fetch a file once and check it: the only place the library touches the network."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import BinaryIO

from fewshot.errors import FewShotError
from fewshot.io import atomic_write


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically: ``dest`` appears only once complete and checked) and check its md5."""

    def fetch(out: BinaryIO) -> None:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if md5 is not None and digest.hexdigest() != md5:
            raise FewShotError(f"{url} downloaded with md5 {digest.hexdigest()}, expected {md5}")

    try:
        return atomic_write(dest, fetch)
    except OSError as exc:
        raise FewShotError(f"could not download {url} to {dest}: {exc}. Put the file there by hand, "
                           "or point --data-root / FEWSHOT_DATA at a folder that has it") from exc


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEWSHOT_DATA``, else ``./data``."""
    return Path(root or os.environ.get("FEWSHOT_DATA") or "data").expanduser()
