"""A backbone's embeddings kept by input content, so each distinct image or sentence is embedded once however many
episodes, ways and shots use it; optionally persisted (``$FEWSHOT_CACHE/embeddings/<weights fingerprint>.pt``)."""

from __future__ import annotations

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
    """Embeddings by input content, for one backbone fingerprint; optionally persisted to ``path``."""

    def __init__(self, key: str, path: Path | None = None) -> None:
        self.key, self.path = key, path
        self.index: dict[bytes, int] = {}
        self.rows: list[torch.Tensor] = []
        self._stored: torch.Tensor | None = None
        self._dirty = False
        if path is not None and path.exists():
            data = torch.load(path, map_location="cpu", weights_only=True)
            self._stored = data["embeddings"]
            self.index = {bytes(k): i for i, k in enumerate(data["keys"].numpy())}

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
            base = len(self.index)
            for j, k in enumerate(missing):
                self.index[k] = base + j
            self.rows.append(new)
            self._dirty = True
        matrix = self._matrix()
        return matrix[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        matrix = self._matrix()
        keys = np.frombuffer(b"".join(sorted(self.index, key=self.index.get)), dtype=np.uint8).reshape(-1, 16)
        payload = {"embeddings": matrix, "keys": torch.from_numpy(keys.copy())}
        atomic_write(self.path, lambda f: torch.save(payload, f))
        self._dirty = False
