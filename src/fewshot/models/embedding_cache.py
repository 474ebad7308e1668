"""A backbone's embeddings kept by input content, so each distinct image or sentence is embedded once however many
episodes, ways and shots use it; optionally persisted (``$FEWSHOT_CACHE/embeddings/<weights fingerprint>.pt``).

A persisted cache that cannot be read (truncated, garbage, another layout) is reported on stderr and ignored: it is
only a cache, and the file is replaced (atomically) by the embeddings computed now when they are saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshot.data.inputs import take
from fewshot.errors import FewShotError
from fewshot.hashing import item_keys
from fewshot.io import atomic_write, cache_dir
from fewshot.models.base import embed


def embedding_cache_dir() -> Path:
    return cache_dir() / "embeddings"


class EmbeddingCache:
    """Embeddings by input content, for one backbone fingerprint; optionally persisted to ``path``.

    ``read=False``: start empty even if ``path`` holds embeddings (they are replaced on the next save).
    """

    def __init__(self, key: str, path: Path | None = None, read: bool = True) -> None:
        self.key, self.path = key, path
        self.index: dict[bytes, int] = {}
        self.rows: list[torch.Tensor] = []
        self._stored: torch.Tensor | None = None
        self._dirty = False
        if read and path is not None and path.exists():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            embeddings, keys = data["embeddings"], data["keys"]
            if not (isinstance(embeddings, torch.Tensor) and isinstance(keys, torch.Tensor)
                    and embeddings.dim() == 2 and embeddings.is_floating_point() and keys.dtype == torch.uint8
                    and keys.shape == (embeddings.shape[0], 16)):
                raise ValueError("not a [N, D] float matrix with [N, 16] byte keys")
            index = {bytes(k): i for i, k in enumerate(keys.numpy())}
            if len(index) != len(keys):
                raise ValueError("repeated keys")
        except Exception as exc:  # noqa: BLE001 -- whatever is wrong with a cache file, the cure is to rebuild it
            reason = " ".join(str(exc).split()).split(". ")[0][:160]
            print(f"fewshot: the embedding cache {path} cannot be read ({type(exc).__name__}: {reason}); ignoring it "
                  f"(it is rewritten with the embeddings computed now)", file=sys.stderr)
            return
        self._stored, self.index = embeddings, index

    def __len__(self) -> int:
        return len(self.index)

    def _matrix(self) -> torch.Tensor:
        if self.rows:
            parts = ([self._stored] if self._stored is not None else []) + self.rows
            self._stored, self.rows = torch.cat(parts), []
        if self._stored is None:
            raise FewShotError("the embedding cache is empty")
        return self._stored

    def lookup(self, backbone: nn.Module, x: Any, batch_size: int) -> torch.Tensor:
        """Embeddings of ``x`` (``[B, D]``), computing only the inputs not seen before."""
        keys = item_keys(x)
        missing: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self.index and k not in missing:
                missing[k] = i
        if missing:
            new = embed(backbone, take(x, list(missing.values())), batch_size).cpu()  # the cache lives in RAM
            if self._stored is not None and self._stored.shape[1:] != new.shape[1:]:  # a file of other embeddings
                print(f"fewshot: the embedding cache {self.path} holds embeddings of width "
                      f"{tuple(self._stored.shape[1:])}, not {tuple(new.shape[1:])}; rebuilding it", file=sys.stderr)
                self.index, self._stored = {}, None
                return self.lookup(backbone, x, batch_size)
            base = len(self.index)
            for j, k in enumerate(missing):
                self.index[k] = base + j
            self.rows.append(new)
            self._dirty = True
        matrix = self._matrix()
        return matrix[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]

    def save(self) -> None:
        """Write the cache to ``path`` (atomically: a crash leaves the old file or the new one)."""
        if self.path is None or not self._dirty or not self.index:
            return
        matrix = self._matrix()
        keys = np.frombuffer(b"".join(sorted(self.index, key=self.index.get)), dtype=np.uint8).reshape(-1, 16)
        payload = {"embeddings": matrix, "keys": torch.from_numpy(keys.copy())}
        atomic_write(self.path, lambda f: torch.save(payload, f))
        self._dirty = False
