"""Checkpoints: one safetensors file per checkpoint, written atomically, loaded without unpickling.

A training checkpoint holds the method's weights (``model.*``), the optimizer's tensors (``optim.*``), the torch RNG
state (``rng.torch``), and JSON metadata (iteration, config, optimizer hyper-parameters, best validation score).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fewshot.errors import FewShotError
from fewshot.io import atomic_write

FORMAT = "fewshot-checkpoint-v1"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    iteration: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (a temporary file, fsync, then rename)."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in ckpt.weights.items()}
    meta: dict[str, Any] = {"format": FORMAT, "iteration": ckpt.iteration, "config": ckpt.config, "extra": ckpt.extra}
    if ckpt.optimizer is not None:
        groups = ckpt.optimizer["param_groups"]
        meta["optimizer_groups"] = groups
        meta["optimizer_scalars"] = {}
        for index, state in ckpt.optimizer["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    meta["optimizer_scalars"][f"{index}.{key}"] = value
    if ckpt.rng is not None:
        tensors["rng.torch"] = ckpt.rng
    # written by us rather than safetensors' save_file, which creates owner-only (0600) files
    atomic_write(path, save(tensors, metadata={"fewshot": json.dumps(meta)}))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("fewshot", "{}"))
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise FewShotError(f"{path} is not a readable fewshot checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise FewShotError(f"{path} is not a fewshot checkpoint (format {meta.get('format')!r})")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer = None
    if "optimizer_groups" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for key, value in meta.get("optimizer_scalars", {}).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer = {"state": state, "param_groups": meta["optimizer_groups"]}
    return Checkpoint(weights, meta.get("iteration", 0), meta.get("config", {}), optimizer, tensors.get("rng.torch"),
                      meta.get("extra", {}))
