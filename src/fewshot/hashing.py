"""Content hashes: of tensors (a model's weights), of inputs (an embedding cache's keys), of a module."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fewshot.errors import FewShotError


def hash_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed each tensor's name and raw bytes, in the mapping's order, to a ``hashlib`` object (any dtype)."""
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_sha256(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors in name order (the weights, not the file that holds them)."""
    digest = hashlib.sha256()
    hash_tensors(digest, {name: weights[name] for name in sorted(weights)})
    return digest.hexdigest()


def item_keys(x: Any) -> list[bytes]:
    """A content hash per input (tensor rows or strings)."""
    if isinstance(x, torch.Tensor):
        rows = x.detach().cpu().contiguous()
        shape = str(tuple(rows.shape[1:])).encode() + str(rows.dtype).encode()
        flat = rows.reshape(rows.shape[0], -1).numpy()
        return [hashlib.blake2b(shape + row.tobytes(), digest_size=16).digest() for row in flat]
    keys = []
    for item in x:
        if not isinstance(item, str):
            raise FewShotError(f"inputs must be tensors or strings to be hashed, got {type(item).__name__}")
        keys.append(hashlib.blake2b(b"str:" + item.encode("utf-8"), digest_size=16).digest())
    return keys


def fingerprint(module: nn.Module) -> str:
    """A hash of a module's class, weights and buffers (or its own ``fingerprint()`` if it has one)."""
    own = getattr(module, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.blake2b(digest_size=12)
    digest.update(type(module).__qualname__.encode())
    precision = getattr(module, "precision", "fp32")  # a bf16 model embeds differently from the same weights
    if precision != "fp32":
        digest.update(str(precision).encode())
    hash_tensors(digest, module.state_dict())
    return digest.hexdigest()
